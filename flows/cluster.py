"""Multi-worker training through the whole flow: who saves, and what the other workers wait for.

With ``training.strategy: multi_worker`` the same flow runs on every worker of the TF_CONFIG
cluster and each takes part in the one ``fit``. Only the chief (``task.index`` 0, or the
``chief`` task) then saves, registers and reports. Every other worker waits for the chief's
two commits and ends Completed with a pointer to its run:

1. the trained model's ``train.json`` in ``data_dir`` (written seconds after the fit ends): not
   seeing it means this worker does not share the chief's data folder;
2. the run folder in ``artifacts_dir`` that holds that model (evaluation and export first).

So every worker must see the same ``data_dir`` and ``artifacts_dir`` (a shared file system at
the same path, or set per machine with ``--set data_dir=...``); a worker that does not fails
with that message instead of waiting forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.errors import CifarError
from tasks.core.files import read_json
from tasks.core.logs import get_logger
from tasks.train.config import TrainingConfig
from tasks.train.devices import resolve_runtime, worker_role

MODEL_WAIT_SECONDS = 300.0  # the fit ends on every worker at once; the chief's commit follows
RUN_WAIT_SECONDS = 3600.0  # the chief evaluates, exports and publishes the run


class SharedFolderError(CifarError):
    """A multi-worker worker cannot see the chief's data or artifacts folder."""


def require_shared_folders(data_dir: str | Path, artifacts_dir: str | Path, deployment_id: str | None) -> None:
    """A deployment's flow run (a worker's, or `cifar serve`'s) never creates ``data_dir`` or
    ``artifacts_dir``: `cifar deploy` and `cifar serve` do, once, where they are shared. When one
    is missing here, this worker does not see the shared folders, and a run would quietly keep
    a registry and caches of its own; it fails saying so instead."""
    if not deployment_id:
        return  # `cifar run`: this machine's folders are the ones meant
    missing = [f"{key} {path}" for key, path in (("data_dir", data_dir), ("artifacts_dir", artifacts_dir))
               if not Path(path).is_dir()]
    if missing:
        import socket

        raise SharedFolderError(
            f"this worker ({socket.gethostname()}) cannot see {' or '.join(missing)}: the folder does not "
            "exist here. Every worker must see the same data_dir and artifacts_dir: mount the shared folder "
            "at that path (or set data_dir/artifacts_dir in pipelines.yaml to where it is mounted), then "
            "run again. `cifar deploy` and `cifar serve` create them on the machine they run on.")


def role_of(cfg: TrainingConfig) -> tuple[bool, str]:
    """(is_chief, label) of this flow run's process (always the chief unless multi_worker)."""
    return worker_role(resolve_runtime(cfg, 0).strategy)


def _committed_model(model_folder: Path, since: float) -> dict[str, Any] | None:
    """train.json of a model committed at or after ``since`` (seconds since the epoch)."""
    meta_file = model_folder / "train.json"
    try:
        if meta_file.stat().st_mtime < since:
            return None
        return read_json(meta_file)
    except (OSError, ValueError):
        return None


def run_of_model(artifacts_dir: str | Path, train_key: str, model_sha256: str) -> Path | None:
    """The published run, of any pipeline (the chief's may be deployed under another name, with
    its own TF_CONFIG), whose model is the one trained under ``train_key`` with that sha256
    (the newest such run), if there is one."""
    for run in runs.published_runs(artifacts_dir):
        meta = run.metadata
        if ((meta.get("cache_keys") or {}).get("train") == train_key
                and (meta.get("files") or {}).get("model.keras") == model_sha256):
            return run.dir
    return None


def _poll(what: Callable[[], Any], seconds: float, interval: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        if (found := what()) is not None:
            return found
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def wait_for_chief(role: str, trained_path: str, train_key: str, pipeline: str, data_dir: str,
                   artifacts_dir: str, *, since: float = 0.0, model_wait: float = MODEL_WAIT_SECONDS,
                   run_wait: float = RUN_WAIT_SECONDS, interval: float = 1.0) -> dict[str, Any]:
    """A non-chief worker, after the fit: wait for the chief's model commit, then for its run.
    ``since``: a model committed before it is an old one (a forced retraining's start; 0: any,
    since a model that was there before the training began was reused by every worker).
    Returns {run_id, path, report}; raises SharedFolderError naming the folder it cannot see."""
    log = get_logger()
    model_folder = Path(trained_path)
    log.info("%s of %s: not the chief; waiting for its commit of %s", role, pipeline, model_folder / "train.json")
    train_json = _poll(lambda: _committed_model(model_folder, since - 2.0 if since else 0.0), model_wait, interval)
    if train_json is None:
        raise SharedFolderError(
            f"{role}: the chief's trained model never appeared in {model_folder} within {model_wait:.0f} s "
            f"of the end of training: this worker cannot see the chief's data folder ({data_dir}). Every "
            "worker of a multi-worker training must share data_dir and artifacts_dir (the same folder on a "
            "shared file system; set them with --set data_dir=... artifacts_dir=... where the mount "
            "differs). If the chief failed instead, its flow run says why.")
    sha = train_json.get("model_sha256", "")
    log.info("%s: the chief committed model %s; waiting for its run under %s", role, sha[:12], artifacts_dir)
    run_dir = _poll(lambda: run_of_model(artifacts_dir, train_key, sha), run_wait, interval * 2)
    if run_dir is None:
        raise SharedFolderError(
            f"{role}: no run of model {sha[:12]} (training {train_key}) appeared under {artifacts_dir} "
            f"within {run_wait:.0f} s of the chief's commit: this worker cannot see the chief's artifacts "
            f"folder ({artifacts_dir}), or the chief's save failed (its flow run says why). Every worker "
            "must share data_dir and artifacts_dir.")
    log.info("%s: the chief saved run %s at %s", role, run_dir.name, run_dir)
    return {"run_id": run_dir.name, "path": str(run_dir), "report": str(run_dir / runs.REPORT)}


def worker_summary(pipeline: str, role: str, chief_run: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any]:
    """What a non-chief worker's flow run returns: a pointer to the chief's run."""
    return {"pipeline": pipeline, "role": role, "chief_run": chief_run, "run_id": chief_run["run_id"],
            "run_dir": chief_run["path"], "report": chief_run["report"], "stages": stages}
