"""Where a dataset comes from, re-checked at every run (issue 16; tasks/download/fetching.py,
tasks/download/published.py): local data hashed by content, not by size and mtime; a folder's
FIFOs skipped and its size bounded before reading; a published checksum followed.
The rest of scheduled retraining, unit by unit: tests/flows/test_outcomes.py (seeds, schedules,
the outcome's words), tests/store/test_store.py (a re-scored champion), tests/report/test_changes.py
("what changed"); the real-server slice is tests/e2e/test_retraining_e2e.py."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from archives import FileServer, build_binary_archive, build_image_folder

# Imported here, not in a test: Prefect configures logging on its first import, which would drop
# the handler caplog installed for a test that happens to run first.
from tasks.download.fetching import hash_local  # noqa: E402


def _cfg(**kw):
    from tasks.download.config import DatasetConfig

    return DatasetConfig(**kw)


def _rewrite_keeping_stat(path, data: bytes) -> None:
    """New bytes of the same length, the old mtime put back: what fooled the stat shortcut."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


# --------------------------------------------------------------------------- local data, by content
def test_a_folder_rewritten_with_the_same_size_and_mtime_is_a_new_dataset(tmp_path):
    from tasks.download.fetching import fetch

    built = build_image_folder(tmp_path, per_class_train=2, per_class_test=1)
    cfg = _cfg(format="image-folder", source=str(built.path))
    first = fetch(cfg, tmp_path / "data")
    assert fetch(cfg, tmp_path / "data").sha256 == first.sha256  # unchanged: the same record

    img = built.path / "train" / "cat" / "0000.png"
    raw = bytearray(img.read_bytes())
    raw[-20] ^= 0xFF  # one byte of the last chunk's payload
    _rewrite_keeping_stat(img, bytes(raw))
    assert fetch(cfg, tmp_path / "data").sha256 != first.sha256


def test_an_archive_rewritten_with_the_same_size_and_mtime_is_a_new_dataset(tmp_path):
    from tasks.download.fetching import fetch

    archive = build_binary_archive(tmp_path / "bin", n_train=20, n_test=10)
    acfg = _cfg(format="cifar10-binary", source=str(archive.path))
    before = fetch(acfg, tmp_path / "data")
    assert before.sha256 == archive.sha256
    blob = bytearray(archive.path.read_bytes())
    blob[100] ^= 0x01
    _rewrite_keeping_stat(archive.path, bytes(blob))
    assert fetch(acfg, tmp_path / "data").sha256 == hashlib.sha256(blob).hexdigest() != before.sha256


@pytest.mark.timeout(20)
def test_a_fifo_in_a_folder_is_skipped_and_named_not_opened(tmp_path, caplog):
    from tasks.core.hashing import hash_tree, tree_files

    built = build_image_folder(tmp_path, per_class_train=2, per_class_test=1)
    os.mkfifo(built.path / "train" / "cat" / "pipe")
    skipped: list[str] = []
    names = [rel for rel, _ in tree_files(built.path, skipped)]
    assert skipped == ["train/cat/pipe"] and "train/cat/pipe" not in names
    with caplog.at_level(logging.WARNING):
        digest = hash_local(built.path, _cfg(format="image-folder", source=str(built.path)))
    assert digest == hash_tree(built.path)  # the FIFO never joined the hash, nor blocked it
    assert "train/cat/pipe" in caplog.text and "not regular files" in caplog.text


def test_the_folder_check_is_bounded_by_max_extract_mb_before_reading(tmp_path):
    from tasks.download.errors import UnsafeArchiveError

    built = build_image_folder(tmp_path, per_class_train=1, per_class_test=1)
    with open(built.path / "train" / "cat" / "big.bin", "wb") as f:
        f.truncate(2 * 2**20)  # sparse: 2 MiB by size, nothing to read
    with pytest.raises(UnsafeArchiveError) as info:
        hash_local(built.path, _cfg(format="image-folder", source=str(built.path), max_extract_mb=1))
    msg = str(info.value)
    assert str(built.path) in msg and "dataset.max_extract_mb (1 MiB)" in msg and "nothing was read" in msg


# --------------------------------------------------------------------------- a published checksum
def test_parse_checksums_picks_the_archives_line():
    from tasks.download.published import parse_checksums

    a, b = "a" * 64, "B" * 64
    assert parse_checksums(f"{a}  other.tar.gz\n{b} *dir/cifar.tar.gz\n", "cifar.tar.gz", "u") == b.lower()
    assert parse_checksums(f"# published\n{a}\n", "cifar.tar.gz", "u") == a


def test_parse_checksums_says_what_is_wrong():
    from tasks.download.published import ChecksumFileError, parse_checksums

    a, b = "a" * 64, "B" * 64
    with pytest.raises(ChecksumFileError, match=r"u: no checksum for 'cifar.tar.gz' \(it lists x, y\)"):
        parse_checksums(f"{a}  x\n{b}  y\n", "cifar.tar.gz", "u")
    with pytest.raises(ChecksumFileError, match="'<html>' is not a checksum line"):
        parse_checksums("<html>\n", "cifar.tar.gz", "u")


def test_a_changed_published_checksum_downloads_again_an_unchanged_one_does_not(tmp_path):
    from tasks.download.errors import SourceNotFoundError
    from tasks.download.fetching import fetch
    from tasks.download.published import follow

    one = build_binary_archive(tmp_path / "one", n_train=20, n_test=10, seed=1)
    two = build_binary_archive(tmp_path / "two", n_train=20, n_test=10, seed=2)
    with FileServer() as srv:
        url = srv.add("c.tar.gz", one.path)
        sums = srv.add("c.tar.gz.sha256", f"{one.sha256}  c.tar.gz\n".encode())
        cfg = _cfg(format="cifar10-binary", source=url, sha256_url=sums)
        data = tmp_path / "data"
        assert fetch(follow(cfg), data).sha256 == one.sha256
        assert fetch(follow(cfg), data).sha256 == one.sha256
        assert len(srv.hits("c.tar.gz")) == 1 and len(srv.hits("c.tar.gz.sha256")) == 2

        srv.add("c.tar.gz", two.path)
        srv.add("c.tar.gz.sha256", f"{two.sha256}  c.tar.gz\n".encode())
        again = fetch(follow(cfg), data)
        assert again.sha256 == two.sha256 and len(srv.hits("c.tar.gz")) == 2

        with pytest.raises(SourceNotFoundError, match="dataset.sha256_url .*missing.sha256: HTTP 404"):
            follow(_cfg(format="cifar10-binary", source=url, sha256_url=srv.url("missing.sha256")))
