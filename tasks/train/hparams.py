"""Each run's settings and final metrics for TensorBoard's HParams dashboard, so that
``tensorboard --logdir artifacts`` filters and compares runs by configuration.

A run folder's ``tensorboard/`` (copied from the model folder by ``board.copy_logs``) holds the
Keras curves in ``train/`` and ``validation/``. This module adds, in ``tensorboard/`` itself, one
event file with the run's HParams session (``hp.hparams_pb``: the settings, flattened to dotted
keys as ``--set`` takes them) and its final metrics as scalars at step = epochs (``test_accuracy``,
``test_loss``, and ``validation_accuracy``/``validation_loss`` when metrics.json has them). The
viewer then lists each run as one session, ``<pipeline>/runs/<run-id>/tensorboard``, with the
final scalars as metrics of group ``""`` and the Keras curves as metrics of groups ``train`` and
``validation``.

The settings and metrics belong to the *run*, not to the model: a cached model can be reused by
several runs, so they are written into the run folder, after the save, from its metadata.json and
its metrics.json (only when metrics.json verifies, ``tasks.core.verify``).

Written safely: the records go to a dot-named file in ``tensorboard/`` (a name without
``tfevents``, which the viewer never reads), fsynced, then hard-linked to its final name, which
fails when a file of that name exists: the event file appears complete or not at all, and at
most once per run (a rerun that reuses the run writes nothing). The TensorBoard folder is not
among the files metadata.json records, so nothing here can make a run damaged. A failure is a
warning, never a failed run. The HParams protos are TensorBoard's own: ``tensorboard`` is one of
the project's dependencies, so every install writes them (an install that lacks it gets a warning
per run naming ``pip install tensorboard``, not a silent gap).

Not imported by ``tasks.train.run``: the training's cache key (its import closure) stays as it was.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tasks.core import runs, verify
from tasks.core.files import fsync_dir
from tasks.core.processes import pid_alive
from tasks.core.logs import get_logger
from tasks.core.run_files import read_run_file

TENSORBOARD = "tensorboard"  # as board.TENSORBOARD (not imported: board pulls in the training's closure)
EVENTS = "events.out.tfevents.run-hparams"  # the run's one HParams event file, in tensorboard/
FINAL_METRICS = ("test_accuracy", "test_loss", "validation_accuracy", "validation_loss")
INSTALL = "pip install 'tensorboard>=2.21,<2.22'"  # a dependency: only a broken install lacks it

HParamValue = bool | int | float | str


# =========================================================================== pure
def hparam_value(value: Any) -> HParamValue:
    """A value HParams takes: bool, int, float and str as they are; None as ``"none"``; a list or
    tuple as its compact JSON (``"[64,128,128]"``); anything else as ``str``."""
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"), default=str)
    return str(value)


def flatten(value: Any, prefix: str) -> dict[str, HParamValue]:
    """``{"a": {"b": 1}}`` under ``prefix`` "x" -> ``{"x.a.b": 1}``; a leaf -> ``{prefix: value}``
    (see ``hparam_value``). An empty dict gives nothing."""
    if isinstance(value, dict):
        out: dict[str, HParamValue] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: hparam_value(value)}


def run_hparams(metadata: dict[str, Any]) -> dict[str, HParamValue]:
    """The run's settings from its metadata.json, as HParams (dotted keys, as ``--set`` takes):

    - ``pipeline`` and ``model``;
    - ``dataset.format``, ``dataset.limit_train``, ``dataset.limit_test``, ``dataset.subset_seed``
      and ``dataset.validation`` when the config has it (flattened when it is a mapping);
    - ``training.*``: the training config the model was trained with (train.json's, else the
      pipeline's): epochs, batch_size, seed, shuffle, augment, ``optimizer.*`` (left out when a
      recipe is set, which does not use it), ``recipe.*`` when a recipe is set; ``strategy``,
      ``precision`` and ``xla`` as the training resolved them (not ``auto``).
    """
    config = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
    trained = metadata.get("training") if isinstance(metadata.get("training"), dict) else {}
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    training = trained.get("config") if isinstance(trained.get("config"), dict) else config.get("training")
    training = dict(training) if isinstance(training, dict) else {}

    out: dict[str, HParamValue] = {
        "pipeline": hparam_value(metadata.get("pipeline") or config.get("name")),
        "model": hparam_value((metadata.get("model") or {}).get("name") or trained.get("model") or config.get("model")),
    }
    for key in ("format", "limit_train", "limit_test", "subset_seed", "validation_seed"):
        if key in dataset:
            out[f"dataset.{key}"] = hparam_value(dataset[key])
    if "validation" in dataset:  # the validation split's settings, where the config has them
        out.update(flatten(dataset["validation"], "dataset.validation"))

    if training.get("recipe") is None:
        training.pop("recipe", None)
    else:
        training.pop("optimizer", None)  # not used with a recipe (TrainingConfig.problems)
    training.pop("mixed_precision", None)  # as resolved: training.precision below
    for key in ("strategy", "precision", "xla"):
        if trained.get(key) is not None:
            training[key] = trained[key]
    out.update(flatten(training, "training"))
    return out


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The final metrics the dashboard shows per run: those of ``FINAL_METRICS`` that metrics.json
    holds as finite numbers (a diverged loss, recorded as null, is left out)."""
    out = {}
    for name in FINAL_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def final_step(metadata: dict[str, Any], hparams: dict[str, HParamValue]) -> int:
    """The step of the final metrics: the epochs trained (train.json's ``epochs``), else the
    configured ``training.epochs``, else 0."""
    for value in ((metadata.get("training") or {}).get("epochs"), hparams.get("training.epochs")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def start_time(metadata: dict[str, Any]) -> float | None:
    """The run's creation time (metadata.json's ``created_at``) as epoch seconds, else None."""
    from tasks.core.run_files import parse_iso

    created = parse_iso(metadata.get("created_at"))
    return created.timestamp() if created else None


# =========================================================================== TensorBoard's protos
def event_records(hparams: dict[str, HParamValue], metrics: dict[str, float], step: int, trial_id: str,
                  start_time_secs: float | None = None) -> list[bytes]:
    """The serialized events of one HParams session: the file-version event every event file
    starts with, the session (``hp.hparams_pb``, step 0), then each metric as a scalar at
    ``step``."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import api as hp
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb

    now = time.time()
    start = now if start_time_secs is None else start_time_secs
    events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
              event_pb2.Event(wall_time=now, step=0,
                              summary=hp.hparams_pb(hparams, trial_id=trial_id, start_time_secs=start))]
    events += [event_pb2.Event(wall_time=now, step=step, summary=scalar_pb(name, value))
               for name, value in metrics.items()]
    return [event.SerializeToString() for event in events]


def write_events(board_dir: str | os.PathLike, records: list[bytes]) -> Path | None:
    """Write ``records`` as ``<board_dir>/EVENTS``, complete or not at all: into a dot-named file
    (no ``tfevents`` in its name: the viewer never reads it), fsynced, then hard-linked to
    ``EVENTS``. None, writing nothing, when ``EVENTS`` is there already (written before, or by a
    concurrent writer that won). A temp file of a killed writer is removed by the next one."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    board_dir = Path(board_dir)
    final = board_dir / EVENTS
    if final.exists():
        return None
    board_dir.mkdir(parents=True, exist_ok=True)
    for stale in board_dir.glob(f".{EVENTS}.*.tmp"):  # a killed writer's (pid gone), never a live one's
        pid = stale.name.removeprefix(f".{EVENTS}.").removesuffix(".tmp")
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = board_dir / f".{EVENTS}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for record in records:
                writer.write(record)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            return None
        fsync_dir(board_dir)
        return final
    finally:
        tmp.unlink(missing_ok=True)


# =========================================================================== the run
def log_run_hparams(run_dir: str | os.PathLike) -> Path | None:
    """Write the run's HParams session and final metrics into ``<run_dir>/tensorboard/``; the
    event file's path, or None when nothing was written (written before; metrics.json does not
    verify; any failure, a missing ``tensorboard`` package included, logged as a warning). Never raises:
    the run is saved already, and a missing HParams entry never fails it."""
    log = get_logger()
    run_dir = Path(run_dir)
    try:
        if (run_dir / TENSORBOARD / EVENTS).exists():
            return None
        metadata, problem = read_run_file(run_dir / runs.METADATA, "metadata")
        if problem is None and (damage := verify.run_damage(run_dir, metadata, (verify.METRICS,))):
            problem = verify.damage_text(damage)
        metrics, metrics_problem = (None, None) if problem else read_run_file(run_dir / runs.METRICS, "metrics")
        if problem or metrics_problem:
            log.warning("TensorBoard HParams not written for %s: %s", run_dir, problem or metrics_problem)
            return None
        hparams = run_hparams(metadata)
        records = event_records(hparams, final_metrics(metrics), final_step(metadata, hparams),
                                trial_id=str(metadata.get("run_id") or run_dir.name),
                                start_time_secs=start_time(metadata))
        return write_events(run_dir / TENSORBOARD, records)
    except ImportError as exc:  # a dependency of the project: a broken install, said loudly
        log.warning("TensorBoard HParams not written for %s: the tensorboard package, a dependency of this "
                    "project, cannot be imported (%s); install it (%s) so that each run's settings and "
                    "metrics reach the HParams tab; the run is saved and unaffected", run_dir, exc, INSTALL)
        return None
    except Exception as exc:  # noqa: BLE001 - the run is saved: a failure here is a warning, never a failed run
        log.warning("TensorBoard HParams not written for %s (%s: %s); the run is saved and unaffected",
                    run_dir, type(exc).__name__, exc)
        return None
