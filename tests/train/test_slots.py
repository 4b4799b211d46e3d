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
import threading
import time
from pathlib import Path

import pytest

from procs import interruptible
from tasks.train.config import TrainingError
from tasks.train.devices import local_workers, takes_local_slots
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


def test_two_clusters_starting_together_never_split_the_slots(slot_dir):
    # Two 2-worker clusters on this machine with train_slots: 2, and a worker trains only once
    # its partner is in (a collective). Their first workers start first: taken one per process,
    # each cluster would hold one slot and wait forever for the other.
    def conf(i):
        return {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": i}}

    partners = {c: threading.Barrier(2, timeout=20) for c in "AB"}
    ran, errors = [], []

    def worker(c, i):
        try:
            takes = local_workers(conf(i)) if takes_local_slots(conf(i)) else 0
            with training_slot(2, f"training of cluster {c}, worker {i}", local_workers(conf(i)), takes):
                partners[c].wait()  # BrokenBarrierError after 20 s: the deadlock
                ran.append(c)
                time.sleep(0.3)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    firsts = [threading.Thread(target=worker, args=(c, 0)) for c in "AB"]
    for t in firsts:
        t.start()
    time.sleep(0.5)
    seconds = [threading.Thread(target=worker, args=(c, 1)) for c in "AB"]
    for t in seconds:
        t.start()
    for t in firsts + seconds:
        t.join(60)
    assert not errors and sorted(ran) == ["A", "A", "B", "B"]


@pytest.mark.subprocess
def test_a_cluster_waiting_for_its_slots_holds_none_of_them(slot_dir):
    one = _holder(slot_dir, slots=2)  # one slot of two taken by another training
    got, release = threading.Event(), threading.Event()

    def cluster():
        with training_slot(2, "training of a 2-worker cluster", 2, 2):
            got.set()
            release.wait(20)

    waiting = threading.Thread(target=cluster)
    waiting.start()
    try:
        time.sleep(1.0)
        assert not got.is_set() and [h["pid"] for h in holders(NAME, 2)] == [one.pid]
        t0 = time.monotonic()
        with training_slot(2, "a single training"):  # the free slot is free: not held by the waiter
            assert time.monotonic() - t0 < 1.0
        one.kill()
        one.wait(10)
        assert got.wait(10)
        assert len(holders(NAME, 2)) == 2 and all("with 1 more worker" in h["what"] for h in holders(NAME, 2))
    finally:
        release.set()
        waiting.join(30)
        if one.poll() is None:
            one.kill()


@pytest.mark.subprocess
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


def test_the_first_process_of_a_cluster_here_takes_its_slots():
    def task(kind, i, cluster):
        return {"cluster": cluster, "task": {"type": kind, "index": i}}

    two_here = {"worker": ["127.0.0.1:2001", "localhost:2002"]}
    assert takes_local_slots(task("worker", 0, two_here)) and not takes_local_slots(task("worker", 1, two_here))
    with_chief = {"chief": ["box-a:1"], "worker": ["box-b:1", "box-a:2"]}
    assert takes_local_slots(task("chief", 0, with_chief), ("box-a",))
    assert not takes_local_slots(task("worker", 1, with_chief), ("box-a",))
    assert takes_local_slots(task("worker", 0, with_chief), ("box-b",))  # the first (only) one on box-b
    assert takes_local_slots(task("worker", 1, with_chief), ("box-c",))  # not listed here: takes its own
    assert takes_local_slots(None)


def test_a_cluster_larger_than_the_limit_is_refused_not_left_waiting():
    check_fits("cifar-train:h", 2, 2)
    with pytest.raises(TrainingError) as err:
        check_fits("cifar-train:h", 1, 2)
    text = str(err.value)
    assert "2 workers" in text and "slot cifar-train:h allows 1" in text and "train_slots: 2" in text
    with pytest.raises(TrainingError, match="has 0 slots"):
        check_fits("cifar-train:h", 0, 1)
