"""Files written whole or not at all, and the lock the kernel releases (tasks/core/files.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.core.files import atomic_write_bytes, atomic_write_json, file_lock, read_json

REPO = Path(__file__).resolve().parents[2]


def test_atomic_write_json_writes_paths_and_tuples_as_json(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"b": 1, "a": [Path("/x"), (1, 2)]})
    assert read_json(p) == {"a": ["/x", [1, 2]], "b": 1}


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"b": 1, "a": [Path("/x"), (1, 2)]})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(p, b"half a fi")
    assert read_json(p) == {"a": ["/x", [1, 2]], "b": 1}  # the old complete file survives
    assert sorted(os.listdir(p.parent)) == ["x.json"]


@pytest.mark.subprocess
def test_lock_is_released_by_the_kernel_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO)!r})
            from tasks.core.files import file_lock
            with file_lock({str(lock)!r}):
                print("held", flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "pid" in lock.read_text()
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait(10)
        t0 = time.monotonic()
        with file_lock(lock):
            pass
        assert time.monotonic() - t0 < 5
    finally:
        holder.kill()
