"""Content hashes (tasks/core/hashing.py): stable hashes of values, files and folder trees, and
the fingerprint of code's behaviour that the cache keys are made of."""

from __future__ import annotations

import hashlib
import os

import pytest

from tasks.core.hashing import stable_hash


def test_stable_hash_is_order_independent_for_mappings():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})


def test_stable_hash_is_sensitive_to_values():
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_stable_hash_is_16_characters_long():
    assert len(stable_hash("x")) == 16


def test_hash_file_gives_sha256_size_and_md5_on_request(tmp_path):
    from tasks.core.hashing import hash_file

    (tmp_path / "a.bin").write_bytes(b"abc")
    d = hash_file(tmp_path / "a.bin", md5=True)
    assert d == (hashlib.sha256(b"abc").hexdigest(), 3, hashlib.md5(b"abc").hexdigest())
    assert hash_file(tmp_path / "a.bin").md5 is None


def test_hash_tree_is_a_content_hash(tmp_path):
    from tasks.core.hashing import hash_tree

    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "a.bin").write_bytes(b"abc")
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"de")
    first = hash_tree(tmp_path / "t")
    assert first.size == 5
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"dE")  # same size, other bytes
    assert hash_tree(tmp_path / "t").sha256 != first.sha256
    (tmp_path / "t" / "sub" / "b.bin").write_bytes(b"de")
    assert hash_tree(tmp_path / "t") == first


@pytest.mark.timeout(20)
def test_hash_tree_skips_links_and_fifos_and_keeps_its_format(tmp_path):
    from tasks.core.hashing import hash_tree, tree_files

    root = tmp_path / "t"
    for i in range(300):
        (root / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 7}" / f"{i:04d}").write_bytes(os.urandom(i % 50))
    os.symlink(root / "d0" / "0000", root / "link")
    os.mkfifo(root / "d1" / "fifo")
    skipped: list[str] = []
    listed = tree_files(root, skipped)
    assert skipped == ["d1/fifo", "link"] and len(listed) == 300
    assert hash_tree(root) == hash_tree(root, files=listed)
    old = hashlib.sha256()  # the tree hash as it always was: relative path and sha256, in path order
    for rel, p in listed:
        old.update(f"{rel}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    assert hash_tree(root).sha256 == old.hexdigest()


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
