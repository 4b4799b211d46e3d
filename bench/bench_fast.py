"""The fast recipe (issue 13) against the notebook's, in one run on one machine.

    .venv/bin/python -m bench.bench_fast [--seeds 42 43 44] [--notebook-seeds 42 43 44] [--plot]
                                         [--pipeline fast-budget] [--own-seeds 42] [--own-epochs 20]
    .venv/bin/python -m bench.bench_fast --ablate [--seed 42] [--pieces 1 2 3]
    (either with --set KEY=VALUE for every `fast` run, e.g. --set training.epochs=8)

Every run is ``cifar run PIPELINE --set training.seed=S --set artifacts_dir=bench/out/fast-artifacts``
as a user types it (pipelines ``fast`` and ``train-jpeg`` of pipelines.yaml, the real CIFAR-10
JPEGs, decoded once into the project's dataset cache under data/ and reused), one after another,
so each has both cores. A run whose model is already trained (same data, config and code) is a
cache hit: its recorded times are reused, never re-measured.

Per run, from its run folder: the training time (train.json's epoch seconds, what ``fit`` spent;
and the whole train stage: model build, whitening, tracing, commit), test accuracy with the
recipe's test-time augmentation (metrics.json ``test_accuracy``) and without it
(``tta.accuracy.off``), precision and devices. For ``fast`` the 6-view evaluation is also timed
here, by scoring the run's model.keras again in this process, which must reproduce the stored
accuracy exactly. The notebook's evaluation (one view) is timed the same way.

``--own-seeds``: first, the notebook's own code (``bench.bench_memory.NOTEBOOK``: ``model.fit`` on
in-memory float arrays, batch 32) for ``--own-epochs`` epochs per seed, its ``fit`` seconds per
epoch recorded; with them the recipe's mean training + evaluation seconds over the notebook's own
20 epochs (``ratio_fast_over_own_20_epochs``; per-epoch seconds x 20 when fewer epochs ran).

``--ablate``: one ``cifar sweep fast --seed S --ablate training.recipe.X=... ...``: the full recipe
and ``fast`` once per piece switched off (one seed), children one after another, none promoted;
the TTA rows come from the full run's metrics (every level is scored in one pass).
``--plot``: docs/fast_vs_notebook.png, test accuracy against wall seconds for every run.

Results: bench/out/fast.json (fast-ablation.json with --ablate; written after each run, so a
long sweep can be cut) and a table:
mean +- standard deviation (n-1) per recipe.
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
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.train.devices import cpu_has_bf16  # noqa: E402  (no TensorFlow import)

OUT = ROOT / "bench" / "out"
PLOT = ROOT / "docs" / "fast_vs_notebook.png"
FAST, NOTEBOOK = "fast", "train-jpeg"

# (row name, --set overrides): each piece of the recipe switched off in turn.
ABLATIONS = [
    ("full recipe", {}),
    ("no whitening (trainable 2x2 stem)", {"training.recipe.whiten": False}),
    ("no dirac init", {"training.recipe.dirac": False}),
    ("no 64x BN-bias rate", {"training.recipe.bias_rate": 1.0}),
    ("no lookahead", {"training.recipe.lookahead": False}),
    ("random flips, not alternating", {"training.recipe.flip": "random"}),
    ("no translation", {"training.recipe.translate": 0}),
    ("no label smoothing", {"training.recipe.label_smoothing": 0.0}),
    ("no weight decay", {"training.recipe.weight_decay": 0.0}),
    ("constant learning rate", {"training.recipe.schedule": False}),
    ("stem bias trains throughout", {"training.recipe.whiten_bias_epochs": None}),
    ("float32 (no bf16)", {"training.mixed_precision": "off"}),
    ("batch 1,024, airbench's (half the steps; not a removal)", {"training.batch_size": 1024}),
    ("no flips", {"training.recipe.flip": "off"}),  # last: --pieces numbers of the rows above stay
]


def _set_args(sets: dict) -> list[str]:
    out = []
    for key, value in sets.items():
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out


def run_pipeline(pipeline: str, seed: int, artifacts: Path, env: dict, sets: dict | None = None) -> dict:
    """One ``cifar run``; what its run folder says about time and accuracy."""
    from bench.bench_seeds import cifar_run

    started = datetime.now(timezone.utc)
    run, wall = cifar_run(pipeline, seed, artifacts, env, _set_args(sets or {}))
    return run_row(run, pipeline, seed, sets, started, wall)


def run_row(run: Path, pipeline: str, seed: int, sets: dict | None, started: datetime, wall: float | None) -> dict:
    """What a run folder says about time and accuracy."""
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "metadata.json").read_text())
    history = json.loads((run / "history.json").read_text())["epochs"]
    training = meta["training"]
    tta = metrics.get("tta") or {}
    return {
        "pipeline": pipeline, "seed": seed, "sets": sets or {},
        "test_accuracy": metrics["test_accuracy"],
        "plain_accuracy": (tta.get("accuracy") or {}).get("off", metrics["test_accuracy"]),
        "tta_accuracy": tta.get("accuracy"),
        "train_seconds": training["seconds"],  # the epochs' own seconds (fit)
        "train_stage_seconds": meta["stages"]["train"]["seconds"],
        "save_stage_seconds": meta["stages"]["save"]["seconds"],
        # a run folder older than this command: the whole run was reused (its times are the original's)
        "trained_now": datetime.fromisoformat(meta["created_at"]) >= started,
        "command_wall_s": None if wall is None else round(wall, 1),
        "epochs": training["epochs"], "precision": training.get("precision"), "devices": training.get("devices"),
        "curve": [[h.get("seconds"), h.get("val_accuracy")] for h in history],
        "run": str(run),
    }


def run_ablation(rows: list[tuple[str, dict]], seed: int, artifacts: Path, env: dict, base: dict
                 ) -> list[tuple[str, dict]]:
    """Every row of ``rows`` (the first the full recipe) in one ``cifar sweep fast --seed S
    --ablate KEY=V ...``: the base point plus one point per piece switched off (every row of ABLATIONS
    changes one key). Returns (name, row) per
    row, from each child's run folder."""
    from bench.bench_seeds import cifar_sweep

    args = ["--seed", str(seed), *_set_args(base)]
    for name, sets in rows[1:]:
        (key, value), = sets.items()
        args += ["--ablate", f"{key}={json.dumps(value)}"]
    started = datetime.now(timezone.utc)
    sweep, wall = cifar_sweep(FAST, artifacts, env, args)
    points = sweep["points"]
    by_point = {c["point"]: c for c in sweep["children"]}
    out = []
    for name, sets in rows:
        i = next(k for k, p in enumerate(points) if p["overrides"] == sets)  # the base point is {}
        row = run_row(Path(by_point[i]["run_dir"]), FAST, seed, {**base, **sets}, started, None)
        row["sweep_wall_s"] = round(wall, 1)
        out.append((name, row))
    return out


