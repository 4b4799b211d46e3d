"""Saving a trained model as a run: evaluate it, write its folder under a dot-name, publish it by
rename, update the registry, prune. Idempotent by content key: a rerun returns the run it saved.

A run folder ``<artifacts_dir>/<pipeline>/runs/<run_id>/`` holds everything needed to trust,
reload, serve and compare a trained model::

    model.keras        the trained model (Keras 3 native), byte-identical to the train stage's
    savedmodel/        for serving: raw uint8 images in, probabilities and class out, the
                       preprocessing and class names inside (``tasks.store.export``)
    model.tflite       the same signature for LiteRT (``cifar predict``); classes.json beside
    history.json/.csv  every epoch's metrics and seconds
    metrics.json       test loss/accuracy, per-class precision/recall/accuracy, confusion matrix
    predictions.npz    y_true, y_pred, probs over the cached test split, in order
    metadata.json      config, dataset, validation, cache keys, versions, devices, stage times,
                       the model's layers, train.json, the promotion decision, every file's sha256,
                       and ``seq``: the run's place in its pipeline (``tasks.core.runs.run_order``)

It is written into a dot-prefixed temp folder beside the runs and renamed into place only when
complete, so a crash never leaves a half-run that a listing could see. Per pipeline,
registry.json names the champion (see ``tasks.store.promotion``); ``keep_last`` prunes old runs,
never the champion nor the run being published. The run's ``seq`` is given under the same lock.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import faults, runs, verify
from tasks.core.datacache import DatasetRecord, cache_problems, load_dataset
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, file_lock, fsync_dir, fsync_tree, read_json
from tasks.core.hashing import closure_fingerprint, hash_file, stable_hash
from tasks.core.holdout import TEST, Holdout, split_rows
from tasks.core.holdout import record as holdout_record
from tasks.core.logs import get_logger
from tasks.core.registry import champion_entry, set_champion, write_registry
from tasks.core.records import RunRecord, TrainRecord, ValidationRecord
from tasks.store import promotion, run_folder
from tasks.store.config import PipelineSettings, PromoteConfig
from tasks.store.evaluation import score_test_split, tta_of
from tasks.store.retention import clean_stale, prune_runs
from tasks.store.run_folder import new_run_id, run_metadata, write_run_files


class ModelIntegrityError(CifarError):
    """model.keras is not the file the train stage recorded: it is never loaded."""


class StoreError(CifarError):
    """The train stage's output folder is incomplete or unreadable."""


def verify_model_file(model_path: str | os.PathLike, expected_sha256: str, recorded_in: str) -> None:
    """Raise ModelIntegrityError unless the file's sha256 is the one recorded; call before loading."""
    actual = hash_file(model_path).sha256
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{model_path}: sha256 {actual[:16]}... differs from {expected_sha256[:16]}... recorded in "
            f"{recorded_in}; the model file was altered or truncated after training, so it was not loaded. "
            "To resolve this: retrain it (`cifar run <pipeline> --force`) or restore the original file."
        )


def _read_train_outputs(trained: TrainRecord) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    tdir = Path(trained.path)
    for name in ("train.json", "history.json", "model.keras"):
        if not (tdir / name).is_file():
            raise StoreError(
                f"{tdir / name} is missing: the train stage's folder is incomplete. "
                "Rerun the pipeline (the train stage rebuilds it)."
            )
    try:
        return tdir, read_json(tdir / "train.json"), read_json(tdir / "history.json")
    except ValueError as exc:
        raise StoreError(f"{tdir}: train.json or history.json is not valid JSON ({exc}); rerun the pipeline.") from exc


def store_key(pipeline: PipelineSettings, dataset: DatasetRecord, trained: TrainRecord) -> str:
    """The content key of a saved run: the trained model (key + file sha256), the evaluation data,
    the pipeline and its promotion rule, and the code that decides the run folder's content
    (``store_code_version``). Never a path or a run id."""
    train_file = Path(trained.path) / "train.json"
    try:
        train_json = read_json(train_file)
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{train_file} cannot be read ({exc}): the train stage's folder is incomplete. "
            "Rerun the pipeline (the train stage rebuilds it)."
        ) from exc
    return stable_hash(
        "store",
        trained.key,
        train_json.get("model_sha256"),
        dataset.content or dataset.fingerprint,
        pipeline.name,
        pipeline.promote,
        pipeline.dataset.holdout,
        store_code_version(),
    )


