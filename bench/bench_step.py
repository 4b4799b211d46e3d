"""The airbench train step with Keras's stock GELU and batch norm against the fused kernels of
``tasks.core.kernels.fused_kernels`` (the XLA GELU and TensorFlow's FusedBatchNormV3), in one
process, rounds alternating (stock, fused, stock, ...) so a load spike on the shared cores hits both.

    .venv/bin/python -m bench.bench_step [--batch 512] [--steps 16] [--rounds 3] [--precision auto]
    .venv/bin/python -m bench.bench_step --settings [--rounds 2]   # TensorFlow's thread settings
    .venv/bin/python -m bench.bench_step --input [--rounds 2]      # the input stream's share

Each round builds the `fast` model (widths 64/128/128; the project's builder, optimizer and loss),
compiles it without whole-model XLA as the CPU path does, traces the train function on 3 steps,
then times --steps steps on one fixed batch of random images (a callback stamps every step end;
the first two intervals are dropped). Result: bench/out/step.json with every round's median step
seconds and the ratio fused / stock of the medians (< 1: fused is faster).

``--settings``: the fused step (what the CPU path trains) under each of ``SETTINGS``, TensorFlow's
own environment switches for its thread pools and oneDNN, each timed in a fresh process (they are
read once, when TensorFlow starts), settings alternating round by round. Result:
bench/out/step-settings.json with every process's median step and each setting's median over the
rounds against the default's (< 1: faster than TensorFlow's defaults).

``--input``: the recipe's training stream alone (``tasks.train.inputs.recipe_dataset`` over the
50,000 real training images as uint8 in memory: permutation, alternating flips, 2-pixel
translation, scaling, one-hot; what the `fast` run feeds ``fit``), one epoch per round with no
model, wall and CPU seconds; beside it the fused step times the epoch's steps, so the stream's
share of an epoch's CPU is an upper bound on what a faster input path could save.
Result: bench/out/step-input.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "step.json"
SETTINGS = {  # name -> environment; each is read by TensorFlow once, at start-up
    "default": {},
    "inter-op pool 1 thread": {"TF_NUM_INTEROP_THREADS": "1"},
    "intra-op pool 1 thread": {"TF_NUM_INTRAOP_THREADS": "1"},
    "oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}


def time_steps(fused: bool, batch: int, steps: int) -> float:
    """Median seconds per train step of a fresh `fast` model, stock layers or fused kernels."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tasks.core.kernels import fused_kernels
    from tasks.train import recipe as recipes
    from tasks.train.airbench import build_airbench
    from tasks.train.config import RecipeConfig

    rc = RecipeConfig()
    x = np.random.default_rng(0).standard_normal((batch, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch) % 10, 10)
    model = build_airbench((32, 32, 3), 10, rc, whiten_images=x[:256])
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            stamps.append(time.perf_counter())

    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    with fused_kernels(model) if fused else nullcontext():
        model.compile(optimizer=recipes.make_optimizer(model, rc, batch, 1000), loss=recipes.make_loss(rc, True),
                      metrics=["accuracy"], jit_compile=False)
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Stamp()])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][2:]
    return statistics.median(gaps)


