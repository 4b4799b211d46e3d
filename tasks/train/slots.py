"""One training at a time per device: a Prefect global concurrency limit around the fit.

On a GPU each TensorFlow process holds the memory it took until it exits, so a second training
started beside the first dies for want of it. The train stage therefore trains inside a slot of
the global concurrency limit ``cifar-train:<hostname>`` (``cifar-train:<hostname>:gpu<ids>``
when ``CUDA_VISIBLE_DEVICES`` pins this process to its own GPUs: one limit per GPU set). The
limit is created on first use with ``train_slots`` slots (pipelines.yaml; default one) and can be
changed afterwards in Prefect's UI or with ``prefect gcl update``; a second training waits for
the slot while downloads, validation, reports and scoring go on. A reused model takes no slot.

The slot is a lease that this process renews while it trains: a process killed with ``kill -9``
frees it when the lease runs out (``LEASE_SECONDS``). Outside a Prefect run (tests, scripts)
there is no API to ask, and nothing is limited.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator

from tasks.core.logs import get_logger
from tasks.train.config import TrainingError

PREFIX = "cifar-train"
LEASE_SECONDS = 120.0  # how long a slot outlives a killed holder


def limit_name(host: str | None = None, visible_devices: str | None = None) -> str:
    """The limit's name on this machine: one per host, or one per GPU set when the process is
    pinned (``CUDA_VISIBLE_DEVICES=1`` -> ``cifar-train:gpu-box:gpu1``). Prefect names may not
    contain ``/ % & < >``; anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``-``."""
    host = re.sub(r"[^\w.-]+", "-", host if host is not None else socket.gethostname()) or "localhost"
    name = f"{PREFIX}:{host}"
    devices = visible_devices if visible_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices and devices.strip() and devices.strip() != "-1":
        name += ":gpu" + re.sub(r"[^\w-]+", "-", devices.strip())
    return name


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def ensure_limit(name: str, size: int) -> int:
    """Create the global concurrency limit ``name`` with ``size`` slots unless it exists (an
    operator may have resized it since: that size stands). Returns its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            get_logger().info("created the global concurrency limit %s: %d training(s) at a time", name, size)
            return size
        except ObjectAlreadyExists:  # another process created it just now
            return client.read_global_concurrency_limit_by_name(name).limit


def check_fits(name: str, limit: int, workers_here: int) -> None:
    """Refuse a multi-worker cluster that has more processes on this machine than the limit has
    slots: each waits for a slot the others hold, and none of them would ever start."""
    if limit < 1:
        raise TrainingError(f"the global concurrency limit {name} has {limit} slots: no training can start "
                            f"on this machine. Resize it: prefect gcl update {name} --limit 1")
    if workers_here > limit:
        raise TrainingError(
            f"TF_CONFIG puts {workers_here} workers of this cluster on this machine, but the global "
            f"concurrency limit {name} allows {limit} training(s) at a time, so they would wait on each "
            f"other forever. Set train_slots: {workers_here} in pipelines.yaml (for a new limit) or "
            f"`prefect gcl update {name} --limit {workers_here}`, or pin each worker to its own GPU with "
            "CUDA_VISIBLE_DEVICES (one limit per GPU).")


@contextlib.contextmanager
def training_slot(slots: int | None, what: str, workers_here: int = 1) -> Iterator[None]:
    """Hold one slot of this machine's training limit for the block (inside a Prefect run)."""
    if not in_prefect_run():
        yield
        return
    from prefect.concurrency.sync import concurrency

    log = get_logger()
    name = limit_name()
    limit = ensure_limit(name, slots or 1)
    check_fits(name, limit, workers_here)
    log.info("%s: waiting for a slot of %s (%d at a time)", what, name, limit)
    t0 = time.perf_counter()
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS,
                     raise_on_lease_renewal_failure=False):
        log.info("%s: got a slot of %s after %.1f s", what, name, time.perf_counter() - t0)
        yield