def store_code_version() -> str:
    """The behaviour of the code that decides a run folder's content (part of the store key):
    this module and every project module it imports (evaluation, pixel scaling, the folder's
    files, the export, promotion, the run layout, ...). The import closure replaced a hand-kept
    list in issue 27, changing every store key once."""
    return closure_fingerprint("tasks.store.saving")


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)  # metrics.json holds null for NaN


def _run_record(run_dir: Path, meta: dict[str, Any], reused: bool = False) -> RunRecord:
    promo = meta.get("promotion") or {}
    return RunRecord(
        pipeline=meta["pipeline"],
        run_id=meta["run_id"],
        path=str(run_dir),
        test_accuracy=_float(read_json(run_dir / runs.METRICS)["test_accuracy"]),
        promoted=bool(promo.get("promoted")),
        reason=str(promo.get("reason", "")),
        reused=reused,
    )


def existing_run(pipeline_dir: str | os.PathLike, key: str) -> Path | None:
    """The published run saved under store key ``key``, if it is still complete and verifies
    (metadata.json names the key; every file ``tasks.core.verify`` checks has the sha256 it
    recorded): a damaged run is never reused, the save writes a new one."""
    try:
        run_dir = runs.runs_dir(pipeline_dir) / read_json(runs.store_key_path(pipeline_dir, key))["run_id"]
        meta = read_json(run_dir / runs.METADATA)
    except (OSError, ValueError, KeyError):
        return None
    if isinstance(meta, dict) and (meta.get("cache_keys") or {}).get("store") == key \
            and not verify.run_damage(run_dir, meta):
        return run_dir
    return None


def _evaluate(folder: Path, tdir: Path, train_json: dict[str, Any], dataset: DatasetRecord,
              holdout: Holdout = Holdout(TEST)):
    """Copy the model into the run folder, verify the copy against train.json, only then load it,
    and score it on the cached test split (memory-mapped), scaled as in training, and on the
    validation split (``validation_metrics``)."""
    import keras

    shutil.copyfile(tdir / "model.keras", folder / "model.keras")
    verify_model_file(folder / "model.keras", train_json.get("model_sha256", ""), str(tdir / "train.json"))
    model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
    problems = cache_problems(dataset.path, verify_checksums=False)
    if problems:
        raise StoreError(f"the dataset cache {dataset.path} is incomplete: {'; '.join(problems)}. "
                         "Rerun the pipeline (the download stage rebuilds it).")
    data = load_dataset(dataset.path, mmap=True)
    pre = train_json.get("preprocess") or {}
    y_true = np.asarray(data.y_test, dtype=np.int64)
    probs, metrics = score_test_split(model, data.x_test, y_true, list(data.classes), pre, tta_of(train_json))
    metrics.update(validation_metrics(model, data, dataset, holdout, metrics, pre, tta_of(train_json)))
    return model, data, y_true, probs, metrics


def validation_metrics(model, data, dataset: DatasetRecord, holdout: Holdout, test: dict[str, Any],
                       preprocess: dict[str, Any], tta: str) -> dict[str, Any]:
    """metrics.json's validation part: ``validation_accuracy``, ``validation_loss``,
    ``validation_size`` and ``validation`` (protocol, images, spec, seed, split id). Held out:
    the model scored on the held-out training rows, as on the test split (the same views). With
    ``validation: test`` the test split's numbers, the protocol saying so."""
    test_split = run_folder.eval_split_hash(data.manifest)
    content = dataset.content or dataset.fingerprint
    if holdout.protocol == TEST:
        return {"validation_accuracy": test["test_accuracy"], "validation_loss": test["test_loss"],
                "validation_size": test["test_size"],
                "validation": holdout_record(holdout, test["test_size"], content, test_split)}
    _, rows = split_rows(data.y_train, holdout)
    y_val = np.asarray(data.y_train[rows], dtype=np.int64)
    _, scored = score_test_split(model, data.x_train[rows], y_val, list(data.classes), preprocess, tta)
    return {"validation_accuracy": scored["test_accuracy"], "validation_loss": scored["test_loss"],
            "validation_size": scored["test_size"],
            "validation": holdout_record(holdout, len(rows), content, test_split)}


def _champion_entry(run_id: str, decision: dict[str, Any], cfg: PromoteConfig) -> dict[str, Any]:
    return champion_entry(run_id, decision.get("metric", cfg.metric), decision["value"], decision["reason"], "rule")


