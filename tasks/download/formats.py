"""The two official CIFAR-10 archive layouts, read into uint8 arrays.

``cifar-10-binary``: records of 1 label byte + 1024 R + 1024 G + 1024 B, parsed with
``np.frombuffer`` (no per-image Python). ``cifar-10-python``: pickled dicts, read with an
allow-listed unpickler that runs no code. Either way each batch is converted to (N, 32, 32, 3)
the moment it comes out of the archive, while the rest of it still inflates.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.download.archive import iter_tar_threaded
from tasks.download.errors import DatasetFormatError, UnsafeArchiveError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
RECORD = 1 + 3 * 32 * 32  # CIFAR-10 binary record: 1 label byte + 1024 R + 1024 G + 1024 B
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]
BatchParser = Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- safe unpickling
class _AllowListUnpickler(pickle.Unpickler):
    """Plain containers, bytes, numbers -- and exactly the NumPy reconstructors a pickled
    uint8 array needs. Any other global (os.system, builtins.eval, ...) is refused, so the
    pickle's code is never run."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return np._core.multiarray._reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_unpickle(data: bytes, where: str) -> Any:
    try:
        return _AllowListUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise UnsafeArchiveError(
                f"{where}: the pickle asks for {exc}; refused without running it. A CIFAR-10 "
                "batch holds only a dict of bytes, lists and a uint8 array: this archive was "
                "tampered with or is not CIFAR-10 -- delete it and download the official one.") from exc
        raise DatasetFormatError(f"{where}: not a valid pickle ({exc})") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DatasetFormatError(f"{where}: not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- one batch
def planar_to_hwc(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, 3072) channel-planar rows (1024 R, 1024 G, 1024 B, each row-major) -> (N, 32, 32, 3).
    One strided copy per channel: ~4x faster than copying a transposed view (whose innermost
    loop would be 3 long)."""
    src = src.reshape(-1, 3, 1024)
    if out is None:
        out = np.empty((len(src), 32, 32, 3), dtype=np.uint8)
    flat = out.reshape(len(src), 1024, 3)
    for c in range(3):
        flat[:, :, c] = src[:, c, :]
    return out


def _refuse_out_of_range_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and int(y.max()) >= num_classes:
        i = int(np.argmax(y >= num_classes))
        raise DatasetFormatError(f"{where}: record {i} has label {int(y[i])}, outside 0..{num_classes - 1} "
                                 f"({num_classes} classes)")


def binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> (planar pixels (N, 3072) uint8, labels (N,) uint8)."""
    if len(data) % RECORD:
        raise DatasetFormatError(
            f"{where}: {len(data):,} bytes is not a multiple of {RECORD} (1 label byte + 3,072 "
            f"pixel bytes per image): the file is truncated or not CIFAR-10 binary "
            f"({len(data) // RECORD:,} whole records + {len(data) % RECORD} bytes).")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    _refuse_out_of_range_labels(records[:, 0], len(CIFAR10_CLASSES), where)
    return records[:, 1:], records[:, 0].copy()


def python_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (planar pixels (N, 3072) uint8, labels (N,) uint8)."""
    d = safe_unpickle(data, where)
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{where}: expected a dict, got {type(d).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DatasetFormatError(f"{where}: the batch has no 'data'/'labels' (keys: {sorted(d)})")
    x = np.asarray(d["data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DatasetFormatError(f"{where}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072)")
    labels = integer_labels(d["labels"], len(CIFAR10_CLASSES), where)
    if labels.shape != (x.shape[0],):
        raise DatasetFormatError(f"{where}: {labels.shape[0]} labels for {x.shape[0]} images")
    return x, labels.astype(np.uint8)


def integer_labels(raw: Any, num_classes: int, where: str) -> np.ndarray:
    """``raw`` (a batch's ``labels``) as int64, every one an integer in 0..num_classes-1; else a
    DatasetFormatError naming the record and its value (None, "x", NaN, a dict, 0.9: a float is
    never rounded into a class)."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise DatasetFormatError(f"{where}: 'labels' is a {raw.dtype} array of shape {raw.shape}; "
                                     f"expected a list of integers 0..{num_classes - 1}")
        values = raw.tolist()
    elif isinstance(raw, (list, tuple)):
        values = raw
    else:
        raise DatasetFormatError(f"{where}: 'labels' is {type(raw).__name__}, expected a list of "
                                 f"integers 0..{num_classes - 1}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_classes:
            shown = repr(v)[:60]
            raise DatasetFormatError(f"{where}: record {i} has label {shown}, not an integer within "
                                     f"0..{num_classes - 1} ({num_classes} classes); the archive is "
                                     "damaged or not CIFAR-10: download the official one.")
    return np.asarray(values, dtype=np.int64)


# --------------------------------------------------------------------------- the archive
def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts)


class _SplitBuilder:
    """One split's arrays (train: data_batch_1..5) from its batches, in batch order whatever
    the archive's order: each batch converted as it comes, straight into the split's single
    array while the batches are all one size (the official archives: no concatenation)."""

    def __init__(self, names: list[str]):
        self.names, self.x, self.n = names, None, None
        self.parts: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}

    def add(self, name: str, planar: np.ndarray, y: np.ndarray) -> None:
        if self.n is None:
            self.n = len(y)
            self.x = np.empty((self.n * len(self.names), 32, 32, 3), dtype=np.uint8)
        if len(y) == self.n and name not in self.parts:
            i = self.names.index(name)
            planar_to_hwc(planar, self.x[i * self.n:(i + 1) * self.n])
            self.parts[name] = (None, y)  # None: in place in self.x
        else:
            self.parts[name] = (planar_to_hwc(planar), y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        xs = [self.parts[n][0] for n in self.names]
        y = _stack([self.parts[n][1] for n in self.names])
        if all(x is None for x in xs):
            return self.x, y
        return _stack([self.x[i * self.n:(i + 1) * self.n] if x is None else x
                       for i, x in enumerate(xs)]), y


def read_batches(path, fmt: str, folder: str, suffix: str, meta: str, max_bytes: int,
                 digest: list | None, parse: BatchParser):
    """Both CIFAR-10 layouts: ``parse`` turns each batch into planar pixels + labels the moment
    it comes out of the archive (while the rest inflates). Returns the train and test arrays, the
    raw bytes of the ``meta`` member (class names) and where that member is."""
    names = [f"{folder}/{b}{suffix}" for b in (*TRAIN_BATCHES, "test_batch")]
    meta = f"{folder}/{meta}"
    train, test = _SplitBuilder(names[:5]), _SplitBuilder(names[5:])
    seen: dict[str, bytes | None] = {}
    for name, data in iter_tar_threaded(path, lambda n: n in names or n == meta, max_bytes, digest=digest):
        if name == meta:
            seen[name] = data
        else:
            seen[name] = None  # converted already; only its presence is kept
            (train if name in train.names else test).add(name, *parse(data, f"{path}:{name}"))
    absent = [n for n in (*names, meta) if n not in seen]
    if absent:
        raise DatasetFormatError(f"{path}: the {fmt} archive lacks {', '.join(absent)}; "
                                 "is dataset.format right for this archive?")
    return (*train.arrays(), *test.arrays()), seen[meta], f"{path}:{meta}"


def _cifar10_classes(classes: list[str], where: str) -> tuple[str, ...]:
    if tuple(classes) != CIFAR10_CLASSES:
        raise DatasetFormatError(f"{where}: class names {classes} are not CIFAR-10's "
                                 f"{list(CIFAR10_CLASSES)}; is this the right archive and format?")
    return CIFAR10_CLASSES


def decode_binary(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    arrays, meta, where = read_batches(path, "cifar10-binary", BIN_DIR, ".bin", "batches.meta.txt",
                                       max_bytes, digest, binary_batch)
    names = [ln.strip() for ln in meta.decode("utf-8", "replace").splitlines() if ln.strip()]
    return (*arrays, _cifar10_classes(names, where))


def decode_python(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    arrays, meta, where = read_batches(path, "cifar10-python", PY_DIR, "", "batches.meta",
                                       max_bytes, digest, python_batch)
    m = safe_unpickle(meta, where)
    raw = m.get(b"label_names", m.get("label_names")) if isinstance(m, dict) else None
    if not isinstance(raw, list):
        raise DatasetFormatError(f"{where}: no 'label_names' list")
    names = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    return (*arrays, _cifar10_classes(names, where))
