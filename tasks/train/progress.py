"""Epoch progress while a model trains: the per-epoch history rows kept in the work dir (so a
resumed run continues one history), the epoch log line, and Prefect's progress artifact."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tasks.core import faults
from tasks.core.files import atomic_write_json, read_json
from tasks.core.logs import get_logger, in_prefect_run

HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def format_epoch_line(epoch: int, epochs: int, logs: dict[str, float], seconds: float) -> str:
    """``epoch 3/20 loss 1.47 accuracy 0.47 val_loss 1.36 val_accuracy 0.51 (41.2 s)``"""
    parts = [f"epoch {epoch}/{epochs}"]
    for name in HISTORY_METRICS:
        if name in logs:
            parts.append(f"{name} {float(logs[name]):.2f}")
    return " ".join(parts) + f" ({seconds:.1f} s)"


def epoch_metrics(logs: dict[str, Any]) -> dict[str, float | None]:
    """An epoch's metrics as history.json stores them: a NaN or infinite value (a diverged
    training) becomes None, so the file stays strict JSON (``NaN`` is not JSON)."""
    out = {}
    for k, v in logs.items():
        if k in HISTORY_METRICS:
            out[k] = float(v) if math.isfinite(float(v)) else None
    return out


class EpochTracker:
    """Per-epoch history rows (persisted atomically to the work dir), the log line, progress.

    Two Keras callbacks share it: ``recorder`` sits ahead of BackupAndRestore and writes the row
    before the backup is taken; ``announcer`` follows it, so the log line (the "epoch N is safe"
    marker) appears only once both are on disk. On resume, rows past the restored epoch (from
    an epoch whose backup never landed) are dropped, so the history stays continuous.
    """

    def __init__(self, rows_path: Path | None, epochs: int, key: str, persist: bool):
        import keras

        self.rows_path, self.epochs, self.key, self.persist = rows_path, epochs, key, persist
        self.rows: list[dict[str, Any]] = []
        if rows_path is not None and rows_path.is_file():
            self.rows = read_json(rows_path)["epochs"]
        self.resumed_from = 0
        self.log = get_logger()
        self.artifact_id = None
        self.epoch_started = 0.0
        tracker = self

        class RecordEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                tracker.epoch_started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                tracker.record(epoch + 1, logs or {})

        class HoldMidEpoch(RecordEpoch):  # the fault matrix's point only: no per-batch hook otherwise
            def on_train_batch_end(self, batch, logs=None):
                if batch == 0 and len(tracker.rows) >= 1:  # the first batch after an epoch was saved
                    faults.reached("fit.mid-epoch")

        class AnnounceEpoch(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                tracker.start(int(self.model._initial_epoch or 0))

            def on_epoch_end(self, epoch, logs=None):
                tracker.log.info(format_epoch_line(epoch + 1, tracker.epochs, logs or {},
                                                   tracker.rows[-1]["seconds"]))
                tracker.show_progress()

        self.recorder = HoldMidEpoch() if faults.armed("fit.mid-epoch") else RecordEpoch()
        self.announcer = AnnounceEpoch()

    def record(self, epoch: int, logs: dict[str, Any]) -> None:
        """Epoch ``epoch`` (1-based) finished: its row replaces any later ones, then is saved."""
        row = {"epoch": epoch, **epoch_metrics(logs),
               "seconds": round(time.perf_counter() - self.epoch_started, 3)}
        if bad := [k for k in HISTORY_METRICS if k in logs and row[k] is None]:
            self.log.warning("epoch %d: %s not a finite number: training diverged, so it stops here "
                             "and the run will not be promoted; lower training.optimizer.learning_rate",
                             epoch, ", ".join(bad))
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        if self.persist:
            atomic_write_json(self.rows_path, {"epochs": self.rows})

    def start(self, resumed_from: int) -> None:
        """fit() begins after epoch ``resumed_from`` (0: from scratch): keep the rows up to it."""
        self.resumed_from = resumed_from
        self.rows = [r for r in self.rows if r["epoch"] <= resumed_from]
        if resumed_from:
            self.log.info("resuming after epoch %d/%d from the backup", resumed_from, self.epochs)
        self.show_progress(create=True)

    def show_progress(self, create: bool = False) -> None:
        """The Prefect progress artifact (only inside a Prefect run, only on the chief)."""
        if not self.persist or not in_prefect_run():
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        done = len(self.rows)
        pct = 100.0 * done / self.epochs
        desc = f"training {self.key}: {done}/{self.epochs} epochs"
        try:
            if create or self.artifact_id is None:
                self.artifact_id = create_progress_artifact(pct, key=f"train-{self.key}", description=desc)
            else:
                update_progress_artifact(self.artifact_id, pct, description=desc)
        except Exception as exc:  # noqa: BLE001 - the UI's progress bar must not kill a training
            self.log.warning("could not update the progress artifact: %r", exc)