def rolled_forward(pipeline_dir: Path, registry: dict[str, Any], cfg: PromoteConfig) -> str | None:
    """The run a save killed between publishing it and updating registry.json left unnamed: the
    newest run whose metadata.json says it was promoted, when it came after (a higher ``seq``)
    the registry's champion or there is none. ``registry`` then names it; returns its id, or None
    when there is nothing to finish (a champion whose folder is gone is ``effective_champion``'s)."""
    published = runs.pipeline_runs(pipeline_dir)
    by_id = {r.run_id: r for r in published}
    current = (registry.get("champion") or {}).get("run_id")
    if current and current not in by_id:
        return None
    floor = (runs.sequence_of(by_id[current].metadata) or 0) if current else -1
    pending = [r for r in published if (r.metadata.get("promotion") or {}).get("promoted") and not r.damage
               and (runs.sequence_of(r.metadata) or 0) > floor and r.run_id != current]
    if not pending:
        return None
    run = pending[-1]
    set_champion(registry, _champion_entry(run.run_id, run.metadata["promotion"], cfg))
    get_logger().warning("%s: run %s was published and promoted by a save that stopped before it updated "
                         "registry.json: the registry now names it", run.pipeline, run.run_id)
    return run.run_id


def settle_run(pipeline_dir: Path, run_dir: Path, cfg: PromoteConfig, keep_last: int | None) -> str | None:
    """Finish what a save killed after publishing ``run_dir`` left undone (``rolled_forward``, then
    pruning), when a rerun finds that run holds its model. Returns the run rolled forward, if any."""
    with file_lock(pipeline_dir / ".registry.lock", f"the registry of {pipeline_dir.name}"):
        registry, problem = runs.load_registry(pipeline_dir)
        rolled = None if problem else rolled_forward(pipeline_dir, registry, cfg)
        if rolled:
            write_registry(runs.registry_path(pipeline_dir), registry)
        prune_runs(pipeline_dir, keep_last, (registry.get("champion") or {}).get("run_id"), keep=run_dir.name)
        clean_stale(runs.runs_dir(pipeline_dir))
    return rolled


def _publish(folder: Path, pipeline_dir: Path, meta: dict[str, Any], metrics: dict[str, Any], cfg: PromoteConfig,
             keep_last: int | None, started: float, refused: str | None = None,
             data=None) -> tuple[dict[str, Any], Path, list[str]]:
    """Decide the promotion, write metadata.json, rename the folder into place, update the
    registry and the store-key mapping, prune: one critical section per pipeline.
    An unreadable registry.json is rebuilt, and a broken champion replaced by the run that stands
    in for it (see ``promotion.effective_champion``); ``refused``: never promote (diverged).
    The run's value is ``metrics[cfg.metric]``; a champion validated on other images is compared
    by the test split's metric instead (``promotion.on_validation_split``).
    Returns the decision, the published folder and the pruned run ids."""
    run_id, key = meta["run_id"], meta["cache_keys"]["store"]
    runs_folder = runs.runs_dir(pipeline_dir)
    with file_lock(pipeline_dir / ".registry.lock", f"the registry of {meta['pipeline']}"):
        registry, problem = runs.load_registry(pipeline_dir)
        if problem and runs.registry_path(pipeline_dir).is_dir():
            raise StoreError(f"{runs.registry_path(pipeline_dir)} is a folder, not the pipeline's registry "
                             "file; move it away and run again (the registry is rebuilt from the runs)")
        if problem:
            get_logger().warning("%s; rebuilding it from the runs' metadata", problem)
        elif rolled_forward(pipeline_dir, registry, cfg):
            write_registry(runs.registry_path(pipeline_dir), registry)
        champion, note = promotion.effective_champion(pipeline_dir, registry, problem, cfg)
        if note:
            get_logger().warning("%s: %s", meta["pipeline"], note)
            set_champion(registry, champion)  # the registry names the champion actually judged against
        meta[runs.SEQ] = runs.next_sequence([run.metadata for run in runs.pipeline_runs(pipeline_dir)])
        previous = promotion.previous_run(pipeline_dir, cfg.metric)
        rule = cfg
        if champion is not None:  # validated on the same images, or compared on the test split
            champion, rule, other = promotion.on_validation_split(
                champion, pipeline_dir, runs.validation_record(metrics).get("split"), cfg)
            note = "; ".join(n for n in (note, other) if n) or None
        if champion is not None and data is not None and rule.metric.startswith("test_"):
            # the same test images for both, or re-scored
            champion = promotion.on_test_split(champion, pipeline_dir, data, meta["dataset"]["test_split"], rule)
        held = promotion.held_by_hand(cfg, meta["pipeline"], run_id)
        decision = promotion.decide_promotion(metrics.get(rule.metric), champion, previous, rule, refused=refused,
                                              note=note, held=held)
        meta["promotion"] = decision
        meta["stages"]["save"] = {"seconds": round(time.perf_counter() - started, 3), "cache_hit": False}
        atomic_write_json(folder / runs.METADATA, meta)
        fsync_tree(folder)  # every file on disk before the folder appears
        # The store key first: a run killed after the rename is then found by the next save, which
        # finishes its registry update (settle_run) instead of saving the same model twice.
        atomic_write_json(runs.store_key_path(pipeline_dir, key), {"run_id": run_id})
        final = runs_folder / run_id
        os.rename(folder, final)
        fsync_dir(runs_folder)
        faults.reached("save.before-registry")
        registry_file = runs.registry_path(pipeline_dir)
        if decision["promoted"]:
            set_champion(registry, _champion_entry(run_id, decision, cfg))
            write_registry(registry_file, registry)
        elif note or not registry_file.exists():
            write_registry(registry_file, registry)
        faults.reached("save.after-registry")
        champion_id = (registry.get("champion") or {}).get("run_id")
        removed = prune_runs(pipeline_dir, keep_last, champion_id, keep=run_id)
        clean_stale(runs_folder)
    return decision, final, removed


