"""Peak memory of training on full CIFAR-10: the pipeline vs the notebook's way, same data.

    .venv/bin/python -m bench.bench_memory [--epochs 1] [--pipeline train-jpeg]

Each way runs in its own fresh process and its peak RSS (ru_maxrss of that child) is read by
this parent. Both train the notebook's CNN at batch 32 on the real 50,000 + 10,000 images for
``--epochs`` epochs (memory peaks in the first epoch; more epochs only take longer):

- notebook: the course notebook's code path -- the arrays in memory, ``x / 255`` (float64),
  ``keras.utils.to_categorical``, ``model.fit(..., validation_data=(x_test, y_test))``;
- pipeline: ``cifar run PIPELINE --set training.epochs=N`` as a user types it (embedded Prefect
  API, every stage: cached data check, validation, training, save, report), with artifacts in
  bench/out/memory-artifacts so the real registry is untouched. The dataset cache is the one in
  the pipeline's data_dir (decode it first with `cifar data PIPELINE`).

Results: bench/out/memory.json and a printed table with the ratio pipeline / notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

NOTEBOOK = r"""
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
import keras
from keras import layers
from bench.make_archives import decoded_jpegs

x_train, y_train, x_test, y_test = decoded_jpegs()
# the notebook, as written in 2019 (Keras 2 names mapped to Keras 3)
x_train = x_train / 255
x_test = x_test / 255
y_train = keras.utils.to_categorical(y_train, 10)
y_test = keras.utils.to_categorical(y_test, 10)
keras.utils.set_random_seed({seed})
model = keras.Sequential([
    keras.Input(shape=x_train.shape[1:]),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(2), layers.Dropout(0.25),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(2), layers.Dropout(0.25),
    layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dropout(0.5),
    layers.Dense(10, activation="softmax"),
])
opt = keras.optimizers.RMSprop(keras.optimizers.schedules.InverseTimeDecay(1e-4, 1, 1e-6))
model.compile(loss="categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
t0 = time.perf_counter()
h = model.fit(x_train, y_train, batch_size=32, epochs={epochs}, validation_data=(x_test, y_test),
              shuffle=True, verbose=0)
print("val_accuracy", h.history["val_accuracy"][-1], "seconds", round(time.perf_counter() - t0, 1))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all children waited for so far, so each
    # measurement runs from its own short-lived middle process that reports its only child.
    code = (
        "import json, resource, subprocess, sys, time, os;"
        "t=time.perf_counter();"
        f"p=subprocess.run({cmd!r}, cwd={str(ROOT)!r}, capture_output=True, text=True, env={{**os.environ, **{env or {}!r}}});"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps({'rc': p.returncode, 'peak_mb': r.ru_maxrss/1024, 'wall_s': time.perf_counter()-t,"
        " 'tail': ([l for l in p.stdout.splitlines() if l.strip()] or [''])[-1][:300],"
        " 'out': (p.stdout+p.stderr)[-3000:]}))"
    )
    res = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res['rc']}):\n{res['out']}")
    res.pop("out")
    res["peak_mb"], res["wall_s"] = round(res["peak_mb"], 1), round(res["wall_s"], 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pipeline", default="train-jpeg")
    ap.add_argument("--seed", type=int, default=42, help="the notebook way's seed (the pipeline's is its own)")
    ap.add_argument("--notebook-only", action="store_true",
                    help="only the notebook's way (e.g. --epochs 20 for its final accuracy)")
    ap.add_argument("--out", default=str(OUT / "memory.json"))
    args = ap.parse_args(argv)
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_API_URL": "",
           "PREFECT_HOME": str(OUT / "prefect-home")}
    result: dict = {
        "what": f"peak RSS, notebook's CNN, batch 32, {args.epochs} epoch(s), full CIFAR-10 (real JPEG images)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": os.getloadavg()},
    }
    result["notebook"] = measure(
        [sys.executable, "-c", NOTEBOOK.format(root=str(ROOT), epochs=args.epochs, seed=args.seed)], env)
    ways = ["notebook"]
    if not args.notebook_only:
        result["pipeline"] = measure([sys.executable, "-m", "flows.cli", "run", args.pipeline,
                                      "--set", f"training.epochs={args.epochs}",
                                      "--set", f"artifacts_dir={OUT / 'memory-artifacts'}"], env)
        result["ratio_peak_pipeline_over_notebook"] = round(
            result["pipeline"]["peak_mb"] / result["notebook"]["peak_mb"], 3)
        ways.append("pipeline")
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    OUT.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'way':<10}{'peak RSS':>12}{'wall':>10}  last line")
    for name in ways:
        r = result[name]
        print(f"{name:<10}{r['peak_mb']:>9.0f} MB{r['wall_s']:>9.0f} s  {r['tail']}")
    if "ratio_peak_pipeline_over_notebook" in result:
        print(f"ratio pipeline / notebook: {result['ratio_peak_pipeline_over_notebook']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
