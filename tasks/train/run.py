"""One training per cache key: the key, reuse of an intact model folder, the single-flight lock,
resuming an interrupted training, and the chief's commit (the non-chief workers only take part).

The key's code part (``training_code_version``) covers what decides the model folder's content:
this module and every project module it imports -- the model builders, the input pipeline (with
``tasks.core.pixels``), the fit, the devices module (it picks the precision), the epoch records
(history.json), the commit (train.json), ... Comments, docstrings, log and error wording never
count (see ``tasks.core.hashing.closure_fingerprint``); the Prefect task around it does not.
"""

from __future__ import annotations

import shutil
import socket
import sys

from tasks.core.datacache import DatasetRecord
from tasks.core.files import file_lock
from tasks.core.holdout import TEST, Holdout
from tasks.core.hashing import closure_fingerprint, stable_hash, to_jsonable
from tasks.core.logs import get_logger
from tasks.core.records import TrainRecord, ValidationRecord
from tasks.train import board, budget, recipe
from tasks.train.config import TrainingConfig
from tasks.train.devices import (
    allow_memory_growth,
    local_workers,
    make_strategy,
    precision_policy,
    read_tf_config,
    resolve_runtime,
    strategy_devices,
    takes_local_slots,
    worker_role,
)
from tasks.train.fit import fit_model, split_of
from tasks.train.inputs import PrepareSettings, preprocess_stats
from tasks.train.model_folder import commit_model, lock_path, model_dir, trained_problems, work_dir
from tasks.train.models import MODELS, build_model
from tasks.train.progress import EpochTracker
from tasks.train.slots import training_slot


def training_code_version() -> str:
    """The behaviour of this module's import closure: the code part of the train key. It replaced
    a hand-kept list of modules in issue 27, which changed every train key once (one retraining)."""
    return closure_fingerprint("tasks.train.run")


def train_key(dataset: DatasetRecord, validation: ValidationRecord | None, model: str, cfg: TrainingConfig,
              prepare: PrepareSettings, holdout: Holdout = Holdout(TEST)) -> str:
    """Content key: the data's content hash, model, full training config (seed included), the inputs'
    preprocessing, the validation split (which images train) and the code that decides the trained
    model (``training_code_version``)."""
    split = None if holdout.protocol == TEST else {"validation": holdout.size, "seed": holdout.seed}
    # A budget's epochs depend on the machine (tasks.train.budget): its key covers the machine.
    machine = [budget.host_facts()] if cfg.budget is not None else []
    return stable_hash("train", dataset.content or dataset.fingerprint, model, cfg,
                       {"standardize": prepare.standardize, **preprocess_stats(validation, prepare)},
                       split, training_code_version(), *machine)


def run_training(dataset: DatasetRecord, validation: ValidationRecord | None, model: str, cfg: TrainingConfig,
                 prepare: PrepareSettings, data_dir, force: bool = False,
                 extra_callbacks: tuple = (), slots: int | None = None,
                 holdout: Holdout = Holdout(TEST)) -> TrainRecord:
    """Train ``model`` on the cached dataset unless an intact result for the same key exists.

    Idempotent and single-flight: a verified ``<data_dir>/models/<key>/`` returns at once; else
    the key's file lock is taken, the folder re-checked (a concurrent run may just have written
    it), and training runs, resuming from ``<key>.work/backup`` if a killed run left one.
    ``force`` retrains from scratch. ``extra_callbacks`` are appended to Keras's list.
    ``holdout``: the validation split, left out of training and validated on each epoch (the
    default, ``validation: test``, trains on the whole split and validates on the test split).
    The fit itself runs inside one of this machine's ``slots`` training slots
    (``tasks.train.slots``): a reused model never waits for one.
    """
    key = train_key(dataset, validation, model, cfg, prepare, holdout)
    out = model_dir(data_dir, key)
    log = get_logger()
    if model not in MODELS:
        build_model(model, dataset.input_shape, dataset.num_classes)  # raises the readable error
    if not force and not trained_problems(out):
        log.info("model %s (%s) already trained: reusing %s", model, key, out)
        return TrainRecord(key=key, path=str(out))
    rows = split_of(dataset, holdout)  # a split that cannot be drawn fails here, before any lock or slot
    strategy = resolve_runtime(cfg, 0).strategy
    chief, role = worker_role(strategy)
    here, takes = 1, 1
    if strategy == "multi_worker":  # the cluster's first process here takes all its slots here at once
        conf, names = read_tf_config(), (socket.gethostname(),)
        here = local_workers(conf, names)
        takes = here if takes_local_slots(conf, names) else 0
    what = f"training of {model} ({key})"
    if not chief:  # multi-worker: the chief holds the lock and writes; others just take part
        with training_slot(slots, what, here, takes):
            train_and_commit(dataset, validation, model, cfg, prepare, data_dir, key, chief=False,
                             role=role, extra_callbacks=extra_callbacks, holdout=holdout, rows=rows)
        return TrainRecord(key=key, path=str(out))
    with file_lock(lock_path(data_dir, key), what=f"training of {model} ({key})"):
        if not force and not trained_problems(out):
            log.info("model %s (%s) was trained by a concurrent run: reusing %s", model, key, out)
            return TrainRecord(key=key, path=str(out))
        if force:
            shutil.rmtree(work_dir(data_dir, key), ignore_errors=True)
        with training_slot(slots, what, here, takes):
            train_and_commit(dataset, validation, model, cfg, prepare, data_dir, key, chief=True,
                             role=role, extra_callbacks=extra_callbacks, holdout=holdout, rows=rows)
    return TrainRecord(key=key, path=str(out))