def compare_settings(args) -> int:
    """The fused step under each of SETTINGS, one fresh process per timing."""
    import subprocess

    from tasks.train.devices import cpu_has_bf16

    steps: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, env in SETTINGS.items():
            cmd = [sys.executable, "-m", "bench.bench_step", "--one", "--batch", str(args.batch),
                   "--steps", str(args.steps), "--precision", args.precision]
            proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            steps[name].append(json.loads(proc.stdout.strip().splitlines()[-1])["step_seconds"])
            print(f"round {r}: {name:<24} {steps[name][-1]:.3f} s/step", flush=True)
    medians = {k: statistics.median(v) for k, v in steps.items()}
    result = {"batch": args.batch, "steps": args.steps, "precision": args.precision, "settings": SETTINGS,
              "step_seconds": steps, "median_step_seconds": medians,
              "ratio_over_default": {k: round(v / medians["default"], 3) for k, v in medians.items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "bf16_cpu": cpu_has_bf16()},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = OUT.with_name("step-settings.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, ratio in result["ratio_over_default"].items():
        print(f"{name:<24} {medians[name]:.3f} s/step  {ratio:.3f}x the default")
    print(f"written: {out}")
    return 0


def time_input(args) -> int:
    """One epoch of the recipe's stream per round, no model; the fused step for comparison."""
    import resource

    from bench.make_archives import decoded_jpegs
    from tasks.train.inputs import recipe_dataset

    x, y, _, _ = decoded_jpegs()
    pixels = x.reshape(-1, 3) / 255.0  # standardised, as `fast` (prepare.standardize) feeds it
    mean, std = [float(v) for v in pixels.mean(0)], [float(v) for v in pixels.std(0)]
    del pixels
    stream = recipe_dataset(x, y, 10, args.batch, seed=42, epochs=1_000, mean=mean, std=std)
    steps = len(y) // args.batch

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    walls, cpus = [], []
    it = iter(stream)
    next(it)  # the pipeline built and its first batch made
    for r in range(args.rounds):
        t, c = time.perf_counter(), cpu()
        for _ in range(steps):
            next(it)
        walls.append(round(time.perf_counter() - t, 3))
        cpus.append(round(cpu() - c, 3))
        print(f"round {r}: one epoch of the stream ({steps} batches of {args.batch}): {walls[-1]:.2f} s "
              f"(CPU {cpus[-1]:.2f} s)", flush=True)
    set_precision(args.precision)
    step = time_steps(True, args.batch, args.steps)
    epoch = step * steps
    result = {"batch": args.batch, "steps_per_epoch": steps, "stream_epoch_seconds": walls,
              "stream_epoch_cpu_seconds": cpus, "fused_step_seconds": step,
              "epoch_of_steps_seconds": round(epoch, 2),
              "stream_cpu_share_of_epoch": round(statistics.median(cpus) / (epoch * (os.cpu_count() or 1)), 4),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = OUT.with_name("step-input.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"stream: {statistics.median(walls):.2f} s/epoch wall, {statistics.median(cpus):.2f} CPU-s; "
          f"the epoch's {steps} fused steps: {epoch:.1f} s ({step:.3f} s/step); the stream's CPU is "
          f"{result['stream_cpu_share_of_epoch']:.1%} of the epoch's {os.cpu_count()} cores. written: {out}")
    return 0


def set_precision(precision: str) -> str:
    import keras

    from tasks.train.devices import cpu_has_bf16

    if precision == "auto":
        precision = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto", help="auto: mixed_bfloat16 where the CPU has bf16, else float32")
    ap.add_argument("--settings", action="store_true", help="compare TensorFlow's thread/oneDNN settings")
    ap.add_argument("--input", action="store_true", help="time the recipe's input stream alone")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one fused timing, as JSON
    args = ap.parse_args(argv)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if args.settings:
        return compare_settings(args)
    if args.input:
        return time_input(args)
    if args.one:
        set_precision(args.precision)
        print(json.dumps({"step_seconds": time_steps(True, args.batch, args.steps)}))
        return 0
    from tasks.train.devices import cpu_has_bf16

    precision = set_precision(args.precision)
    rounds = {"stock": [], "fused": []}
    for r in range(args.rounds):
        for name in ("stock", "fused"):
            rounds[name].append(time_steps(name == "fused", args.batch, args.steps))
            print(f"round {r}: {name:<5} {rounds[name][-1]:.3f} s/step", flush=True)
    medians = {k: statistics.median(v) for k, v in rounds.items()}
    result = {"batch": args.batch, "steps": args.steps, "precision": precision, "rounds": rounds,
              "median_step_seconds": medians, "ratio_fused_over_stock": medians["fused"] / medians["stock"],
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "bf16_cpu": cpu_has_bf16()},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"stock {medians['stock']:.3f} s/step, fused {medians['fused']:.3f} s/step: "
          f"ratio {result['ratio_fused_over_stock']:.2f}; written: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