def store_run(
    pipeline: PipelineSettings,
    dataset: DatasetRecord,
    validation: ValidationRecord,
    trained: TrainRecord,
    stages: dict[str, Any],
    flow_run_id: str | None,
    artifacts_dir: str | os.PathLike,
    context: dict[str, Any] | None = None,
) -> RunRecord:
    """Evaluate the trained model, publish its run folder, update the registry, prune.
    ``context``: more of metadata.json, from the flow (``trigger``: who started the run and with
    which seed; ``code``: each stage's code version, for the report's "what changed").

    Idempotent: a run already saved for the same content key is returned as it is."""
    started = time.perf_counter()
    log = get_logger()
    name, cfg = pipeline.name, pipeline.promote
    pdir = runs.pipeline_dir(artifacts_dir, name)
    runs_folder = runs.runs_dir(pdir)
    runs_folder.mkdir(parents=True, exist_ok=True)
    key = store_key(pipeline, dataset, trained)

    with file_lock(runs.store_keys_dir(pdir) / f".{key}.lock", f"saving the model of {name}"):
        found = existing_run(pdir, key)
        if found is not None:
            log.info("run %s already holds this model (store key %s): reusing it", found.name, key)
            meta = read_json(found / runs.METADATA)
            settle_run(pdir, found, cfg, pipeline.keep_last)
            return _run_record(found, meta, reused=True)

        tdir, train_json, history = _read_train_outputs(trained)
        now = datetime.now(timezone.utc)
        run_id = new_run_id(now)
        tmp = runs_folder / f".tmp-{run_id}-{os.getpid()}"
        tmp.mkdir()
        try:
            model, data, y_true, probs, metrics = _evaluate(tmp, tdir, train_json, dataset, pipeline.dataset.holdout)
            log.info("%s: validation accuracy %.4f on %s; test accuracy %.4f, loss %.4f on %d images", name,
                     metrics["validation_accuracy"], metrics["validation"]["described"],
                     metrics["test_accuracy"], metrics["test_loss"], len(y_true))
            files, serving = write_run_files(tmp, model, data, y_true, probs, metrics, history,
                                             train_json.get("preprocess"))
            meta = run_metadata(
                pipeline=pipeline, run_id=run_id, created=now, dataset=dataset, data=data,
                validation=validation, flow_run_id=flow_run_id, train_json=train_json, stages=stages,
                model=model, files=files, serving=serving,
                cache_keys={"dataset": dataset.fingerprint, "validation": validation.fingerprint,
                            "train": trained.key, "store": key},
            )
            meta.update(context or {})
            meta["dataset"]["test_split"] = run_folder.eval_split_hash(data.manifest)
            decision, final, removed = _publish(tmp, pdir, meta, metrics, cfg,
                                                pipeline.keep_last, started,
                                                refused=promotion.training_problem(history)
                                                or promotion.floor_problem(metrics[cfg.metric], cfg,
                                                                           len(data.classes)),
                                                data=data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    log.info("%s: run %s saved (%s); %s", name, run_id, final,
             decision["reason"] if decision["promoted"] else f"not promoted: {decision['reason']}")
    if removed:
        log.info("%s: keep_last=%s pruned %d old run(s): %s", name, pipeline.keep_last, len(removed),
                 ", ".join(removed))
    return _run_record(final, meta)
