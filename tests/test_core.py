"""Shared plumbing: atomic writes, the kernel-released lock, and VerifiedCache on real Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.core.files import atomic_write_bytes, atomic_write_json, file_lock, read_json
from tasks.core.hashing import stable_hash


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"b": 1, "a": [Path("/x"), (1, 2)]})
    assert read_json(p) == {"a": ["/x", [1, 2]], "b": 1}

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(p, b"half a fi")
    assert read_json(p) == {"a": ["/x", [1, 2]], "b": 1}  # the old complete file survives
    assert sorted(os.listdir(p.parent)) == ["x.json"]


def test_stable_hash_is_order_independent_for_mappings_and_sensitive_to_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x")) == 16


def test_lock_is_released_by_the_kernel_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
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


@pytest.mark.engine
def test_verified_cache_hits_until_the_files_behind_it_go(prefect_engine, tmp_path):
    from prefect import flow, task

    from flows.cifar import _Stages
    from tasks.core.caching import VerifiedCache

    out = tmp_path / "out.txt"
    calls = []

    @task(cache_policy=VerifiedCache(key_fn=lambda i: f"k-{i['x']}", valid_fn=lambda i, k: out.exists()),
          persist_result=True)
    def work(x):
        calls.append(x)
        out.write_text(str(x))
        return {"x": x}

    @flow
    def f():
        stages = _Stages(str(tmp_path / "data"))
        stages.run("s", work, 3)
        return stages.times["s"]["cache_hit"]

    assert f() is False and calls == [3]
    assert f() is True and calls == [3]            # Prefect's cache, stored under data/prefect/
    assert (tmp_path / "data/prefect/cache-keys/k-3").exists()
    out.unlink()                                    # the record says "ran", the file says otherwise
    assert f() is False and calls == [3, 3]
    assert f() is True and calls == [3, 3]


# --------------------------------------------------------------------------- hashing
def test_hash_file_and_hash_tree_are_content_hashes(tmp_path):
    import hashlib

    from tasks.core.hashing import hash_file, hash_tree

    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "a.bin").write_bytes(b"abc")
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"de")
    d = hash_file(tmp_path / "t" / "a.bin", md5=True)
    assert d == (hashlib.sha256(b"abc").hexdigest(), 3, hashlib.md5(b"abc").hexdigest())
    assert hash_file(tmp_path / "t" / "a.bin").md5 is None
    first = hash_tree(tmp_path / "t")
    assert first.size == 5
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"dE")  # same size, other bytes
    assert hash_tree(tmp_path / "t").sha256 != first.sha256
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"de")
    assert hash_tree(tmp_path / "t") == first


def test_code_fingerprint_ignores_comments_docstrings_and_message_wording():
    from tasks.core.hashing import behaviour_of_source

    base = '''
def f(x, log):
    """Doubles x."""
    log.info("doubling %s", x)
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    return 2 * x
'''
    reworded = '''
def f(x, log):  # a new comment
    """Doubles x, carefully."""
    # and another
    log.warning("now doubling %s", x)
    print("hello")
    if x < 0:
        raise ValueError("negative x: give x >= 0")
    return 2 * x
'''
    changed = base.replace("2 * x", "3 * x")
    other_error = base.replace("raise ValueError", "raise TypeError")
    assert behaviour_of_source(base) == behaviour_of_source(reworded)
    assert behaviour_of_source(base) != behaviour_of_source(changed)
    assert behaviour_of_source(base) != behaviour_of_source(other_error)
    # a function left with only a docstring and a log line is still valid, and still differs
    assert behaviour_of_source('def g():\n    """doc"""\n    log.info("x")\n') == \
        behaviour_of_source("def g():\n    pass\n")
