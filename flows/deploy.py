"""Deployments of flows ``cifar`` (training) and ``cifar-predict`` (batch scoring with the
pipeline's model): one of each per pipeline, served here or registered to a work pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.config import PipelineConfig, Settings
from tasks.core.errors import CifarError

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/cifar.py:cifar"
PREDICT_ENTRYPOINT = "flows/predict.py:cifar_predict"


class NeedsServer(CifarError):
    pass


class PinnedDeploymentError(CifarError):
    """A deployment's run asked for another pipeline than the one the deployment is for."""

    exit_code = 2


def pin_problem(requested: str | None, pinned: str | None, deployment: str) -> str | None:
    """Why a run of ``deployment`` (``flow/name``), pinned to pipeline ``pinned``, may not run
    pipeline ``requested`` (None too: the predict flow would then pick a default pipeline); None
    when it may (the same pipeline, or no pin: a deployment registered with no pipeline)."""
    if not pinned or requested == pinned:
        return None
    return (f"deployment {deployment} runs pipeline {pinned!r} only, but this run asked for "
            f"pipeline={requested!r}; nothing was run. Each deployment is pinned to the pipeline it is "
            f"named for, so that a run's model is trained, judged and promoted under its own pipeline's "
            f"rules. To resolve this: run the deployment of that pipeline instead "
            f"(`prefect deployment run {deployment.split('/')[0]}/{requested}`), or leave out --param pipeline.")


def require_pinned(requested: str | None) -> None:
    """Inside a deployment's flow run: PinnedDeploymentError unless ``requested`` is the pipeline
    the deployment is pinned to (its own stored ``pipeline`` parameter, which every deployment
    this module registers carries; read from the API, not from the run's parameters, which
    ``--param`` overrides). Outside a deployment (``cifar run``), nothing to check."""
    from prefect.runtime import deployment, flow_run

    if not deployment.id:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment.id)
    pinned = (dep.parameters or {}).get("pipeline")
    if problem := pin_problem(requested, pinned, f"{flow_run.flow_name}/{dep.name}"):
        raise PinnedDeploymentError(problem)


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def require_server(what: str) -> str:
    """Schedules and workers need a real Prefect server: the embedded API runs no scheduler."""
    url = api_url()
    if not url:
        raise NeedsServer(
            f"{what} needs a Prefect server, but PREFECT_API_URL is not set, so Prefect would use "
            "its temporary embedded API, which runs no scheduler and disappears with this process.\n"
            "To resolve this:\n"
            "  1. start a server:        prefect server start    (in another shell)\n"
            "  2. point this shell at it: prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api\n"
            f"  3. run `cifar {what.split()[-1]}` again."
        )
    return url


def require_pool(pool: str, what: str) -> None:
    """A CifarError naming the server and the command that creates it, unless work pool ``pool``
    exists (Prefect's own deploy would answer a missing one with an HTTP 404 traceback)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise CifarError(
                f"{what}: the Prefect server at {api_url()} has no work pool named {pool!r}; nothing was "
                f"registered or run. To resolve this: create it (`prefect work-pool create {pool} --type process`), "
                "start its workers (`prefect worker start --pool " + pool + "`), and run the command again; "
                "`prefect work-pool ls` lists the pools there.") from None


def selected(settings: Settings, only: list[str] | None) -> list[PipelineConfig]:
    if only:
        missing = [n for n in only if n not in settings.pipelines]
        if missing:
            raise CifarError(f"{settings.config_path}: no pipeline named {', '.join(map(repr, missing))}; "
                             f"pipelines in this file: {', '.join(settings.pipelines)}")
        return [settings.pipelines[n] for n in only]
    return list(settings.pipelines.values())


def _parameters(p: PipelineConfig, config_path: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The flow parameters a deployment of ``p`` starts with: ``--set`` overrides ride along, so a
    served or pooled run trains what the command that registered it validated."""
    params: dict[str, Any] = {"pipeline": p.name, "config": str(config_path)}
    if overrides:
        params["overrides"] = dict(overrides)
    return params


