"""The airbench train step with Keras's stock GELU and batch norm against the fused kernels of
``tasks.core.kernels.fused_kernels`` (the XLA GELU and TensorFlow's FusedBatchNormV3), in one
process, rounds alternating (stock, fused, stock, ...) so a load spike on the shared cores hits both.

    .venv/bin/python -m bench.bench_step [--batch 512] [--steps 16] [--rounds 3] [--precision auto]

Each round builds the `fast` model (widths 64/128/128; the project's builder, optimizer and loss),
compiles it without whole-model XLA as the CPU path does, traces the train function on 3 steps,
then times --steps steps on one fixed batch of random images (a callback stamps every step end;
the first two intervals are dropped). Result: bench/out/step.json with every round's median step
seconds and the ratio fused / stock of the medians (< 1: fused is faster).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto", help="auto: mixed_bfloat16 where the CPU has bf16, else float32")
    args = ap.parse_args(argv)
    import keras

    from tasks.train.devices import cpu_has_bf16

    precision = args.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(precision)
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"stock {medians['stock']:.3f} s/step, fused {medians['fused']:.3f} s/step: "
          f"ratio {result['ratio_fused_over_stock']:.2f}; written: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
