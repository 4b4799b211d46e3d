"""Where and how a work pool's workers run a pipeline: the ``deploy:`` block of pipelines.yaml,
``cifar deploy --job-variable KEY=VALUE``, and the config path a deployment carries.

Job variables are what the pool's base job template takes per deployment: ``env`` (a mapping
of environment variables: ``TF_CONFIG``, ``CUDA_VISIBLE_DEVICES``), ``image`` on Docker and
Kubernetes pools, and anything else the template names (``prefect work-pool get-default-base-job-template
--type process`` lists them). The block's values come first, the command line's over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field

from tasks.core.errors import ConfigError
from tasks.core.guards_yaml import load_bounded
from tasks.core.settings import SETTINGS


@dataclass(frozen=True)
class DeployConfig:
    """``deploy:`` in a pipeline: how `cifar deploy --pool` registers it (`cifar serve` runs it
    in its own process and ignores this)."""

    __pydantic_config__ = SETTINGS

    env: Annotated[dict[str, str], Field(description=(
        "environment of the flow run's process, e.g. TF_CONFIG or CUDA_VISIBLE_DEVICES"))] = field(default_factory=dict)
    work_queue: Annotated[str | None, Field(description="the work queue within the pool")] = None
    image: Annotated[str | None, Field(description="container image, on Docker and Kubernetes pools")] = None
    job_variables: Annotated[dict[str, Any], Field(description=(
        "any other job variable of the pool's base job template"))] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("env", "image"):
            if key in self.job_variables:
                out.append((f"job_variables.{key}", f"set it as deploy.{key}, not under job_variables"))
        if self.work_queue is not None and not self.work_queue.strip():
            out.append(("work_queue", "must not be empty (leave it out for the pool's default queue)"))
        return out


def parse_job_variables(items: list[str] | None) -> dict[str, Any]:
    """``--job-variable KEY=VALUE`` pairs. ``env.NAME=VALUE`` sets one environment variable,
    taken as written (``env.TF_CONFIG={"cluster": ...}`` stays a string); any other value is read
    as YAML (``stream_output=false`` is a bool)."""
    out: dict[str, Any] = {}
    problems = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or key in ("env", "env."):
            problems.append(f"--job-variable {item!r}: expected KEY=VALUE or env.NAME=VALUE, "
                            "e.g. --job-variable env.CUDA_VISIBLE_DEVICES=0")
            continue
        if key.startswith("env."):
            out.setdefault("env", {})[key[4:]] = raw
            continue
        try:
            out[key] = load_bounded(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    if problems:
        raise ConfigError(problems, "command line")
    return out


def job_variables(block: DeployConfig, cli: dict[str, Any] | None = None,
                  image: str | None = None) -> dict[str, Any]:
    """The deployment's job variables: the block's, then the command line's over them (``env``
    merged name by name). ``image`` only on the pools that run one (given with ``--image``)."""
    cli = dict(cli or {})
    out: dict[str, Any] = {**block.job_variables}
    env = {**block.env, **(cli.pop("env", None) or {})}
    if env:
        out["env"] = env
    out.update(cli)
    if image or block.image:
        out["image"] = image or block.image
    return out


# How often a served or pooled flow run reports that its process is alive (the event
# prefect.flow-run.heartbeat): Prefect's minimum, 30 s (prefect.flow_engine.MINIMUM_HEARTBEAT_INTERVAL;
# its default is 180 s). The zombie automation (automations/notify.yaml, cifar-run-zombie) marks a
# run Crashed when none came for 90 s, 3 of these: keep the two in step (automations/README.md).
HEARTBEAT_SECONDS = 30
HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def heartbeat_seconds() -> int | None:
    """The heartbeat period of the flow runs this process serves or deploys: the user's own
    setting (either variable of ``HEARTBEAT_ENV``, or the profile) when there is one, else
    ``HEARTBEAT_SECONDS``. None only when the user switched heartbeats off."""
    from prefect.settings import get_current_settings

    flows = get_current_settings().flows
    if "heartbeat_frequency" in flows.model_fields_set:
        return flows.heartbeat_frequency
    return HEARTBEAT_SECONDS


def heartbeat_warning(seconds: int | None) -> str | None:
    """What to change when ``seconds`` does not fit the zombie automation's 90 s window."""
    if seconds is None:
        return ("flow run heartbeats are off (your PREFECT_FLOWS_HEARTBEAT_FREQUENCY): a killed run "
                "stays Running; unset it to have killed runs marked Crashed (automations/README.md)")
    if seconds > HEARTBEAT_SECONDS:
        return (f"flow runs report every {seconds} s (your PREFECT_FLOWS_HEARTBEAT_FREQUENCY): install the "
                f"automations with `python automations/install.py --heartbeat-window {3 * seconds} ...`, "
                "or the zombie automation marks healthy runs Crashed")
    return None


def with_heartbeats(variables: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with the heartbeat period in the flow run's ``env``, unless that env (the
    ``deploy:`` block or ``--job-variable env.NAME=...``) already names it."""
    env = dict(variables.get("env") or {})
    seconds = heartbeat_seconds()
    if seconds is None or any(name in env for name in HEARTBEAT_ENV):
        return variables
    env[HEARTBEAT_ENV[0]] = str(seconds)
    return {**variables, "env": env}


def config_parameter(config_path: str | os.PathLike, code_dir: str | os.PathLike) -> tuple[str, str | None]:
    """The config path a pooled deployment carries, and a warning: relative to the code the
    workers pull (the flow run starts there), so it means the same file on every machine; an
    absolute path when the file lies outside that code, which only this machine can read."""
    path, code = Path(config_path).resolve(), Path(code_dir).resolve()
    try:
        return path.relative_to(code).as_posix(), None
    except ValueError:
        return str(path), (f"{path} is outside the code the workers pull ({code}): deployments carry its "
                           "absolute path, which a worker on another machine cannot read. Keep the "
                           "pipelines file in the project, or at the same path on every machine.")
