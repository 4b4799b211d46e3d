"""Benchmark what an unchanged scheduled run pays to find out that nothing changed, on the full
60,000-image CIFAR-10 JPEG folder: the download stage's check (the folder hashed by content,
``tasks.download.fetching.hash_local``) and the decode stage's cache check (``cache_problems``:
the manifest and every array's sha256), beside two baselines measured in the same run:

- ``stat shortcut (before)``: what the fetch did until issue 16, (size, mtime, inode) of every
  file hashed into one signature; fast, and fooled by a rewrite that keeps size and mtime;
- ``find | sha256sum``: the plain shell way to hash every file of the folder.

    .venv/bin/python -m bench.bench_retrain                       # extracts the archive once
    .venv/bin/python -m bench.bench_retrain --repeat 5 --folder /path/to/cifar10-jpeg --runs 0

and, unless ``--runs 0``, the whole unchanged `cifar run` of a pipeline on that folder (after
one first run of it: 500/200-image subsets, 1 epoch), median of ``--runs``.

Each figure is the median of ``--repeat`` runs with a warm page cache (a rerun finds the folder
in memory when the machine has it to spare). Writes bench/out/retrain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ARCHIVE = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")


def _folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    dest = OUT / "cifar10-jpeg"
    if not (dest / ".complete").exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as tf:
            tf.extractall(dest, filter="data")
        (dest / ".complete").write_text("")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 and not (dest / "train").exists() else dest


def _timed(fn, repeat: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def stat_signature(folder: Path) -> str:
    """The stat shortcut the fetch used before: one hash of every file's (size, mtime, inode)."""
    from tasks.core.hashing import stable_hash, tree_files

    return stable_hash([(rel, [st.st_size, st.st_mtime_ns, st.st_ino])
                        for rel, p in tree_files(folder) for st in (p.lstat(),)])


def shell_sha256(folder: Path) -> str:
    cmd = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum"
    return subprocess.run(["bash", "-c", cmd], cwd=folder, capture_output=True, text=True, check=True).stdout


def whole_runs(folder: Path, repeat: int) -> dict:
    """`cifar run` of a pipeline on the whole folder (500/200-image subsets, 1 epoch, so its first
    run is short), run once, then ``repeat`` times unchanged, as a user types it (embedded
    Prefect API, interpreter start and exit included). Each rerun must say "nothing changed"."""
    work = OUT / "retrain-pipeline"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pipelines.yaml").write_text(json.dumps({
        "data_dir": "data", "artifacts_dir": "artifacts",
        "pipelines": {"folder": {"description": "bench: the 60,000-image folder, rerun unchanged",
                                 "dataset": {"format": "image-folder", "source": str(folder),
                                             "limit_train": 500, "limit_test": 200},
                                 "training": {"epochs": 1, "batch_size": 64}}}}))
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(work / "prefect-home"),
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [str(ROOT / ".venv" / "bin" / "cifar"), "run", "folder", "--config", str(work / "pipelines.yaml")]

    def once() -> str:
        res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        return res.stdout

    t0 = time.perf_counter()
    once()
    first = time.perf_counter() - t0
    median, times, out = _timed(once, repeat)
    if "nothing changed since run" not in out:
        raise SystemExit(f"the unchanged rerun did not say nothing changed:\n{out[-2000:]}")
    return {"median_s": round(median, 3), "runs_s": [round(t, 3) for t in times], "first_run_s": round(first, 1)}


def main(argv: list[str] | None = None) -> dict:
    from tasks.core.datacache import cache_problems
    from tasks.download.config import DatasetConfig
    from tasks.download.decode import decode_and_cache
    from tasks.download.fetching import fetch, hash_local

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", help="the extracted CIFAR-10 JPEG folder (default: extract the shared archive)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="unchanged `cifar run` reruns to time (0: none)")
    args = ap.parse_args(argv)

    folder = _folder(args.folder)
    cfg = DatasetConfig(format="image-folder", source=str(folder))
    data_dir = OUT / "retrain-data"
    archive = fetch(cfg, data_dir)  # warms the page cache too
    t0 = time.perf_counter()
    dataset = decode_and_cache(archive, cfg, data_dir)  # once: the cache an unchanged rerun checks
    built = time.perf_counter() - t0
    files = dataset.train_size + dataset.test_size

    rows = {}
    for name, fn in (("content hash (hash_local, now)", lambda: hash_local(folder, cfg).sha256),
                     ("decode cache check (cache_problems)", lambda: cache_problems(dataset.path)),
                     ("stat shortcut (before)", lambda: stat_signature(folder)),
                     ("find | sha256sum", lambda: shell_sha256(folder))):
        median, times, _ = _timed(fn, args.repeat)
        rows[name] = {"median_s": round(median, 3), "runs_s": [round(t, 3) for t in times]}

    if args.runs:
        rows["whole `cifar run`, nothing changed"] = whole_runs(folder, args.runs)

    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    result = {
        "folder": str(folder), "images": files, "bytes": size,
        "decode_once_s": round(built, 1), "repeat": args.repeat, "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "retrain.json").write_text(json.dumps(result, indent=2))
    print(f"{files:,} images, {size / 1e6:,.1f} MB in {folder} (decode once: {built:.1f} s)")
    print(f"{'check':<40} {'median':>8}   runs")
    for name, row in rows.items():
        print(f"{name:<40} {row['median_s']:>7.2f}s   {row['runs_s']}")
    return result


if __name__ == "__main__":
    main()
