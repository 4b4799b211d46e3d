"""The machine's training slot (tasks/train/slots.py): real OS locks held by real processes.

A holder that dies, however it dies, frees its slot at once; a waiting training says who holds
the slot and what frees it, and a signal ends its wait at once. Also the limit's name and fit,
and the cluster's processes on this machine that count against it (tasks/train/devices.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from procs import interruptible
from tasks.train.config import TrainingError
from tasks.train.devices import local_workers
from tasks.train.slots import check_fits, holders, limit_name, training_slot

REPO = Path(__file__).resolve().parents[2]
NAME = limit_name()


def _holder(slot_dir: Path, seconds: float = 60, slots: int = 1) -> subprocess.Popen:
    """A process that takes a slot, prints 'held', and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from tasks.train.slots import training_slot
        with training_slot({slots}, "training of m (k1)"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    env = {**os.environ, "CIFAR_SLOT_DIR": str(slot_dir)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                            cwd=REPO, start_new_session=True,
                            preexec_fn=interruptible)
    assert proc.stdout.readline().strip() == b"held"
    return proc


@pytest.fixture
def slot_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_SLOT_DIR", str(tmp_path / "slots"))
    return tmp_path / "slots"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_holder_that_dies_frees_its_slot_at_once(slot_dir, sig):
    proc = _holder(slot_dir)
    try:
        (held,) = holders(NAME)
        assert held["pid"] == proc.pid and held["what"] == "training of m (k1)"
    finally:
        os.killpg(proc.pid, sig)
        proc.wait(10)
    t0 = time.monotonic()
    with training_slot(1, "next training"):
        waited = time.monotonic() - t0
    assert waited < 1.0, f"the slot of a killed holder took {waited:.1f} s to free"
    assert holders(NAME) == []


def test_a_waiting_training_names_the_holder_and_what_frees_it(slot_dir, caplog, monkeypatch):
    import tasks.train.slots as slots

    monkeypatch.setattr(slots, "REPEAT_SECONDS", 0.4)
    proc = _holder(slot_dir, seconds=1.5)
    try:
        with caplog.at_level(logging.INFO, logger="cifar"), training_slot(1, "second training"):
            pass
    finally:
        proc.kill()
        proc.wait(10)
    waits = [r.getMessage() for r in caplog.records if "waiting for a slot of" in r.getMessage()]
    assert len(waits) >= 2, "the wait was said once, not repeated"
    assert f"process {proc.pid} on " in waits[0] and "a process outside Prefect" in waits[0]
    assert f"`kill {proc.pid}`" in waits[0] and "training of m (k1)" in waits[0]
    assert any("got a slot of " + NAME in r.getMessage() for r in caplog.records)


def test_slots_admit_that_many_trainings_at_once(slot_dir):
    first = _holder(slot_dir, slots=2)
    try:
        t0 = time.monotonic()
        with training_slot(2, "second of two"):
            assert time.monotonic() - t0 < 1.0
            assert len(holders(NAME, 2)) == 2
    finally:
        first.kill()
        first.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_wait_for_a_slot_at_once(slot_dir, sig):
    holder = _holder(slot_dir)
    code = textwrap.dedent("""
        import signal, sys
        from tasks.train.slots import training_slot
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        print("waiting", flush=True)
        with training_slot(1, "waiter"):
            print("got it", flush=True)
    """)
    waiter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "CIFAR_SLOT_DIR": str(slot_dir)},
                              cwd=REPO, start_new_session=True,
                              preexec_fn=interruptible)
    try:
        assert waiter.stdout.readline().strip() == b"waiting"
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(waiter.pid, sig)
        rc = waiter.wait(10)
        assert time.monotonic() - t0 < 2.0
        assert rc in (130, 143, -sig, 1), rc  # KeyboardInterrupt exits 1 from `python -c`
        assert b"got it" not in waiter.stdout.read()
    finally:
        holder.kill()
        holder.wait(10)
        if waiter.poll() is None:
            waiter.kill()


# --------------------------------------------------------------------------- the limit's name and fit
def test_limit_is_per_machine_or_per_pinned_gpu_set():
    assert limit_name("gpu-box-1", "") == "cifar-train:gpu-box-1"
    assert limit_name("gpu-box-1", "-1") == "cifar-train:gpu-box-1"  # no GPU at all: the machine's
    assert limit_name("gpu-box-1", "1") == "cifar-train:gpu-box-1:gpu1"
    assert limit_name("gpu-box-1", "0,1") == "cifar-train:gpu-box-1:gpu0-1"
    assert limit_name("odd/host name", "") == "cifar-train:odd-host-name"  # "/" is banned in Prefect names


def test_cluster_processes_on_this_machine_are_counted():
    both_here = {"cluster": {"worker": ["127.0.0.1:2001", "localhost:2002"]}, "task": {"type": "worker", "index": 1}}
    one_here = {"cluster": {"chief": ["box-a:1"], "worker": ["box-b:1", "box-a:2"]}, "task": {"type": "chief"}}
    assert local_workers(both_here) == 2
    assert local_workers(one_here, ("box-a",)) == 2
    assert local_workers(one_here, ("box-c",)) == 1  # none listed here: this process still is
    assert local_workers(None) == 1


def test_a_cluster_larger_than_the_limit_is_refused_not_left_waiting():
    check_fits("cifar-train:h", 2, 2)
    with pytest.raises(TrainingError) as err:
        check_fits("cifar-train:h", 1, 2)
    text = str(err.value)
    assert "2 workers" in text and "slot cifar-train:h allows 1" in text and "train_slots: 2" in text
    with pytest.raises(TrainingError, match="has 0 slots"):
        check_fits("cifar-train:h", 0, 1)
