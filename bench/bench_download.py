"""Benchmark the download stage's decode and cache on the full CIFAR-10 (60,000 images).

    .venv/bin/python -m bench.bench_download          # ~1-2 min; results in bench/out/download.json
    .venv/bin/python -m bench.bench_download --gzip   # only 8.: results in bench/out/gzip.json

Measures, on the same machine and the same data (the real images of cifar10-jpeg.tar.gz,
written in the official layouts by bench/make_archives.py):

1. ours, cifar10-binary: archive (.tar.gz) -> verified .npy cache (decode, sha256 of the
   archive while reading, write + hash the arrays, manifest)      target <= 3 s
2. ours, cifar10-python: the same from the pickled batches (allow-listed unpickler)
3. keras.datasets.cifar10's own parsing: the body of ``load_data()`` after ``get_file`` (its
   ``load_batch`` x 6 + transpose) on the extracted python batches; and the extraction of the
   tar.gz that ``get_file(extract=True)`` does first (``load_data`` itself cannot be pointed at
   a local archive: it re-downloads anything whose sha256 is not the official one)
4. loading the cached dataset (memory-mapped)                      target <= 0.2 s
5. a rerun: fetch() of the archive already there + the full cache verification
6. the image-folder path on the 60,000-JPEG tarball -> cache
7. the pieces: inflating with zlib vs the library the decoder uses (zlib-ng when installed), and
   writing the cache (arrays hashed as written and fsynced) vs a bare np.save of the same arrays
8. ``--gzip``: the stage's own threaded reader (``tasks.download.inflate.InflatingReader``:
   inflate, hash and parse on three threads) against zlib-ng's threaded gzip reader
   (``zlib_ng.gzip_ng_threaded``: inflate and hash on one worker thread), both with the inflate
   cap and the archive's sha256: inflate + hash alone, and the whole binary decode
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.make_archives import (
    JPEG_TARBALL,
    OUT,
    build_binary_archive,
    build_python_archive,
    cached,
)


def _time(fn, repeat: int = 1, setup=None):
    times, result = [], None
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def keras_parse(folder: Path):
    """keras.datasets.cifar10.load_data() after get_file, verbatim but for the path."""
    from keras import backend
    from keras.src.datasets.cifar import load_batch

    num_train_samples = 50000
    x_train = np.empty((num_train_samples, 3, 32, 32), dtype="uint8")
    y_train = np.empty((num_train_samples,), dtype="uint8")
    path = os.path.join(folder, "cifar-10-batches-py")
    for i in range(1, 6):
        fpath = os.path.join(path, f"data_batch_{i}")
        (x_train[(i - 1) * 10000: i * 10000, :, :, :], y_train[(i - 1) * 10000: i * 10000]) = load_batch(fpath)
    x_test, y_test = load_batch(os.path.join(path, "test_batch"))
    y_train = np.reshape(y_train, (len(y_train), 1))
    y_test = np.reshape(y_test, (len(y_test), 1))
    if backend.image_data_format() == "channels_last":
        x_train = x_train.transpose(0, 2, 3, 1)
        x_test = x_test.transpose(0, 2, 3, 1)
    x_test = x_test.astype(x_train.dtype)
    y_test = y_test.astype(y_train.dtype)
    return (x_train, y_train), (x_test, y_test)


def inflate_pieces(archive: Path, s: dict, repeat: int) -> str:
    """Inflating the archive with the standard zlib vs the library the decoder uses."""
    import zlib

    from tasks.download.inflate import _inflater

    raw = archive.read_bytes()
    s["inflate_zlib"], _, _ = _time(lambda: zlib.decompressobj(31).decompress(raw), repeat)
    s["inflate_used"], _, _ = _time(lambda: _inflater.decompressobj(31).decompress(raw), repeat)
    return _inflater.__name__


def write_pieces(ds, where: Path, s: dict, repeat: int) -> None:
    """Writing the cache (arrays hashed as written, each fsynced, manifest) vs np.save alone."""
    from tasks.core.datacache import write_dataset_cache

    arrays = [np.asarray(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)]

    def fresh() -> None:
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)

    def plain() -> None:
        for i, a in enumerate(arrays):
            np.save(where / f"{i}.npy", a)

    s["write_cache"], _, _ = _time(lambda: write_dataset_cache(where / "c", *arrays, ds.classes,
                                                               {"source": "bench"}), repeat, fresh)
    s["write_np_save_only"], _, _ = _time(plain, repeat, fresh)
    shutil.rmtree(where, ignore_errors=True)


def main(repeat: int = 3) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tasks.core.datacache import cache_problems, load_dataset
    from tasks.download.config import DatasetConfig
    from tasks.download.decode import decode_and_cache, decode_archive
    from tasks.download.fetching import fetch

    binary, bin_sha = cached(build_binary_archive, OUT / "cifar-10-binary.tar.gz")
    python, py_sha = cached(build_python_archive, OUT / "cifar-10-python.tar.gz")
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=OUT))
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "numpy": np.__version__, "processor": platform.processor() or platform.machine()},
                 "archives": {"binary": {"path": str(binary), "sha256": bin_sha, "bytes": binary.stat().st_size},
                              "python": {"path": str(python), "sha256": py_sha, "bytes": python.stat().st_size}},
                 "seconds": {}}
    s = res["seconds"]
    try:
        data = work / "data"
        bin_cfg = DatasetConfig(format="cifar10-binary", source=str(binary), sha256=bin_sha)
        py_cfg = DatasetConfig(format="cifar10-python", source=str(python), sha256=py_sha)
        bin_arch, py_arch = fetch(bin_cfg, data), fetch(py_cfg, data)

        def clear():
            shutil.rmtree(data / "datasets", ignore_errors=True)

        res["inflater"] = inflate_pieces(binary, s, repeat)

        s["ours_binary_decode_only"], _, _ = _time(
            lambda: decode_archive(binary, "cifar10-binary", 2**31, digest=[]), repeat)
        s["ours_python_decode_only"], _, _ = _time(
            lambda: decode_archive(python, "cifar10-python", 2**31, digest=[]), repeat)
        s["ours_binary_to_cache"], s["ours_binary_to_cache_median"], rec = _time(
            lambda: decode_and_cache(bin_arch, bin_cfg, data), repeat, clear)
        s["ours_python_to_cache"], s["ours_python_to_cache_median"], rec_py = _time(
            lambda: decode_and_cache(py_arch, py_cfg, data), repeat, clear)
        ours = load_dataset(rec_py.path)

        write_pieces(ours, work / "w", s, repeat)

        extracted = work / "keras"

        def extract():
            shutil.rmtree(extracted, ignore_errors=True)
            with tarfile.open(python) as tf:
                tf.extractall(extracted, filter="data")

        s["keras_extract"], _, _ = _time(extract, 1)
        s["keras_parse"], s["keras_parse_median"], (tr, te) = _time(lambda: keras_parse(extracted), repeat)
        assert np.array_equal(tr[0], ours.x_train) and np.array_equal(tr[1][:, 0], ours.y_train)
        assert np.array_equal(te[0], ours.x_test) and np.array_equal(te[1][:, 0], ours.y_test)
        res["same_arrays_as_keras"] = True
        del tr, te, ours

        decode_and_cache(bin_arch, bin_cfg, data)
        s["load_cached_mmap"], s["load_cached_mmap_median"], ds = _time(lambda: load_dataset(rec.path), max(repeat, 5))
        s["load_cached_and_touch_all"], _, _ = _time(lambda: int(load_dataset(rec.path).x_train.sum(dtype=np.uint64)), 1)
        s["rerun_fetch"], _, _ = _time(lambda: fetch(bin_cfg, data), max(repeat, 5))
        s["rerun_verify_cache"], _, probs = _time(lambda: cache_problems(rec.path), repeat)
        assert probs == []
        s["rerun_total"], _, _ = _time(lambda: decode_and_cache(fetch(bin_cfg, data), bin_cfg, data), repeat)

        img_cfg = DatasetConfig(format="image-folder", source=str(JPEG_TARBALL))
        img_arch = fetch(img_cfg, data)
        s["ours_image_folder_jpeg_to_cache"], _, img = _time(lambda: decode_and_cache(img_arch, img_cfg, data), 1)
        res["image_folder_shape"] = [img.train_size, img.test_size, *img.input_shape]

        res["ratios"] = {
            "(keras_extract + keras_parse) / ours_binary_decode_only":
                (s["keras_extract"] + s["keras_parse"]) / s["ours_binary_decode_only"],
            "(keras_extract + keras_parse) / ours_python_decode_only":
                (s["keras_extract"] + s["keras_parse"]) / s["ours_python_decode_only"],
            "keras_parse / ours_binary_to_cache": s["keras_parse"] / s["ours_binary_to_cache"],
            "keras_parse / ours_python_to_cache": s["keras_parse"] / s["ours_python_to_cache"],
            "(keras_extract + keras_parse) / ours_python_to_cache":
                (s["keras_extract"] + s["keras_parse"]) / s["ours_python_to_cache"],
            "ours_image_folder / ours_binary": s["ours_image_folder_jpeg_to_cache"] / s["ours_binary_to_cache"],
        }
        res["load_average_1min_at_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "download.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def table(res: dict) -> str:
    s = res["seconds"]
    rows = [
        ("inflate the binary .tar.gz: zlib", s["inflate_zlib"]),
        (f"inflate the binary .tar.gz: {res.get('inflater', '?')} (used)", s["inflate_used"]),
        ("ours: write the cache (arrays hashed + fsynced)", s["write_cache"]),
        ("np.save of the same arrays (no hash, no fsync)", s["write_np_save_only"]),
        ("ours: binary .tar.gz -> arrays (decode + sha256)", s["ours_binary_decode_only"]),
        ("ours: python .tar.gz -> arrays (decode + sha256)", s["ours_python_decode_only"]),
        ("ours: binary .tar.gz -> verified cache (60k)", s["ours_binary_to_cache"]),
        ("ours: python .tar.gz -> verified cache (60k)", s["ours_python_to_cache"]),
        ("keras: extract python .tar.gz (get_file)", s["keras_extract"]),
        ("keras: cifar10.load_data parsing (load_batch x6)", s["keras_parse"]),
        ("ours: load cached dataset (mmap)", s["load_cached_mmap"]),
        ("ours: load cached + read every pixel", s["load_cached_and_touch_all"]),
        ("ours: rerun fetch (archive present)", s["rerun_fetch"]),
        ("ours: rerun verify cache (sha256 of arrays)", s["rerun_verify_cache"]),
        ("ours: rerun fetch + decode_and_cache (hit)", s["rerun_total"]),
        ("ours: image-folder, 60k JPEG .tar.gz -> cache", s["ours_image_folder_jpeg_to_cache"]),
    ]
    lines = [f"{'step':<52} {'seconds':>8}", "-" * 61]
    lines += [f"{name:<52} {sec:>8.3f}" for name, sec in rows]
    lines += ["", "ratios:"] + [f"  {k}: {v:.2f}x" for k, v in res["ratios"].items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- 8. gzip readers
class _CappedReader(io.RawIOBase):
    """The same inflate cap as InflatingReader (max_bytes + 1 MiB), over any inflated stream."""

    def __init__(self, stream, max_bytes: int, where: str):
        self.stream, self.left, self.where = stream, max_bytes + (1 << 20), where

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.stream.readinto(b)
        self.left -= n
        if self.left < 0:
            from tasks.download.errors import UnsafeArchiveError

            raise UnsafeArchiveError(f"{self.where}: inflates past the cap; refused")
        return n


def zlib_ng_threaded_members(path, wanted, max_bytes, dirs=None, digest=None):
    """``iter_tar_threaded`` with zlib-ng's threaded reader in place of InflatingReader: the
    archive file hashed as zlib-ng's worker reads it, the inflated bytes capped."""
    from zlib_ng import gzip_ng_threaded

    from tasks.download.archive import (
        CHUNK,
        ExtractionBudget,
        _HashingReader,
        _tar_members,
    )

    where = str(path)
    with open(path, "rb") as raw:
        hashing = _HashingReader(raw)
        with gzip_ng_threaded.open(hashing, "rb", threads=1) as gz:
            capped = _CappedReader(gz, max_bytes, where)
            yield from _tar_members(capped, where, wanted, ExtractionBudget(max_bytes, where), dirs, "r|")
            if digest is not None:
                while capped.read(CHUNK):
                    pass
                digest.append(hashing.finish())