def time_evaluation(run: str) -> dict:
    """Score the run's model.keras on the test split again, as the save stage does (its TTA
    level): the seconds it takes, and whether it reproduces the stored accuracy."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
import keras, numpy as np
from pathlib import Path
from tasks.core.datacache import load_dataset
from tasks.store.evaluation import score_test_split, tta_of
run = Path({run!r}); meta = json.loads((run / "metadata.json").read_text())
train = meta["training"]; data = load_dataset(meta["dataset"]["path"])
model = keras.models.load_model(run / "model.keras", compile=False)
y = np.asarray(data.y_test, np.int64)
t = time.perf_counter()
probs, metrics = score_test_split(model, data.x_test, y, list(data.classes), train.get("preprocess"), tta_of(train))
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t, "test_accuracy": metrics["test_accuracy"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"re-scoring {run} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    got = json.loads(line[0].removeprefix("RESULT "))
    stored = json.loads((Path(run) / "metrics.json").read_text())["test_accuracy"]
    return {"eval_seconds": round(got["seconds"], 1), "eval_reproduced": got["test_accuracy"] == stored}


def spread(values: list[float]) -> dict:
    return {"n": len(values), "mean": round(statistics.fmean(values), 4),
            "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in ("test_accuracy", "plain_accuracy", "train_seconds", "eval_seconds"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[key] = spread(vals)
    if all(r.get("eval_seconds") is not None for r in rows) and rows:
        out["train_plus_eval_seconds"] = spread([r["train_seconds"] + r["eval_seconds"] for r in rows])
    return out


def _pm(s: dict | None, fmt: str) -> str:
    if not s:
        return "—"
    return f"{s['mean']:{fmt}}" + (f" ± {s['stdev']:{fmt}}" if s.get("stdev") is not None else "")


def table(result: dict) -> str:
    lines = [f"{'recipe':<12} {'n':>2}  {'test acc (TTA)':<18} {'plain':<18} {'train s':<14} "
             f"{'eval s':<12} {'train+eval s':<14}"]
    for name, key in ((FAST, "fast_summary"), (NOTEBOOK, "notebook_summary")):
        s = result.get(key)
        if s:
            lines.append(f"{name:<12} {s['test_accuracy']['n']:>2}  {_pm(s.get('test_accuracy'), '.4f'):<18} "
                         f"{_pm(s.get('plain_accuracy'), '.4f'):<18} {_pm(s.get('train_seconds'), '.0f'):<14} "
                         f"{_pm(s.get('eval_seconds'), '.1f'):<12} {_pm(s.get('train_plus_eval_seconds'), '.0f'):<14}")
    for row in result.get("ablation", []):
        lines.append(f"  {row['name']:<36} test {row['test_accuracy']:.4f}  plain {row['plain_accuracy']:.4f}  "
                     f"train {row['train_seconds']:.0f} s")
    return "\n".join(lines)


def ablation_rows(full: dict, trained: list[tuple[str, dict]]) -> list[dict]:
    rows = [{"name": name, "test_accuracy": r["test_accuracy"], "plain_accuracy": r["plain_accuracy"],
             "train_seconds": r["train_seconds"], "delta_pp": round((r["test_accuracy"] - full["test_accuracy"]) * 100, 2)}
            for name, r in trained]
    for level, label in (("mirror", "TTA: image + mirror only"), ("off", "no TTA")):
        acc = (full.get("tta_accuracy") or {}).get(level)
        if acc is not None:
            rows.append({"name": label, "test_accuracy": acc, "plain_accuracy": full["plain_accuracy"],
                         "train_seconds": full["train_seconds"],
                         "delta_pp": round((acc - full["test_accuracy"]) * 100, 2)})
    return rows


def plot(result: dict, path: Path) -> Path:
    """Each benchmark run's validation accuracy against cumulative wall seconds, its final test
    accuracy a star (after the test-split evaluation, with TTA for fast)."""
    from matplotlib.ticker import PercentFormatter

    from tasks.core.files import atomic_write_bytes
    from tasks.report.index_plots import accuracy_limits
    from tasks.report.plots import _figure, _png

    fig = _figure(10, 4.0)
    ax = fig.subplots()
    values = []
    for r in result["runs"]:
        t, pts = 0.0, []
        for seconds, acc in r["curve"]:
            t += seconds or 0.0
            pts.append((t, acc))
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1.4,
                        label=f"{r['pipeline']} seed {r['seed']}")
        final = (t + (r.get("eval_seconds") or 0.0), r["test_accuracy"])
        ax.plot([final[0]], [final[1]], "*", ms=12, color=line.get_color())
        values += [p[1] for p in pts] + [final[1]]
    ax.set_title(f"fast vs the notebook's recipe ({os.cpu_count()} CPUs; stars: final test accuracy)")
    ax.set_xlabel("wall seconds of training (stars: after the test-split evaluation, with TTA for fast)")
    ax.set_xlim(left=0)
    ax.set_ylim(*accuracy_limits(values))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return atomic_write_bytes(path, _png(fig))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44], help="seeds of `fast`")
    ap.add_argument("--notebook-seeds", type=int, nargs="*", default=None,
                    help="seeds of `train-jpeg` (default: the same as --seeds; none: --notebook-seeds)")
    ap.add_argument("--ablate", action="store_true", help="one `fast` run per piece switched off")
    ap.add_argument("--seed", type=int, default=42, help="the ablation's seed")
    ap.add_argument("--pieces", type=int, nargs="*", default=None, metavar="N",
                    help="with --ablate: only these rows of ABLATIONS (0 is the full recipe, always run)")
    ap.add_argument("--plot", action="store_true", help=f"write {PLOT.relative_to(ROOT)}")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every `fast` run, as `cifar run --set` takes it "
                         "(e.g. training.epochs=8 or training.batch_size=512); repeatable")
    ap.add_argument("--out", default=None, help="default: bench/out/fast.json, with --ablate fast-ablation.json")
    ap.add_argument("--pipeline", default=FAST, help="the recipe's pipeline (e.g. fast-budget)")
    ap.add_argument("--own-seeds", type=int, nargs="*", default=[],
                    help="also train the notebook's own code (model.fit on in-memory arrays) with these seeds")
    ap.add_argument("--own-epochs", type=int, default=20, help="epochs of the notebook's own code")
    args = ap.parse_args(argv)
    import yaml

    fast_sets = {}
    for item in args.sets:
        key, sep, raw = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        fast_sets[key.strip()] = yaml.safe_load(raw)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_API_URL": "", "PREFECT_HOME": str(OUT / "prefect-home")}
    artifacts = OUT / "fast-artifacts"
    out = Path(args.out or OUT / ("fast-ablation.json" if args.ablate else "fast.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"runs": [], "fast_sets": fast_sets, "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "bf16_cpu": cpu_has_bf16()}}

    def save():
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write_text(json.dumps(result, indent=2) + "\n")

    bad = [i for i in args.pieces or [] if not 0 <= i < len(ABLATIONS)]
    if bad:
        ap.error(f"--pieces {bad}: rows are 0..{len(ABLATIONS) - 1} of ABLATIONS")
    if args.ablate:  # one `cifar sweep fast --ablate ...`: its children one after another, cached
        rows = ABLATIONS if args.pieces is None else [ABLATIONS[0]] + [
            ABLATIONS[i] for i in args.pieces if i > 0]
        trained = run_ablation(rows, args.seed, artifacts, env, fast_sets)
        for name, row in trained:
            print(f"{name:<36} test {row['test_accuracy']:.4f} plain {row['plain_accuracy']:.4f} "
                  f"train {row['train_seconds']:.0f} s", flush=True)
        result["ablation"] = ablation_rows(trained[0][1], trained)
        save()
    else:
        from bench.bench_seeds import run_notebook

        for seed in args.own_seeds:  # first: the baseline the recipe's time is held against
            row = run_notebook(seed, args.own_epochs, env)
            result.setdefault("own_runs", []).append(row)
            fit = [r["fit_s_per_epoch"] for r in result["own_runs"]]
            result["own_summary"] = {"test_accuracy": spread([r["test_accuracy"] for r in result["own_runs"]]),
                                     "fit_s_per_epoch": spread(fit),
                                     "fit_s_20_epochs": round(statistics.fmean(fit) * 20, 1)}
            print(f"notebook's own code seed {seed}: test {row['test_accuracy']:.4f}, {row['epochs']} epochs, "
                  f"fit {row['fit_s']:.0f} s ({row['fit_s_per_epoch']:.1f} s/epoch)", flush=True)
            save()
        notebook_seeds = args.seeds if args.notebook_seeds is None else args.notebook_seeds
        jobs = [(args.pipeline, s) for s in args.seeds] + [(NOTEBOOK, s) for s in notebook_seeds]
        for pipeline, seed in jobs:
            row = run_pipeline(pipeline, seed, artifacts, env, fast_sets if pipeline == args.pipeline else None)
            row.update(time_evaluation(row["run"]))
            result["runs"].append(row)
            print(f"{pipeline:<11} seed {seed}: test {row['test_accuracy']:.4f} (plain {row['plain_accuracy']:.4f}), "
                  f"train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.1f} s, "
                  f"{row['precision']}{'' if row['trained_now'] else ' (cached)'}", flush=True)
            for name, key in ((args.pipeline, "fast_summary"), (NOTEBOOK, "notebook_summary")):
                rows = [r for r in result["runs"] if r["pipeline"] == name]
                if rows:
                    result[key] = summarise(rows)
            own, mine = result.get("own_summary"), (result.get("fast_summary") or {}).get("train_plus_eval_seconds")
            if own and mine:  # the recipe's training + evaluation against the notebook's own 20 epochs
                result["ratio_fast_over_own_20_epochs"] = round(mine["mean"] / own["fit_s_20_epochs"], 3)
            save()
        if args.plot and result["runs"]:
            print(f"plot: {plot(result, PLOT)}")
    print(table(result))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
