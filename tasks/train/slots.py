"""One training at a time per device: an OS lock around the fit that dies with its holder.

On a GPU each TensorFlow process holds the memory it took until it exits, so a second training
started beside the first dies for want of it. The train stage therefore trains inside one of
``train_slots`` slots (pipelines.yaml; default one) of this machine's training slot
``cifar-train:<hostname>`` (``cifar-train:<hostname>:gpu<ids>`` when ``CUDA_VISIBLE_DEVICES``
pins the process to its own GPUs: one slot set per GPU set). A second training waits for a slot
while downloads, validation, reports and scoring go on. A reused model takes no slot.

A slot is an exclusive ``flock`` on a file in ``slot_dir()`` (``$CIFAR_SLOT_DIR``, by default
``<tmp>/cifar-slots``: one folder per machine; containers on one host share it by mounting the
same folder). The kernel drops the lock the instant its process ends, however it ends (``kill
-9``, the OOM killer, a container stopped), so a dead training never holds a slot, on any Prefect
API or none. The holder writes who it is into its file (process, host, flow run, since when), so
a waiting run can say who it waits for and how to stop that holder. (Issue 26 measured the
alternative, a Prefect global concurrency limit: its lease lives in the API server's memory, so a
``kill -9`` under ``cifar run``'s temporary API left the slot taken for good.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.logs import get_logger
from tasks.train.config import TrainingError

PREFIX = "cifar-train"
POLL_SECONDS = 0.5  # how often a waiting training tries the slots again
REPEAT_SECONDS = 30.0  # how often it says again who it waits for


def limit_name(host: str | None = None, visible_devices: str | None = None) -> str:
    """The slot set's name on this machine: one per host, or one per GPU set when the process is
    pinned (``CUDA_VISIBLE_DEVICES=1`` -> ``cifar-train:gpu-box:gpu1``). Anything but letters,
    digits, ``.``, ``_`` and ``-`` in the host name becomes ``-``."""
    host = re.sub(r"[^\w.-]+", "-", host if host is not None else socket.gethostname()) or "localhost"
    name = f"{PREFIX}:{host}"
    devices = visible_devices if visible_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices and devices.strip() and devices.strip() != "-1":
        name += ":gpu" + re.sub(r"[^\w-]+", "-", devices.strip())
    return name


def slot_dir() -> Path:
    """The machine's folder of slot files: ``$CIFAR_SLOT_DIR`` or ``<tmp>/cifar-slots``."""
    return Path(os.environ.get("CIFAR_SLOT_DIR") or Path(tempfile.gettempdir()) / "cifar-slots")


def slot_paths(name: str, size: int, folder: Path | None = None) -> list[Path]:
    stem = name.replace(":", "_")
    return [(folder or slot_dir()) / f"{stem}.slot{i}" for i in range(size)]


