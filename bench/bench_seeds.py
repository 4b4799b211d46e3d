"""Seed spread of a pipeline's final test accuracy: the same recipe trained with several seeds.

    .venv/bin/python -m bench.bench_seeds [--pipeline train-jpeg] [--seeds 42 43 44 45]
                                          [--notebook-seeds 43 44] [--epochs 20]

One 20-epoch ``train-jpeg`` run is a single draw: weight initialisation, dropout masks and the
shuffle order all follow the seed, and on CIFAR-10 with the notebook's recipe the final accuracy
moves by about a percentage point from seed to seed. This runs ``cifar run PIPELINE --set
training.seed=S`` once per seed, as a user types it, one after another (each uses both cores),
with artifacts in bench/out/seed-artifacts so the real registry is untouched. A seed whose model
is already trained (same dataset, config and code) is a cache hit and costs seconds.

``--notebook-seeds`` also trains the course notebook's own code path (bench.bench_memory's
NOTEBOOK: arrays in memory, ``x / 255``, ``to_categorical``, ``model.fit(shuffle=True)``, the same
model, optimizer and schedule, ``keras.utils.set_random_seed(S)``) for ``--epochs`` epochs on the
same images, so the two ways' spreads can be compared.

Results: bench/out/seeds.json (per seed: test accuracy, the run's recorded stage seconds, run
folder; the sweep's wall seconds; the sweep's own aggregate) and a printed
summary per way: mean, standard deviation, minimum and maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def cifar_run(pipeline: str, seed: int, artifacts: Path, env: dict[str, str],
              extra: list[str] | tuple[str, ...] = ()) -> tuple[Path, float]:
    """One ``cifar run`` as a user types it: its run folder (from the report path it prints last)
    and the command's wall seconds."""
    cmd = [sys.executable, "-m", "flows.cli", "run", pipeline, "--set", f"training.seed={seed}",
           "--set", f"artifacts_dir={artifacts}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    report = Path([ln for ln in proc.stdout.splitlines() if ln.strip()][-1].strip())
    if report.name != "report.html" or not report.is_file():
        raise SystemExit(f"{' '.join(cmd)}: expected the run's report path last, got {report}")
    return report.parent, wall


def cifar_sweep(pipeline: str, artifacts: Path, env: dict[str, str], args: list[str] | tuple[str, ...] = ()
                ) -> tuple[dict, float]:
    """One ``cifar sweep PIPELINE ARGS --json`` as a user types it: its JSON (points, children
    with their run folders) and the command's wall seconds. A child that did not complete stops
    the benchmark, naming it."""
    cmd = [sys.executable, "-m", "flows.cli", "sweep", pipeline, "--set", f"artifacts_dir={artifacts}",
           *args, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = None
    if out is None or out.get("failed"):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out, wall


def seed_row(child: dict) -> dict:
    """One seed's row from a sweep's child: its run folder's numbers."""
    run = Path(child["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "metadata.json").read_text())
    return {"seed": child["seed"], "test_accuracy": metrics["test_accuracy"],
            "validation_accuracy": child.get("validation_accuracy"),
            "stages_s": round(sum(s["seconds"] for s in meta["stages"].values()), 1),
            "trained_now": not meta["stages"]["train"]["cache_hit"],
            "train_seconds": meta["stages"]["train"]["seconds"],
            "run": str(run)}


def run_notebook(seed: int, epochs: int, env: dict[str, str]) -> dict:
    from bench.bench_memory import NOTEBOOK

    code = NOTEBOOK.format(root=str(ROOT), epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - t0
    last = ([ln for ln in proc.stdout.splitlines() if ln.startswith("val_accuracy ")] or [""])[-1].split()
    if proc.returncode != 0 or len(last) < 2:
        raise SystemExit(f"the notebook's code, seed {seed}, failed ({proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    fit = float(last[3]) if len(last) >= 4 else None  # model.fit's own seconds (no imports, no data load)
    return {"seed": seed, "test_accuracy": round(float(last[1]), 4), "epochs": epochs, "wall_s": round(wall, 1),
            "fit_s": fit, "fit_s_per_epoch": round(fit / epochs, 2) if fit else None}


def summarise(accuracies: list[float]) -> dict:
    return {"n": len(accuracies), "mean": round(statistics.fmean(accuracies), 4),
            "stdev": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else None,
            "min": min(accuracies), "max": max(accuracies)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="train-jpeg")
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44, 45])
    ap.add_argument("--notebook-seeds", type=int, nargs="*", default=[],
                    help="also train the notebook's own code with these seeds (about 15 min each)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the notebook's code")
    ap.add_argument("--out", default=str(OUT / "seeds.json"))
    args = ap.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_API_URL": "",
           "PREFECT_HOME": str(OUT / "prefect-home")}
    artifacts = OUT / "seed-artifacts"
    result: dict = {"pipeline": args.pipeline, "runs": [], "notebook_runs": [],
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        for key, runs in (("summary", result["runs"]), ("notebook_summary", result["notebook_runs"])):
            if runs:
                result[key] = summarise([r["test_accuracy"] for r in runs])
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write_text(json.dumps(result, indent=2) + "\n")  # after each step: a long benchmark can be cut

    if args.seeds:  # every seed in one `cifar sweep` (its children one after another, cached)
        sweep, wall = cifar_sweep(args.pipeline, artifacts, env, ["--seed", ",".join(map(str, args.seeds))])
        result["sweep_wall_s"], result["sweep"] = round(wall, 1), sweep["points"]
        for child in sweep["children"]:
            row = seed_row(child)
            result["runs"].append(row)
            print(f"pipeline  seed {row['seed']:>4}: test accuracy {row['test_accuracy']:.4f}  "
                  f"(stages {row['stages_s']:.0f} s{'' if row['trained_now'] else ', cached'})", flush=True)
        save()
    for seed in args.notebook_seeds:
        row = run_notebook(seed, args.epochs, env)
        result["notebook_runs"].append(row)
        print(f"notebook  seed {seed:>4}: test accuracy {row['test_accuracy']:.4f}  ({row['wall_s']:.0f} s)",
              flush=True)
        save()
    for way, key in (("pipeline", "summary"), ("notebook", "notebook_summary")):
        if key in result:
            s = result[key]
            print(f"{way}: {s['n']} seeds, mean {s['mean']:.4f}, stdev {s['stdev']}, "
                  f"min {s['min']:.4f}, max {s['max']:.4f}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