def deployment_kwargs(p: PipelineConfig, config_path: Path,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every deployment of a pipeline carries, served or pooled (pure; tested)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    kwargs: dict[str, Any] = {
        "name": p.name,
        "parameters": _parameters(p, config_path, overrides),
        "description": p.description or None,
        "tags": [f"pipeline:{p.name}", f"model:{p.model}"],
        # one active run per deployment; a second trigger waits in the queue
        "concurrency_limit": ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
    }
    if p.schedule:
        from prefect.client.schemas.actions import DeploymentScheduleCreate

        # The schedule's runs carry scheduled=True (schedule.retrain: always seeds only those).
        kwargs["schedules"] = [DeploymentScheduleCreate(
            schedule=CronSchedule(cron=p.schedule.cron, timezone=p.schedule.timezone),
            parameters={"scheduled": True})]
    return kwargs


def predict_deployment_kwargs(p: PipelineConfig, config_path: Path,
                              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch-scoring deployment of a pipeline: its model scores what ``input`` names (given
    per run); no schedule, no concurrency limit (the scoring is cached and locked by content)."""
    return {
        "name": p.name,
        "parameters": _parameters(p, config_path, overrides),
        "description": f"Score images with the model of {p.name} (its champion unless `run` says otherwise)",
        "tags": [f"pipeline:{p.name}", "predict"],
    }


def make_folders(settings: Settings) -> None:
    """data_dir and artifacts_dir, created once by the command that deploys: a deployment's flow
    run never creates them (``flows.cluster.require_shared_folders``)."""
    for folder in (settings.data_dir, settings.artifacts_dir):
        folder.mkdir(parents=True, exist_ok=True)


def serve(settings: Settings, only: list[str] | None = None,
          overrides: dict[str, Any] | None = None) -> None:
    """Serve every pipeline as a deployment of flow ``cifar`` and one of ``cifar-predict``
    (blocks until interrupted); ``overrides`` (``--set``) become every deployment's parameter."""
    url = require_server("cifar serve")
    from prefect import serve as prefect_serve

    from flows.cifar import cifar
    from flows.jobs import heartbeat_seconds, heartbeat_warning
    from flows.predict import cifar_predict

    chosen = selected(settings, only)
    make_folders(settings)
    deployments = [cifar.to_deployment(**deployment_kwargs(p, settings.config_path, overrides)) for p in chosen]
    deployments += [cifar_predict.to_deployment(**predict_deployment_kwargs(p, settings.config_path, overrides))
                    for p in chosen]
    print(f"serving {len(deployments)} deployment(s) on {url}: "
          + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments))
    if overrides:
        print("every run of them with: " + " ".join(f"--set {k}={v!r}" for k, v in overrides.items()))
    print("run one with:  prefect deployment run cifar/<pipeline> --watch")
    print("score images:  prefect deployment run cifar-predict/<pipeline> --param input=FOLDER_OR_ARCHIVE --watch")
    # Served runs report every HEARTBEAT_SECONDS that they are alive: a killed one is marked
    # Crashed by the zombie automation (automations/README.md).
    heartbeat = heartbeat_seconds()
    if warning := heartbeat_warning(heartbeat):
        print(f"warning: {warning}")
    prefect_serve(*deployments, print_starting_message=False, heartbeat_seconds=heartbeat)


def deploy(settings: Settings, pool: str, only: list[str] | None = None, *,
           queue: str | None = None, image: str | None = None,
           variables: dict[str, Any] | None = None,
           overrides: dict[str, Any] | None = None) -> list[str]:
    """Register the same deployments to a work pool; its workers run them (scale-out).

    Each carries its pipeline's ``deploy:`` block (``flows.jobs``): job variables (``env`` and
    the rest), work queue and image, with ``variables`` (``--job-variable``), ``queue`` and
    ``image`` from the command line over them; and the config path relative to the code the
    workers pull, where the flow run starts."""
    require_server("cifar deploy")
    require_pool(pool, f"cifar deploy --pool {pool}")
    from flows.cifar import cifar
    from flows.jobs import config_parameter, heartbeat_seconds, heartbeat_warning, job_variables, with_heartbeats
    from flows.predict import cifar_predict

    make_folders(settings)
    config, warning = config_parameter(settings.config_path, PROJECT_DIR)
    lines = [f"warning: {w}" for w in (warning, heartbeat_warning(heartbeat_seconds())) if w]
    for flow, entrypoint, kwargs_of in ((cifar, ENTRYPOINT, deployment_kwargs),
                                        (cifar_predict, PREDICT_ENTRYPOINT, predict_deployment_kwargs)):
        for p in selected(settings, only):
            pulled = image or p.deploy.image
            # Workers on this machine (or a shared file system) run the flow from this checkout;
            # with an image, from the code inside it.
            source_flow = flow if pulled else flow.from_source(source=str(PROJECT_DIR), entrypoint=entrypoint)
            dep_id = source_flow.deploy(
                work_pool_name=pool, work_queue_name=queue or p.deploy.work_queue, image=pulled,
                job_variables=with_heartbeats(job_variables(p.deploy, variables)), build=False, push=False,
                print_next_steps=False, **kwargs_of(p, Path(config), overrides),
            )
            lines.append(f"registered {flow.name}/{p.name} to work pool {pool!r} ({dep_id})")
    lines.append(f"start a worker with:  prefect worker start --pool {pool}")
    lines.append("then run:             prefect deployment run cifar/<pipeline> --watch")
    return lines


def register_sweep_deployment(settings: Settings, pool: str, pipeline: str) -> tuple[str, str, str | None]:
    """Register (idempotently) ``cifar/<pipeline>-sweep`` on ``pool`` for ``cifar sweep --pool``:
    the pipeline's deployment as ``deploy`` registers it (pinned ``{pipeline, config}``, its
    ``deploy:`` block, heartbeats, from this checkout) but with no schedule and no concurrency
    limit, so the pool's workers run a sweep's children side by side. Returns its name, the config
    parameter its runs carry, and a warning (the config file outside the code the workers pull) or
    None. One such deployment per pipeline: its pool is the last sweep's."""
    require_server("cifar sweep")
    require_pool(pool, f"cifar sweep {pipeline} --pool {pool}")
    from flows.cifar import cifar
    from flows.jobs import config_parameter, job_variables, with_heartbeats

    p = selected(settings, [pipeline])[0]
    make_folders(settings)
    config, warning = config_parameter(settings.config_path, PROJECT_DIR)
    kwargs = deployment_kwargs(p, Path(config))
    for key in ("concurrency_limit", "schedules"):  # a sweep's runs go side by side, when it says
        kwargs.pop(key, None)
    kwargs.update(name=f"{p.name}-sweep", tags=[*kwargs["tags"], "sweep"],
                  description=f"The children of `cifar sweep {p.name} --pool`: runs of {p.name} with their overrides")
    source_flow = cifar if p.deploy.image else cifar.from_source(source=str(PROJECT_DIR), entrypoint=ENTRYPOINT)
    source_flow.deploy(work_pool_name=pool, work_queue_name=p.deploy.work_queue, image=p.deploy.image,
                       job_variables=with_heartbeats(job_variables(p.deploy, None)), build=False, push=False,
                       print_next_steps=False, **kwargs)
    return f"{cifar.name}/{kwargs['name']}", config, warning
