"""The checks Prefect's ``CronSchedule`` makes of a schedule, without importing Prefect.

Reading pipelines.yaml checks every ``schedule:`` as ``cifar serve`` will build it. Prefect's
validator is three rules: the cron string is valid to its vendored croniter, it has no random
(``R``) or hashed (``H``) field, and the timezone, when given, is an IANA name that ``zoneinfo``
knows. Importing Prefect for them cost ``cifar check`` about a second of its 1.7 s. This module
runs the same croniter file, loaded on its own (it needs only pytz and dateutil), with the same
two rules and Prefect's own words. Where a Prefect release no longer ships that file there, it
asks ``CronSchedule`` itself. tests/flows/test_cron.py checks both give the same answers.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

_VENDORED = ("_vendor", "croniter", "croniter.py")  # inside the prefect package


def schedule_problems(cron: str, timezone: str | None) -> list[tuple[str, str]]:
    """(field, message) for each rule the schedule breaks, in Prefect's words; [] when valid."""
    croniter = _vendored_croniter()
    if croniter is None:
        return _prefect_problems(cron, timezone)
    out: list[tuple[str, str]] = []
    if not croniter.croniter.is_valid(cron):
        out.append(("cron", f'Invalid cron string: "{cron}"'))
    elif any(c for c in cron.split() if c.casefold() in ("r", "h")):
        out.append(("cron", f'Random and Hashed expressions are unsupported, received: "{cron}"'))
    if timezone and timezone not in _timezones():
        out.append(("timezone", f'Invalid timezone: "{timezone}" (specify in IANA tzdata format, '
                                "for example, America/New_York)"))
    return out


@functools.cache
def _vendored_croniter() -> ModuleType | None:
    """Prefect's croniter, run from its file without running ``prefect/__init__`` (find_spec of a
    top-level package only locates it); None where this Prefect has no such file."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *_VENDORED)
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("cifar_prefect_croniter", path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError:  # a dependency it needs moved: Prefect's own validator decides
        return None
    return module if hasattr(module, "croniter") else None


@functools.cache
def _timezones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def _prefect_problems(cron: str, timezone: str | None) -> list[tuple[str, str]]:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        return [(str(e["loc"][0]) if e["loc"] else "cron", e["msg"].removeprefix("Value error, "))
                for e in exc.errors()]
    return []
