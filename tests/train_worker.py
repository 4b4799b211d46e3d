"""Subprocess entry point for the training tests: one real `run_training` in a fresh process.

    python tests/train_worker.py DATASET_DIR DATA_DIR [--epochs N] [--batch B] [--strategy S]
        [--logical-cpus K] [--pause-at-epoch E] [--force]

Prints the stage's log lines to stdout (flushed, so a parent can wait for markers) and, at the
end, one line ``RESULT {"key": ..., "path": ...}``. ``--pause-at-epoch E`` prints ``PAUSED E``
and sleeps at the start of epoch E (so a test can kill -9 it at a known point).
``--logical-cpus K`` splits the CPU into K logical devices before TensorFlow starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--logical-cpus", type=int, default=0)
    ap.add_argument("--pause-at-epoch", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)

    if args.logical_cpus:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.logical_cpus)])

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[pid {os.getpid()}] %(message)s"))
    log = logging.getLogger("cifar")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    import keras

    from tasks.core.datacache import record_from_manifest
    from tasks.core.files import read_json
    from tasks.prepare.config import PrepareConfig
    from tasks.train.config import TrainingConfig
    from tasks.train.run import run_training

    class Pause(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch + 1 == args.pause_at_epoch:
                print(f"PAUSED {epoch + 1}", flush=True)
                time.sleep(600)

    dataset = record_from_manifest(args.dataset_dir, read_json(Path(args.dataset_dir) / "manifest.json"))
    cfg = TrainingConfig(epochs=args.epochs, batch_size=args.batch, strategy=args.strategy)
    # the two workers of a multi-worker cluster on this machine hold a training slot each, as
    # `train_slots: 2` in pipelines.yaml gives them (tasks/train/slots.py)
    rec = run_training(dataset, None, "seed_cnn", cfg, PrepareConfig(), args.data_dir, force=args.force,
                       extra_callbacks=(Pause(),) if args.pause_at_epoch else (),
                       slots=2 if args.strategy == "multi_worker" else None)
    print("RESULT " + json.dumps({"key": rec.key, "path": rec.path}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
