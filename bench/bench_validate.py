"""Validation time and peak memory on the real CIFAR-10 (60,000 images), ours vs the notebook's way.

    .venv/bin/python -m bench.bench_validate [--repeat 3]

The images are the real CIFAR-10 JPEGs (/work/shared/datasets/cifar10-jpeg.tar.gz), decoded once
by bench.make_archives.decoded_jpegs and written as a dataset cache under bench/out/ (git-ignored).
Each way runs in its own fresh subprocess, so its peak RSS (getrusage ru_maxrss) is its own:

- ours: tasks.prepare.validation.validate_cached_dataset, i.e. the stage without Prefect: mmap the uint8
  cache, scale + one-hot chunk by chunk, pandera over the summary frames, dataset checks,
  duplicate hashing, summary written to disk.
- notebook: what the course notebook did to the same arrays before training: load them into
  memory, ``x / 255`` (float64) and ``keras.utils.to_categorical`` -- and no validation at all.

Peak RSS includes the interpreter and imports (the notebook imports Keras/TensorFlow for
to_categorical); "data" is the peak minus the RSS right after the imports. Results go to
bench/out/validate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DATA = OUT / "validate-data"
FINGERPRINT = "cifar10-jpeg-real"


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ensure_cache():
    """The real images as a dataset cache (tasks.core.datacache layout), written once."""
    from tasks.core.datacache import cache_problems, record_from_manifest, write_dataset_cache
    from tasks.core.files import read_json

    path = DATA / "datasets" / FINGERPRINT
    if not cache_problems(path, verify_checksums=False):
        return record_from_manifest(path, read_json(path / "manifest.json"))
    from bench.make_archives import CLASSES, JPEG_TARBALL, decoded_jpegs

    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = decoded_jpegs()
    print(f"decoded the JPEGs in {time.perf_counter() - t0:.1f} s")
    return write_dataset_cache(path, x_train, y_train, x_test, y_test, CLASSES,
                               {"source": str(JPEG_TARBALL), "format": "image-folder"})


def child_ours() -> dict:
    from tasks.core.datacache import record_from_manifest
    from tasks.core.files import read_json
    from tasks.prepare.config import PrepareConfig
    from tasks.prepare.validation import validate_cached_dataset

    import pandas  # noqa: F401  (imported lazily by the stage; count it as an import, not data)
    import pandera.pandas  # noqa: F401

    path = DATA / "datasets" / FINGERPRINT
    record = record_from_manifest(path, read_json(path / "manifest.json"))
    after_imports = _rss_now_mb()
    with tempfile.TemporaryDirectory() as data_dir:  # a fresh data_dir: no summary to reuse
        t0 = time.perf_counter()
        rec = validate_cached_dataset(record, PrepareConfig(), data_dir)
        seconds = time.perf_counter() - t0
    s = rec.summary
    return {"seconds": seconds, "validation_seconds": s["seconds"], "after_imports_mb": after_imports,
            "peak_mb": _peak_mb(), "checks_passed": sum(c["passed"] for c in s["checks"]),
            "checks": len(s["checks"]), "channel_mean": s["channel_mean"],
            "channel_std": s["channel_std"], "train_test_duplicates": s["train_test_duplicates"]}


def child_notebook() -> dict:
    import numpy as np
    from keras.utils import to_categorical

    path = DATA / "datasets" / FINGERPRINT
    after_imports = _rss_now_mb()
    t0 = time.perf_counter()
    x_train, y_train = np.load(path / "x_train.npy"), np.load(path / "y_train.npy")
    x_test, y_test = np.load(path / "x_test.npy"), np.load(path / "y_test.npy")
    x_train = x_train / 255  # the notebook: float64, kept for training
    x_test = x_test / 255
    y_train, y_test = to_categorical(y_train, 10), to_categorical(y_test, 10)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "after_imports_mb": after_imports, "peak_mb": _peak_mb(),
            "x_dtype": str(x_train.dtype), "y_dtype": str(y_train.dtype),
            "x_train_mb": x_train.nbytes / 2**20}


def run_child(way: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    r = subprocess.run([sys.executable, "-m", "bench.bench_validate", "--child", way], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{way} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["ours", "notebook"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_ours() if args.child == "ours" else child_notebook()))
        return

    record = ensure_cache()
    print(f"dataset: {record.train_size:,} + {record.test_size:,} real CIFAR-10 images at {record.path}")
    runs = {way: [run_child(way) for _ in range(args.repeat)] for way in ("ours", "notebook")}
    res = {}
    for way, rs in runs.items():
        res[way] = {
            "seconds_median": statistics.median(r["seconds"] for r in rs),
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "peak_mb": max(r["peak_mb"] for r in rs),
            "after_imports_mb": statistics.median(r["after_imports_mb"] for r in rs),
        }
        res[way]["data_mb"] = res[way]["peak_mb"] - res[way]["after_imports_mb"]
        res[way]["last"] = rs[-1]
    o, n = res["ours"], res["notebook"]
    ratios = {"peak": o["peak_mb"] / n["peak_mb"], "data": o["data_mb"] / n["data_mb"]}
    print(f"\n{'way':<10}{'seconds (median)':>18}{'peak RSS MB':>14}{'after imports':>15}{'data MB':>10}")
    for way, r in res.items():
        print(f"{way:<10}{r['seconds_median']:>18.2f}{r['peak_mb']:>14.0f}{r['after_imports_mb']:>15.0f}"
              f"{r['data_mb']:>10.0f}")
    print(f"\nours / notebook: peak RSS {ratios['peak']:.2f}x, data memory {ratios['data']:.2f}x")
    print(f"ours validated {o['last']['checks_passed']}/{o['last']['checks']} checks; "
          f"train/test duplicates {o['last']['train_test_duplicates']}; channel mean "
          f"{[round(v, 4) for v in o['last']['channel_mean']]} std {[round(v, 4) for v in o['last']['channel_std']]}")
    print(f"notebook: x {n['last']['x_dtype']} ({n['last']['x_train_mb']:.0f} MB for train alone), "
          f"y {n['last']['y_dtype']}; it validates nothing")
    out = {"images": record.train_size + record.test_size, "source": "real CIFAR-10 JPEGs, decoded",
           "cpu": _cpu(), "date": time.strftime("%Y-%m-%d"), "repeat": args.repeat,
           "results": res, "ratios": ratios}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validate.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT / 'validate.json'}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
