"""The train stage's Prefect task: ``train_model``, cached by the training key while the model
folder is intact; a retry resumes from the epoch backup."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.core.caching import VerifiedCache, same_path
from tasks.core.datacache import DatasetRecord
from tasks.core.holdout import TEST, Holdout
from tasks.core.records import TrainRecord, ValidationRecord
from tasks.train.config import TrainingConfig
from tasks.train.inputs import PrepareSettings
from tasks.train.model_folder import model_dir, trained_problems
from tasks.train.run import run_training, train_key


def _task_key(inputs: dict[str, Any]) -> str:
    return train_key(inputs["dataset"], inputs.get("validation"), inputs["model"], inputs["cfg"],
                     inputs["prepare"], inputs.get("holdout") or Holdout(TEST))


def _task_valid(inputs: dict[str, Any], key: str) -> bool:
    if inputs.get("force"):
        return False
    return not trained_problems(model_dir(inputs["data_dir"], key))


def _task_record(inputs: dict[str, Any], key: str, trained: TrainRecord) -> bool:
    return same_path(trained.path, model_dir(inputs["data_dir"], key))


@task(name="train-model", retries=1, cache_policy=VerifiedCache(
          key_fn=_task_key, valid_fn=_task_valid, record_fn=_task_record),
      persist_result=True, timeout_seconds=None)
def train_model(dataset: DatasetRecord, validation: ValidationRecord | None, model: str, cfg: TrainingConfig,
                prepare: PrepareSettings, data_dir: str, force: bool = False,
                slots: int | None = None, holdout: Holdout | None = None) -> TrainRecord:
    """Train (or reuse) ``model`` on ``dataset`` less its ``holdout`` (the validation split; None:
    none, the test split validates); a retry resumes from the epoch backup. The fit waits for
    one of this machine's ``slots`` training slots."""
    return run_training(dataset, validation, model, cfg, prepare, data_dir, force=force, slots=slots,
                        holdout=holdout or Holdout(TEST))
