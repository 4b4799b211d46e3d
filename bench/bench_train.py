"""Per-epoch time of seed_cnn: the training stage's tf.data input vs the notebook's model.fit on
NumPy float arrays. Same images, model, optimizer, batch size and machine, in ONE process.

    .venv/bin/python -m bench.bench_train [--train 10000] [--test 2000] [--rounds 2] [--bf16] [--stage]

On a GPU machine the pipeline runs with the stage's GPU defaults (mixed_float16 + XLA) and is
also timed with both off (``pipeline_float32_no_xla``).

Images: the real CIFAR-10 JPEGs (/work/shared/datasets/cifar10-jpeg.tar.gz), decoded once by
bench.make_archives.decoded_jpegs (cached under bench/out/, git-ignored); a subset is used (the
first --train train and --test test images of the seed-0 shuffled splits) because the machine's
2 cores are shared with other work: an epoch here is --train images, not 50,000.

- notebook: ``x.astype("float32") / 255`` and ``keras.utils.to_categorical`` in memory, then
  ``model.fit(x, y, batch_size=32, shuffle=True, validation_data=(x_test, y_test))``.
- pipeline: what the stage runs: the uint8 arrays written as a dataset cache, memory-mapped by
  tasks.core.datacache.load_dataset, fed through tasks.train.inputs.make_dataset (seeded shuffle,
  batch, scale + one-hot in tf.data, prefetch), with the stage's runtime resolution (float32, no
  XLA on CPU).

- stage (``--stage``): the train stage itself, ``tasks.train.run.run_training`` as a ``cifar run``
  of the notebook's recipe calls it (its slot, epoch history, epoch backups, log line,
  TensorBoard logs, TerminateOnNaN, the model folder's commit), for two epochs from scratch with
  ``validation: test``; timed is its second epoch, from that epoch's start to the end of training
  (every callback's end-of-epoch work included), wall and CPU. What a user's run adds beside the
  pipeline's bare ``fit``, measured.

Each variant first traces its train/validation functions on a few batches (warm-up), then one
full epoch (with validation) is timed; variants alternate (A B A B ...) so a load spike on the
shared cores hits both. Wall and CPU seconds (this process, all threads) are both recorded: on
shared cores the CPU time is the steadier figure. Result: bench/out/train.json with every epoch
time, medians, minima and the ratios pipeline / notebook (<= 1.0: the pipeline is not slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def subset(n_train: int, n_test: int):
    from bench.make_archives import decoded_jpegs

    x_train, y_train, x_test, y_test = decoded_jpegs()
    return x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]


def ensure_cache(arrays, name: str):
    from tasks.core.datacache import cache_problems, record_from_manifest, write_dataset_cache
    from tasks.core.files import read_json

    path = OUT / "train-data" / "datasets" / name
    if not cache_problems(path, verify_checksums=False):
        return record_from_manifest(path, read_json(path / "manifest.json"))
    from bench.make_archives import CLASSES

    return write_dataset_cache(path, *arrays, CLASSES, {"source": "bench subset of cifar10-jpeg"})


def _cpu() -> float:
    """CPU seconds of this process, all threads: less sensitive than wall time to other jobs
    on shared cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bf16", action="store_true", help="also time the pipeline in mixed_bfloat16")
    ap.add_argument("--stage", action="store_true",
                    help="also time the train stage itself (run_training, all its callbacks)")
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf

    from tasks.core.datacache import load_dataset
    from tasks.train.config import TrainingConfig
    from tasks.train.devices import resolve_runtime
    from tasks.train.fit import make_optimizer
    from tasks.train.inputs import make_dataset
    from tasks.train.models import build_model

    t0 = time.perf_counter()
    arrays = subset(args.train, args.test)
    record = ensure_cache(arrays, f"cifar10-jpeg-{args.train}-{args.test}")
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {record.train_size} train, "
          f"{record.test_size} test images {record.input_shape}", flush=True)

    cfg = TrainingConfig(batch_size=args.batch)
    runtime = resolve_runtime(cfg, len(tf.config.list_physical_devices("GPU")))

    # notebook: float32 copies and one-hot labels in memory
    x_train, y_train, x_test, y_test = arrays
    nb_x, nb_xt = x_train.astype("float32") / 255, x_test.astype("float32") / 255
    nb_y, nb_yt = keras.utils.to_categorical(y_train, 10), keras.utils.to_categorical(y_test, 10)

    # pipeline: the stage's tf.data over the memory-mapped uint8 cache
    data = load_dataset(record.path)
    train_ds = make_dataset(data.x_train, data.y_train, 10, args.batch, shuffle=True, seed=cfg.seed)
    val_ds = make_dataset(data.x_test, data.y_test, 10, args.batch)
    warm_n = 20 * args.batch

    def new_model(precision="float32", jit=False):
        keras.mixed_precision.set_global_policy(precision)
        keras.utils.set_random_seed(cfg.seed)
        model = build_model("seed_cnn", record.input_shape, record.num_classes)
        model.compile(optimizer=make_optimizer(cfg.optimizer), loss="categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=jit)
        return model

    def notebook():
        model = new_model()
        model.fit(nb_x[:warm_n], nb_y[:warm_n], batch_size=args.batch, epochs=1, verbose=0,
                  validation_data=(nb_xt[:warm_n], nb_yt[:warm_n]))
        t, c = time.perf_counter(), _cpu()
        h = model.fit(nb_x, nb_y, batch_size=args.batch, epochs=1, shuffle=True, verbose=0,
                      validation_data=(nb_xt, nb_yt))
        return time.perf_counter() - t, _cpu() - c, h.history

    def pipeline(precision=runtime.precision, jit=runtime.xla):
        model = new_model(precision, jit)
        model.fit(train_ds.take(20), epochs=1, verbose=0, validation_data=val_ds.take(20), shuffle=False)
        t, c = time.perf_counter(), _cpu()
        h = model.fit(train_ds, epochs=1, verbose=0, validation_data=val_ds, shuffle=False)
        return time.perf_counter() - t, _cpu() - c, h.history

    class EpochClock(keras.callbacks.Callback):
        """Wall and CPU seconds from the last epoch's start to the end of training: every
        callback's work at that epoch's end is inside it, whatever their order."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t, self.c = time.perf_counter(), _cpu()

        def on_train_end(self, logs=None):
            self.secs, self.cpu_secs = time.perf_counter() - self.t, _cpu() - self.c

    def stage():
        from tasks.core.holdout import TEST, Holdout
        from tasks.train.model_folder import model_dir
        from tasks.train.run import run_training

        scratch = Path(tempfile.mkdtemp(prefix="stage-", dir=OUT))
        os.environ["CIFAR_SLOT_DIR"] = str(scratch / "slots")  # never waits for another training here
        clock = EpochClock()
        try:
            done = run_training(record, None, "seed_cnn", dataclasses.replace(cfg, epochs=2),
                                SimpleNamespace(standardize=False), scratch, force=True,
                                extra_callbacks=(clock,), holdout=Holdout(TEST))
            final = json.loads((model_dir(scratch, done.key) / "train.json").read_text())["final"]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return clock.secs, clock.cpu_secs, {"val_accuracy": [final["val_accuracy"]]}

    variants = {"notebook": notebook, "pipeline": pipeline}
    if args.stage:
        variants["stage"] = stage
    if args.bf16:
        variants["pipeline_bf16"] = lambda: pipeline("mixed_bfloat16", False)
    if runtime.gpus:  # the stage's GPU default (mixed_float16 + XLA) vs both switched off
        variants["pipeline_float32_no_xla"] = lambda: pipeline("float32", False)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    accs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            secs, cpu_secs, hist = fn()
            times[name].append(round(secs, 2))
            cpu[name].append(round(cpu_secs, 2))
            accs[name].append(round(float(hist["val_accuracy"][-1]), 4))
            print(f"round {r + 1}: {name:23s} {secs:6.1f} s/epoch (CPU {cpu_secs:6.1f} s)  val_accuracy "
                  f"{hist['val_accuracy'][-1]:.3f}", flush=True)
    keras.mixed_precision.set_global_policy("float32")

    # The input pipeline alone: one pass over the train and validation datasets, no model.
    t = time.perf_counter()
    for _ in range(2):
        for _batch in train_ds:
            pass
        for _batch in val_ds:
            pass
    input_only = round((time.perf_counter() - t) / 2, 3)
    print(f"input pipeline alone: {input_only:.2f} s/epoch", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "what": "seed_cnn, one epoch (train + validation) per timing, same process, variants alternating",
        "images": {"train": record.train_size, "test": record.test_size, "source": "cifar10-jpeg.tar.gz subset"},
        "batch_size": args.batch,
        "pipeline_runtime": {"precision": runtime.precision, "xla": runtime.xla},
        "seconds_per_epoch": times,
        "median_seconds_per_epoch": med,
        "min_seconds_per_epoch": best,
        "cpu_seconds_per_epoch": cpu,
        "median_cpu_seconds_per_epoch": cpu_med,
        "val_accuracy_after_one_epoch": accs,
        "ratio_pipeline_over_notebook": round(med["pipeline"] / med["notebook"], 3),
        "ratio_min_pipeline_over_notebook": round(best["pipeline"] / best["notebook"], 3),
        "ratio_cpu_pipeline_over_notebook": round(cpu_med["pipeline"] / cpu_med["notebook"], 3),
        "pipeline_input_only_seconds_per_epoch": input_only,
        "float_copy_bytes_notebook": int(nb_x.nbytes + nb_xt.nbytes + nb_y.nbytes + nb_yt.nbytes),
        "float_copy_bytes_pipeline": 0,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "gpus": runtime.gpus, "note": "2 cores shared with other engineers' jobs"},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in med:
        if name not in ("notebook", "pipeline"):
            result[f"ratio_{name}_over_notebook"] = round(med[name] / med["notebook"], 3)
            result[f"ratio_cpu_{name}_over_notebook"] = round(cpu_med[name] / cpu_med["notebook"], 3)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "ratio" in k or k.startswith(("median", "min"))}))
    print(f"wrote {OUT / 'train.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
