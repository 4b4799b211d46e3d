"""One logger for every stage: Prefect's run logger inside a run, the ``cifar`` logger outside."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow/task run, else the plain ``cifar`` logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("cifar")