def train_and_commit(dataset: DatasetRecord, validation: ValidationRecord | None, model_name: str, cfg: TrainingConfig,
                     prepare: PrepareSettings, data_dir, key: str, *, chief: bool, role: str,
                     extra_callbacks: tuple, holdout: Holdout = Holdout(TEST), rows=None) -> None:
    """Fit with epoch backups in the work dir (resuming from one that is there); the chief then
    commits the model folder, a non-chief worker drops its own backup."""
    import tensorflow as tf

    allow_memory_growth()  # before the strategy (or anything) initialises the GPUs
    gpus = len(tf.config.list_physical_devices("GPU"))
    runtime = resolve_runtime(cfg, gpus)
    strategy = make_strategy(runtime)  # first: multi-worker must configure TF before it starts

    import keras

    log = get_logger()
    if runtime.precision == "mixed_float16" and not gpus:
        log.warning("mixed_float16 on a CPU is slow; use mixed_bfloat16 or off there")
    stats = preprocess_stats(validation, prepare)
    work = work_dir(data_dir, key)
    rows = rows if rows is not None else split_of(dataset, holdout)  # (train rows, validation rows)
    with precision_policy(runtime.precision):  # a budget's epochs: chosen (or read back) before anything fits
        cfg, budget_facts = budget.resolve(cfg, model_name, dataset, runtime, strategy, stats, rows, data_dir, work)
    # Non-chief workers back up beside, not inside, the chief's work dir (which it deletes).
    backup = work / "backup" if chief else work.with_name(f"{work.name}-{role}") / "backup"
    tracker = EpochTracker(work / "history.json" if chief else None, cfg.epochs, key, persist=chief)
    callbacks = [tracker.recorder,
                 keras.callbacks.BackupAndRestore(backup_dir=str(backup), double_checkpoint=True),
                 tracker.announcer, *extra_callbacks]
    if chief:  # live curves: the chief's alone (the others train the same model)
        callbacks.append(board.tensorboard_callback(work / board.TENSORBOARD))
    devices_used = strategy_devices(strategy, runtime)
    log.info("training %s (%s): %d epochs, batch %d, %s on %s, %s, XLA %s", model_name, key,
             cfg.epochs, cfg.batch_size, runtime.strategy, ", ".join(devices_used), runtime.precision,
             "on" if runtime.xla else "off")
    n_train, n_val = (len(r) for r in rows)
    if holdout.protocol != TEST:
        log.info("validation: %s; training on the other %d", holdout.describe(n_val), n_train)
    with precision_policy(runtime.precision):
        model, wall = fit_model(model_name, dataset, cfg, stats, runtime, strategy, callbacks,
                                verbose=1 if chief and sys.stdout.isatty() else 0, holdout=holdout, rows=rows)
        if not chief:
            shutil.rmtree(backup.parent, ignore_errors=True)
            return
        meta = commit_model(model_dir(data_dir, key), work, model, tracker.rows, {
            "key": key,
            "model": model_name,
            "dataset_fingerprint": dataset.fingerprint,
            "wall_seconds_this_run": round(wall, 3),
            "devices": devices_used,
            "replicas": strategy.num_replicas_in_sync,
            "cluster": (read_tf_config() or {}).get("cluster") if runtime.strategy == "multi_worker" else None,
            "strategy": runtime.strategy,
            "precision": runtime.precision,
            "xla": runtime.xla,
            "resumed_from_epoch": tracker.resumed_from,
            "preprocess": stats,
            "config": to_jsonable(cfg),
            "recipe": recipe.recipe_facts(cfg, n_train),
            "validation": {"protocol": holdout.protocol, "spec": holdout.size, "seed": holdout.seed,
                           "train_images": n_train, "validation_images": n_val},
            **({"budget": budget_facts} if budget_facts else {}),
        })
    log.info("trained %s (%s): %d epochs in %.1f s -> %s", model_name, key, meta["epochs"],
             meta["seconds"], model_dir(data_dir, key))