def _open_slot(path: Path) -> int:
    """The slot file's descriptor. The folder is sticky and world-writable (like /tmp) and the file
    readable and writable by all, so the users of one machine share its slots."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(path.parent, 0o1777)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _flow_run() -> tuple[str | None, str | None]:
    """(id, name) of the Prefect flow run this process is in; (None, None) outside one (Prefect
    is not imported to find out)."""
    if "prefect.context" not in sys.modules:
        return None, None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = getattr(ctx, "flow_run", None)
    return (str(run.id), run.name) if run is not None else (None, None)


def holder_record(what: str) -> dict[str, Any]:
    run_id, run_name = _flow_run()
    return {"pid": os.getpid(), "host": socket.gethostname(), "flow_run_id": run_id,
            "flow_run_name": run_name, "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _write_holder(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def read_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the slot file ``path`` (what its holder wrote), None when it is free."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        if _try_lock_shared(fd):
            return None  # nobody holds it
        raw = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"what": "a training (it has not said who it is yet)"}


def _try_lock_shared(fd: int) -> bool:
    """True when nobody holds an exclusive lock on ``fd`` (the probe is released at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def holders(name: str | None = None, size: int = 64, folder: Path | None = None) -> list[dict[str, Any]]:
    """The holders of the slots of ``name`` (default: this process's slot set), slot by slot."""
    found = []
    for i, path in enumerate(slot_paths(name or limit_name(), size, folder)):
        if path.exists() and (record := read_holder(path)) is not None:
            found.append({"slot": i, "file": str(path), **record})
    return found


def describe(holder: dict[str, Any]) -> str:
    """One holder in words, with what frees its slot."""
    run = holder.get("flow_run_id")
    who = f"flow run {holder.get('flow_run_name')} ({run})" if run else "a process outside Prefect"
    pid, host = holder.get("pid"), holder.get("host")
    frees = [f"`prefect flow-run cancel {run}`"] if run else []
    if pid:
        frees.append(f"`kill {pid}` on {host}")
    return (f"{who}, process {pid} on {host}, training since {holder.get('since')} "
            f"({holder.get('what')}); to free it: {' or '.join(frees) or 'stop that training'}")


def check_fits(name: str, limit: int, workers_here: int) -> None:
    """Refuse a multi-worker cluster that has more processes on this machine than there are
    slots: each waits for a slot the others hold, and none of them would ever start."""
    if limit < 1:
        raise TrainingError(f"the training slot {name} has {limit} slots: no training can start "
                            "on this machine. Set train_slots: 1 (or more) in pipelines.yaml")
    if workers_here > limit:
        raise TrainingError(
            f"TF_CONFIG puts {workers_here} workers of this cluster on this machine, but the training "
            f"slot {name} allows {limit} training(s) at a time, so they would wait on each other "
            f"forever. Set train_slots: {workers_here} in pipelines.yaml, or pin each worker to its "
            "own GPU with CUDA_VISIBLE_DEVICES (one slot set per GPU).")


def _acquire(paths: list[Path], count: int) -> list[tuple[int, Path]] | None:
    """``count`` free slots of ``paths``, all or none. Takers go one at a time (a short ``flock``
    on the set's admission file), so two clusters never split the slots between them."""
    if count == 0:
        return []
    got: list[tuple[int, Path]] = []
    admission = _open_slot(paths[0].with_suffix(".admission"))
    try:
        fcntl.flock(admission, fcntl.LOCK_EX)  # held for microseconds; dies with its holder
        for path in paths:
            fd = _open_slot(path)
            if _try_lock(fd):
                got.append((fd, path))
                if len(got) == count:
                    return got
            else:
                os.close(fd)
        for fd, _ in got:  # fewer free than needed: hold none of them while waiting
            os.close(fd)
        return None
    finally:
        os.close(admission)


@contextlib.contextmanager
def training_slot(slots: int | None, what: str, workers_here: int = 1, takes: int = 1) -> Iterator[None]:
    """Hold ``takes`` of this machine's ``slots`` (default 1) training slots for the block: one
    for a training, ``workers_here`` for the first process of a multi-worker cluster on this
    machine (its other processes take none: ``devices.takes_local_slots``). While too few are
    free it waits, holding none, saying every ``REPEAT_SECONDS`` who holds them and how to free
    them; a signal (Ctrl-C, SIGTERM) ends the wait at once."""
    log = get_logger()
    name, size = limit_name(), slots or 1
    check_fits(name, size, workers_here)
    if takes == 0:
        log.info("%s: a worker of a cluster whose first process on this machine holds its %d slot(s) of %s",
                 what, workers_here, name)
        yield
        return
    paths = slot_paths(name, size)
    t0 = time.monotonic()
    said = None
    while (got := _acquire(paths, takes)) is None:
        if said is None or time.monotonic() - said >= REPEAT_SECONDS:
            held = "; ".join(describe(h) for h in holders(name, size)) or "(released just now)"
            log.info("%s: waiting for %s of %s (%d at a time; %.0f s so far), held by %s", what,
                     "a slot" if takes == 1 else f"{takes} slots at once", name, size,
                     time.monotonic() - t0, held)
            said = time.monotonic()
        time.sleep(POLL_SECONDS)
    try:
        record = holder_record(what if takes == 1 else f"{what}, with {takes - 1} more worker(s) of its cluster")
        for fd, _ in got:
            _write_holder(fd, record)
        log.info("%s: got %s of %s after %.1f s", what, "a slot" if takes == 1 else f"{takes} slots",
                 name, time.monotonic() - t0)
        yield
    finally:
        for fd, _ in got:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the only descriptor releases the lock
