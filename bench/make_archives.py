"""Official-layout CIFAR-10 archives built from the real images in cifar10-jpeg.tar.gz.

The official archives cannot be downloaded here, so this decodes the 60,000 JPEGs once (cached
as ``bench/out/cifar10-jpeg-decoded.npz``) and writes them in the exact official layouts:

- ``build_binary_archive(out)``: cifar-10-binary.tar.gz (``cifar-10-batches-bin/data_batch_1..5.bin``,
  ``test_batch.bin``, ``batches.meta.txt``; records of 1 label byte + 1024 R + 1024 G + 1024 B)
- ``build_python_archive(out)``: cifar-10-python.tar.gz (pickled batches, as Keras reads them)

Both return ``(path, sha256)``: serve the file on 127.0.0.1 and set ``dataset.sha256`` to
download it end to end.  ``python -m bench.make_archives`` builds both under bench/out/.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
JPEG_TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def decoded_jpegs(jpeg_tarball: Path = JPEG_TARBALL, cache: Path | None = None):
    """(x_train, y_train, x_test, y_test) of the JPEG tarball, each split shuffled with seed 0
    (the official batches are in random order too). Decoded once, then read from ``cache``."""
    cache = cache or OUT / "cifar10-jpeg-decoded.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    from tasks.download.image_folder import decode_image_folder

    x_train, y_train, x_test, y_test, classes = decode_image_folder(jpeg_tarball, 2**31)
    assert classes == CLASSES, classes
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(y_train)), rng.permutation(len(y_test))
    arrays = x_train[tr], y_train[tr], x_test[te], y_test[te]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
    tmp.replace(cache)
    return arrays


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> tuple[Path, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_262_304_000  # fixed: the same input gives the same bytes
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path, _sha256(path)


def _planar(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)


def build_binary_archive(out: Path | None = None, jpeg_tarball: Path = JPEG_TARBALL) -> tuple[Path, str]:
    """The official cifar-10-binary.tar.gz layout from the JPEG tarball's images."""
    out = out or OUT / "cifar-10-binary.tar.gz"
    x_train, y_train, x_test, y_test = decoded_jpegs(jpeg_tarball)
    d = "cifar-10-batches-bin"

    def records(x, y):
        return np.concatenate([y.reshape(-1, 1), _planar(x)], axis=1).tobytes()

    members: list[tuple[str, bytes | None]] = [(d, None), (f"{d}/batches.meta.txt", ("\n".join(CLASSES) + "\n\n").encode())]
    for i in range(5):
        s = slice(i * 10000, (i + 1) * 10000)
        members.append((f"{d}/data_batch_{i + 1}.bin", records(x_train[s], y_train[s])))
    members.append((f"{d}/test_batch.bin", records(x_test, y_test)))
    members.append((f"{d}/readme.html", b"<html>built from cifar10-jpeg.tar.gz by bench/make_archives.py</html>\n"))
    return _write_tar(out, members)


def build_python_archive(out: Path | None = None, jpeg_tarball: Path = JPEG_TARBALL) -> tuple[Path, str]:
    """The official cifar-10-python.tar.gz layout: dicts with bytes keys, pickled with protocol 4
    so the pixel bytes are stored raw, as in the official Python 2 pickles (protocol 2 from
    Python 3 would need ``_codecs.encode``, which Keras's own unpickler rightly refuses)."""
    out = out or OUT / "cifar-10-python.tar.gz"
    x_train, y_train, x_test, y_test = decoded_jpegs(jpeg_tarball)
    d = "cifar-10-batches-py"

    def batch(x, y, label):
        return pickle.dumps({b"batch_label": label.encode(), b"labels": [int(v) for v in y],
                             b"data": _planar(x), b"filenames": [b"img_%05d.png" % i for i in range(len(x))]},
                            protocol=4)

    meta = pickle.dumps({b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CLASSES],
                         b"num_vis": 3072}, protocol=4)
    members: list[tuple[str, bytes | None]] = [(d, None), (f"{d}/batches.meta", meta)]
    for i in range(5):
        s = slice(i * 10000, (i + 1) * 10000)
        members.append((f"{d}/data_batch_{i + 1}", batch(x_train[s], y_train[s], f"training batch {i + 1} of 5")))
    members.append((f"{d}/test_batch", batch(x_test, y_test, "testing batch 1 of 1")))
    return _write_tar(out, members)


def cached(builder, out: Path) -> tuple[Path, str]:
    """Build once; later calls reuse the file under bench/out/."""
    if out.exists():
        return out, _sha256(out)
    return builder(out)


if __name__ == "__main__":
    for fn, name in ((build_binary_archive, "cifar-10-binary.tar.gz"), (build_python_archive, "cifar-10-python.tar.gz")):
        t0 = time.perf_counter()
        path, sha = cached(fn, OUT / name)
        print(f"{path}  {path.stat().st_size:,} bytes  sha256 {sha}  ({time.perf_counter() - t0:.1f} s)")
