"""The decoded-dataset cache: uint8 ``.npy`` arrays plus a manifest, published atomically.

Layout of ``<data_dir>/datasets/<fingerprint>/``::

    x_train.npy (N,H,W,C) uint8   y_train.npy (N,) uint8
    x_test.npy  (M,H,W,C) uint8   y_test.npy  (M,) uint8
    manifest.json   written last: the commit point. It records the source, the archive
                    checksum, classes, per-class counts, shapes and the sha256 of every array,
                    and ``manifest_sha256``: the checksum of all its other fields, so an edit
                    to the manifest itself (its classes, say) is caught like an edit to an array.

Readers memory-map the arrays, so loading is near-instant and never copies the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import faults
from tasks.core.files import atomic_write_json, read_json
from tasks.core.guards_text import redact_record
from tasks.core.hashing import hash_file, stable_hash

FORMAT_VERSION = 2  # 2: the manifest checksums itself
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
SELF_CHECKSUM = "manifest_sha256"


@dataclass(frozen=True)
class DatasetRecord:
    """What the download stage hands on: small, picklable, enough to find and trust the data."""

    fingerprint: str
    path: str  # the cache folder
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    # Hash of the arrays' own checksums and the class names: what the data *is*, whatever code
    # decoded it. Training and saving key on this, so a change to the decoder that yields the
    # same arrays re-decodes (seconds) but never retrains (minutes).
    content: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    manifest: dict[str, Any]


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._f.write(data)


def _counts(y: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def write_dataset_cache(
    out_dir: str | os.PathLike,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: list[str] | tuple[str, ...],
    meta: dict[str, Any],
) -> DatasetRecord:
    """Write arrays and manifest into a temp folder beside ``out_dir``, then rename it into place.

    ``meta`` (source, archive_sha256, format, ...) is merged into the manifest. A crash leaves no
    ``out_dir``; an existing complete ``out_dir`` is replaced only by a complete one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    classes = tuple(classes)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for name, arr in arrays.items():
        if arr.dtype != np.uint8:
            raise TypeError(f"{name} must be uint8, got {arr.dtype}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for name, arr in arrays.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                hashing = _HashingWriter(f)
                np.save(hashing, np.ascontiguousarray(arr), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[f"{name}.npy"] = hashing.sha256.hexdigest()  # hashed as written, not re-read
        manifest = redact_record({  # no URL credentials recorded
            **meta,
            "format_version": FORMAT_VERSION,
            "fingerprint": out_dir.name,
            "classes": list(classes),
            "shapes": {name: list(arr.shape) for name, arr in arrays.items()},
            "counts": {"train": _counts(y_train, classes), "test": _counts(y_test, classes)},
            "files": files,
        })
        manifest[SELF_CHECKSUM] = manifest_checksum(manifest)
        atomic_write_json(tmp / "manifest.json", manifest)
        faults.reached("decode.before-publish")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record_from_manifest(out_dir, manifest)


def record_from_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> DatasetRecord:
    shapes = manifest["shapes"]
    return DatasetRecord(
        fingerprint=manifest["fingerprint"],
        path=str(path),
        classes=tuple(manifest["classes"]),
        input_shape=tuple(shapes["x_train"][1:]),
        train_size=shapes["x_train"][0],
        test_size=shapes["x_test"][0],
        content=content_hash(manifest),
    )


def content_hash(manifest: dict[str, Any]) -> str:
    """The dataset's identity by content: the arrays' sha256 (from the manifest) + class names."""
    return stable_hash("dataset-content", manifest["files"], manifest["classes"])


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """The sha256 of every field of the manifest but the checksum itself."""
    return stable_hash("dataset-manifest", {k: v for k, v in manifest.items() if k != SELF_CHECKSUM},
                       length=64)


def _manifest_problems(mf: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The manifest, or why it cannot be trusted: unreadable, not an object, an old format,
    fields that no longer match its own checksum, or not naming exactly the four arrays."""
    try:
        manifest = read_json(mf)
    except (OSError, ValueError) as exc:
        return None, [f"{mf} is not valid JSON: {exc}"]
    if not isinstance(manifest, dict):
        return None, [f"{mf} is not a JSON object"]
    if manifest.get("format_version") != FORMAT_VERSION:
        return None, [f"{mf}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}"]
    if manifest.get(SELF_CHECKSUM) != manifest_checksum(manifest):
        return None, [f"{mf} was altered: its fields no longer match its {SELF_CHECKSUM}"]
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {f"{n}.npy" for n in ARRAYS}:
        return None, [f"{mf}: 'files' does not list exactly {', '.join(f'{n}.npy' for n in ARRAYS)}"]
    return manifest, []


def cache_problems(path: str | os.PathLike, verify_checksums: bool = True) -> list[str]:
    """Why the cache folder cannot be trusted (empty list: it can). Checks the manifest against
    its own checksum, then every array's sha256 (unless ``verify_checksums`` is false)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        return [f"{mf} is missing"]
    manifest, problems = _manifest_problems(mf)
    if manifest is None:
        return problems
    for name, digest in manifest["files"].items():
        p = path / name
        if not p.is_file():
            problems.append(f"{p} is missing")
        elif verify_checksums and hash_file(p).sha256 != digest:
            problems.append(f"{p} was altered (sha256 differs from the manifest)")
    return problems


def load_dataset(path: str | os.PathLike, mmap: bool = True) -> Dataset:
    """Open a verified cache folder; arrays are memory-mapped (read-only) unless ``mmap=False``."""
    path = Path(path)
    manifest = read_json(path / "manifest.json")
    mode = "r" if mmap else None
    arrays = {n: np.load(path / f"{n}.npy", mmap_mode=mode, allow_pickle=False) for n in ARRAYS}
    return Dataset(**arrays, classes=tuple(manifest["classes"]), manifest=manifest)
