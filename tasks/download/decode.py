"""From a verified archive to the dataset cache: decode it in the configured format, check it is
still the archive that was verified, take the seeded class-balanced subsets, and publish the
content-addressed ``.npy`` cache of ``tasks.core.datacache`` -- once, under a lock.

The cache's address (``dataset_fingerprint``) is the archive's sha256, the settings that shape
the arrays, and ``CODE_VERSION``: the behaviour of this module and of every project module it
imports, transitively (the formats, the archive readers and their member checks, the
image-folder decoder, the cache format, ...: ``tasks.core.hashing.closure_fingerprint``), not
their comments, docstrings, log or error wording, nor the Prefect task around it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from tasks.core.datacache import (
    DatasetRecord,
    cache_problems,
    record_from_manifest,
    write_dataset_cache,
)
from tasks.core.files import file_lock, read_json
from tasks.core.hashing import closure_fingerprint, hash_file, hash_tree, stable_hash
from tasks.download.config import DatasetConfig
from tasks.download.errors import ChecksumError, DatasetFormatError
from tasks.download.fetching import ArchiveRecord
from tasks.download.formats import Arrays, decode_binary, decode_python
from tasks.download.image_folder import decode_image_folder
from tasks.download.progress import stage_log

DECODERS = {"cifar10-binary": decode_binary, "cifar10-python": decode_python, "image-folder": decode_image_folder}
# Part of every dataset's address: a change to how the arrays are decoded or cached rebuilds them.
# Read from the sources (nothing is imported), so computing it here, at import, cannot recurse.
# The import closure replaced a hand-kept list in issue 27: every address changed once then.
CODE_VERSION = closure_fingerprint("tasks.download.decode")


def decode_archive(path: str | os.PathLike, fmt: str, max_bytes: int, digest: list | None = None,
                   notes: dict | None = None) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) from an archive (or image folder); ``notes``,
    when a dict, gets what the image-folder decoder skipped."""
    try:
        decoder = DECODERS[fmt]
    except KeyError:
        raise DatasetFormatError(f"unknown dataset.format {fmt!r}; known: {', '.join(DECODERS)}") from None
    if fmt == "image-folder" and notes is not None:
        return decoder(path, max_bytes, digest=digest, notes=notes)
    return decoder(path, max_bytes, digest=digest)


def skipped_text(notes: dict, shown: int = 8) -> str:
    """'5 entries: __MACOSX/ (3, macOS metadata), train/cat/.DS_Store (1, hidden)' for the log."""
    parts = [f"{s['entry']} ({s['count']}, {s['reason']})" for s in notes["skipped"][:shown]]
    more = len(notes["skipped"]) - shown
    return (f"{notes['skipped_entries']:,} entries: {', '.join(parts)}"
            + (f" and {more} more (the manifest lists them)" if more > 0 else ""))


def balanced_subset(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples, as even across classes as the data allows, drawn with
    ``seed``: every class gives ``n // k``, the remainder goes to randomly chosen classes, and a
    class too small to give its share gives all it has."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y), dtype=np.int64)
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    class_order = rng.permutation(num_classes)  # who gets the remainder
    tiebreak = np.empty(num_classes, dtype=np.int64)
    tiebreak[class_order] = np.arange(num_classes)
    order = np.lexsort((tiebreak[y], rank))  # by rank, then by the shuffled class order
    return np.sort(order[:n])


def dataset_fingerprint(archive: ArchiveRecord, cfg: DatasetConfig) -> str:
    limited = cfg.limit_train is not None or cfg.limit_test is not None
    return stable_hash(archive.sha256, cfg.format, cfg.limit_train, cfg.limit_test,
                       cfg.subset_seed if limited else None, CODE_VERSION)


def dataset_dir(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "datasets" / dataset_fingerprint(archive, cfg)


def _decode_verified(archive: ArchiveRecord, cfg: DatasetConfig, notes: dict) -> Arrays:
    """The archive's arrays, refused when the file's bytes (hashed as they were read) are no
    longer the ones fetched; ``notes`` gets what the decoder skipped."""
    src = Path(archive.path)
    digest: list[str] = []
    arrays = decode_archive(src, cfg.format, cfg.max_extract_mb * 2**20, digest=digest, notes=notes)
    if src.is_file():
        actual = digest[0] if digest else hash_file(src).sha256
        if actual != archive.sha256:
            raise ChecksumError(
                f"{src} changed since it was verified: sha256 {actual}, expected "
                f"{archive.sha256}. Nothing was cached. Delete the file and run again to "
                "fetch it anew.")
    elif src.is_dir() and hash_tree(src).sha256 != archive.sha256:  # changed while it was decoded
        raise ChecksumError(f"{src} changed while it was decoded (files added, removed or rewritten "
                            "since the download stage hashed it). Nothing was cached; run again.")
    return arrays


def _subset(arrays: Arrays, cfg: DatasetConfig) -> Arrays:
    """The configured class-balanced subsets (the test split drawn with the next seed)."""
    x_train, y_train, x_test, y_test, classes = arrays
    if cfg.limit_train is not None:
        keep = balanced_subset(y_train, cfg.limit_train, len(classes), cfg.subset_seed)
        x_train, y_train = x_train[keep], y_train[keep]
    if cfg.limit_test is not None:
        keep = balanced_subset(y_test, cfg.limit_test, len(classes), cfg.subset_seed + 1)
        x_test, y_test = x_test[keep], y_test[keep]
    return x_train, y_train, x_test, y_test, classes


def decode_and_cache(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str | os.PathLike) -> DatasetRecord:
    """The verified dataset cache for ``archive``: returned as is when intact; else decoded
    (the archive re-hashed as it is read) and published atomically, once, under a lock."""
    out = dataset_dir(archive, cfg, data_dir)
    if not cache_problems(out):
        return record_from_manifest(out, read_json(out / "manifest.json"))
    log = stage_log()
    with file_lock(out.with_name(f".{out.name}.lock"), f"decoding {out.name}"):
        problems = cache_problems(out)
        if not problems:
            return record_from_manifest(out, read_json(out / "manifest.json"))
        if out.exists():
            log.warning(f"rebuilding the dataset cache {out}: {'; '.join(problems)}")
        t0 = time.perf_counter()
        notes: dict = {}
        arrays = _subset(_decode_verified(archive, cfg, notes), cfg)
        seconds = time.perf_counter() - t0
        if notes.get("skipped_entries"):
            log.info(f"skipped {skipped_text(notes)} in {archive.path}")
        meta = {"source": archive.source, "archive_sha256": archive.sha256, "archive_size": archive.size,
                "format": cfg.format, "limit_train": cfg.limit_train, "limit_test": cfg.limit_test,
                "subset_seed": cfg.subset_seed, "code_version": CODE_VERSION,
                "decode_seconds": round(seconds, 3), **notes}
        record = write_dataset_cache(out, *arrays, meta)
        log.info(f"decoded {record.train_size:,} train + {record.test_size:,} test images "
                 f"{record.input_shape} in {seconds:.1f} s -> {out}")
        return record