@contextlib.contextmanager
def _tar_reader(members):
    """The binary decoder reading its archive through ``members`` (an iter_tar_threaded)."""
    from tasks.download import formats

    saved, formats.iter_tar_threaded = formats.iter_tar_threaded, members
    try:
        yield
    finally:
        formats.iter_tar_threaded = saved


def gzip_readers(repeat: int = 6) -> dict:
    """InflatingReader vs zlib_ng.gzip_ng_threaded on the full-size binary archive."""
    from zlib_ng import gzip_ng_threaded

    from tasks.download.archive import CHUNK, _HashingReader, iter_tar_threaded
    from tasks.download.decode import decode_archive
    from tasks.download.inflate import InflatingReader

    binary, sha = cached(build_binary_archive, OUT / "cifar-10-binary.tar.gz")
    cap = 2**31

    def ours_inflate() -> str:
        stream = InflatingReader(binary, cap, str(binary))
        try:
            return stream.sha256()  # reads every inflated byte, then the archive's digest
        finally:
            stream.close()

    def zlib_ng_inflate() -> str:
        with open(binary, "rb") as raw:
            hashing = _HashingReader(raw)
            with gzip_ng_threaded.open(hashing, "rb", threads=1) as gz:
                capped = _CappedReader(gz, cap, str(binary))
                while capped.read(CHUNK):
                    pass
            return hashing.finish()

    def decode(members):
        def run():
            digest: list[str] = []
            with _tar_reader(members):
                arrays = decode_archive(binary, "cifar10-binary", cap, digest=digest)
            assert digest == [sha] and len(arrays[0]) == 50_000
            return arrays
        return run

    steps = [("inflate_hash_ours", ours_inflate), ("inflate_hash_zlib_ng_threaded", zlib_ng_inflate),
             ("decode_binary_ours", decode(iter_tar_threaded)),
             ("decode_binary_zlib_ng_threaded", decode(zlib_ng_threaded_members))]
    runs: dict[str, list[float]] = {}
    # Interleaved, so a busy moment of the (shared) machine hits both alike, and each in turn
    # first and second: measured in one fixed order, whichever decode ran second was ~0.2 s faster.
    for i in range(repeat):
        order = steps if i % 2 == 0 else [steps[1], steps[0], steps[3], steps[2]]
        for name, fn in order:
            seconds, _, got = _time(fn)
            assert not name.startswith("inflate") or got == sha
            runs.setdefault(name, []).append(seconds)
            del got
    s = {name: min(times) for name, times in runs.items()}
    median = {name: statistics.median(times) for name, times in runs.items()}
    res = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "load_average_1min_at_end": os.getloadavg()[0]},
           "archive": {"path": str(binary), "bytes": binary.stat().st_size}, "repeat": repeat,
           "seconds_min": s, "seconds_median": median, "seconds_all": runs,
           "ratios (zlib_ng_threaded / ours)": {
               "inflate_hash": s["inflate_hash_zlib_ng_threaded"] / s["inflate_hash_ours"],
               "decode_binary": s["decode_binary_zlib_ng_threaded"] / s["decode_binary_ours"]}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gzip.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    if "--gzip" in sys.argv[1:]:
        print(json.dumps(gzip_readers(), indent=2))
        print(f"\nwritten: {OUT / 'gzip.json'}")
    else:
        result = main()
        print(table(result))
        print(f"\nwritten: {OUT / 'download.json'}")
