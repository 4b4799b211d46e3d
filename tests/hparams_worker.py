"""Subprocess entry point for the HParams test: in a process where the TensorBoard viewer package
is importable (the test's own process keeps it out, as the training tests require).

    python tests/hparams_worker.py RUN_DIR [RUN_DIR ...]

For each run folder: unless it has them, Keras-like curves into ``tensorboard/train`` and ``tensorboard/validation``
(``epoch_loss``/``epoch_accuracy`` per epoch from history.json, written by TensorFlow's summary
writer as Keras's callback writes them), then ``tasks.train.hparams.log_run_hparams``. Prints one
line ``RESULT {run_dir: event file or null}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def curves(run_dir: Path) -> None:
    import tensorflow as tf

    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / split))
        with writer.as_default():
            for i, row in enumerate(epochs):
                tf.summary.scalar("epoch_loss", row[f"{prefix}loss"], step=i)
                tf.summary.scalar("epoch_accuracy", row[f"{prefix}accuracy"], step=i)
        writer.close()


def main(argv: list[str]) -> int:
    from tasks.train.hparams import log_run_hparams

    logging.basicConfig(level=logging.INFO)
    out = {}
    for arg in argv:
        run_dir = Path(arg)
        if not (run_dir / "tensorboard" / "train").is_dir():
            curves(run_dir)
        written = log_run_hparams(run_dir)
        out[arg] = str(written) if written else None
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
