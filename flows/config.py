"""pipelines.yaml: load, apply overrides, type-check, and report every problem at once.

The file lists only what differs from the defaults; the defaults live in the dataclasses beside
the code that consumes them (``tasks/*.py``). Typing is driven by those dataclasses' annotations,
so a new setting is one new field, checked here for free.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tasks.core.errors import ConfigError
from tasks.download import DatasetConfig
from tasks.prepare import PrepareConfig
from tasks.report import ReportConfig
from tasks.store import PromoteConfig
from tasks.train import MODELS, TrainingConfig

DEFAULT_CONFIG = "pipelines.yaml"


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule:`` in a pipeline: when `cifar serve` retrains it."""

    cron: str
    timezone: str = "UTC"

    def problems(self) -> list[tuple[str, str]]:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError as exc:
            return [(str(e["loc"][0]) if e["loc"] else "cron", e["msg"].removeprefix("Value error, "))
                    for e in exc.errors()]
        return []


@dataclass(frozen=True)
class PipelineConfig:
    """One entry under ``pipelines:``."""

    name: str
    description: str = ""
    expect: str = ""  # what a user should expect: accuracy, wall time, hardware
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: str = "seed_cnn"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    keep_last: int | None = None  # prune older runs that are not the champion
    report: ReportConfig = field(default_factory=ReportConfig)
    schedule: ScheduleConfig | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.model not in MODELS:
            out.append(("model", f"unknown model {self.model!r}; known models: {', '.join(sorted(MODELS))}"))
        if self.keep_last is not None and self.keep_last < 1:
            out.append(("keep_last", f"must be at least 1, got {self.keep_last}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Settings:
    """The whole file, paths resolved against the file's own folder (never the CWD)."""

    config_path: Path
    data_dir: Path
    artifacts_dir: Path
    pipelines: dict[str, PipelineConfig]

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            raise ConfigError(
                [f"no pipeline named {name!r}; pipelines in this file: {', '.join(self.pipelines) or '(none)'}"],
                str(self.config_path),
            ) from None


# --------------------------------------------------------------------------- typing engine
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, keypath: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the typed value (or None on error)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(arg, value, keypath, trial)
            if not trial:
                return out
        # report against the single non-null alternative when there is one (clearer message)
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            return _convert(non_null[0], value, keypath, problems)
        problems.append(f"{keypath}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{keypath}: {value!r} is not valid; expected {_type_name(tp)}")
            return None
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{keypath}: expected {_type_name(tp)}, got {value!r}")
            return None
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{keypath}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, keypath, problems)
    if tp is float and isinstance(value, str):
        # PyYAML reads `1e-4` (no dot) as a string; accept what is plainly a number
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[tp]
    if not ok(value):
        problems.append(f"{keypath}: expected {_type_name(tp)}, got {value!r}")
        return None
    return float(value) if tp is float else value


def build(cls: type, data: Any, keypath: str, problems: list[str], **fixed: Any) -> Any:
    """Build dataclass ``cls`` from a mapping, appending every problem (with its key path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{keypath}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    before = len(problems)
    for key in data:
        if key not in fields:
            problems.append(
                f"{keypath}.{key}: unknown key; valid keys here: {', '.join(fields)}"
            )
    kwargs: dict[str, Any] = dict(fixed)
    failed: set[str] = set()
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name in data:
            n = len(problems)
            value = _convert(hints[name], data[name], f"{keypath}.{name}", problems)
            if len(problems) == n:
                kwargs[name] = value
                continue
            failed.add(name)
            if required:
                return None
        elif required:
            problems.append(f"{keypath}.{name}: required key is missing ({_type_name(hints[name])})")
            return None
    # Cross-field checks still run when some fields were wrong (those fall back to their
    # defaults, and checks about them are not repeated), so one pass reports everything.
    obj = cls(**kwargs)
    if hasattr(obj, "problems"):
        for sub, msg in obj.problems():
            if sub.split(".")[0].split("[")[0] not in failed:
                problems.append(f"{keypath}.{sub}: {msg}")
    return None if len(problems) > before else obj


# --------------------------------------------------------------------------- overrides
def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs to {dotted key: YAML-typed value} (``1`` is an int, ``true`` a bool)."""
    out: dict[str, Any] = {}
    problems = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=1")
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise ConfigError(problems, "command line")
    return out


TOP_LEVEL = ("data_dir", "artifacts_dir")


def _apply(raw: dict, pipeline: str | None, overrides: dict[str, Any], problems: list[str]) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] in TOP_LEVEL or parts[0] == "pipelines":
            target, path = raw, parts
        else:
            # a pipeline setting: for the chosen pipeline, or for every one (e.g. `cifar check`)
            pipes = raw.get("pipelines")
            if not isinstance(pipes, dict):
                continue  # reported by the loader
            names = [pipeline] if pipeline is not None else list(pipes)
            for name in names:
                if not isinstance(pipes.get(name), dict):
                    pipes[name] = {}
                _set_path(pipes[name], parts, dotted, copy.deepcopy(value), problems)
            continue
        _set_path(target, path, dotted, value, problems)


def _set_path(target: dict, path: list[str], dotted: str, value: Any, problems: list[str]) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            problems.append(f"--set {dotted}: {part!r} is not a mapping")
            return
        target = nxt
    target[path[-1]] = value


# --------------------------------------------------------------------------- loading
def _unalias(obj: Any) -> Any:
    """A tree copy without YAML anchor sharing, so an override of one pipeline's aliased block
    (``training: *notebook``) does not leak into the others (deepcopy would keep the sharing)."""
    if isinstance(obj, dict):
        return {k: _unalias(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unalias(v) for v in obj]
    return obj


def _resolve_local(source: str, base: Path) -> str:
    if "://" in source:
        return source
    p = Path(os.path.expandvars(source)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_sources(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """Local dataset paths are relative to the config file, like data_dir."""
    ds = cfg.dataset
    ds = dataclasses.replace(
        ds,
        source=_resolve_local(ds.source, base) if ds.source else None,
        mirrors=[_resolve_local(m, base) for m in ds.mirrors],
    )
    return dataclasses.replace(cfg, dataset=ds)


def load_settings(
    path: str | os.PathLike = DEFAULT_CONFIG,
    overrides: dict[str, Any] | None = None,
    pipeline: str | None = None,
) -> Settings:
    """Read, override and validate; raise ConfigError listing every problem with its key path."""
    path = Path(path).expanduser().resolve()
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found; pass --config FILE or create {path.name}"], src) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], src) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(raw).__name__}"], src)
    raw = _unalias(raw)
    problems: list[str] = []
    _apply(raw, pipeline, overrides or {}, problems)

    for key in raw:
        if key not in (*TOP_LEVEL, "pipelines"):
            problems.append(f"{key}: unknown key; valid keys here: {', '.join((*TOP_LEVEL, 'pipelines'))}")
    dirs = {}
    for key, default in (("data_dir", "data"), ("artifacts_dir", "artifacts")):
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: expected a path string, got {value!r}")
            continue
        p = Path(os.path.expandvars(value)).expanduser()
        dirs[key] = p if p.is_absolute() else (path.parent / p)
    pipes_raw = raw.get("pipelines")
    pipelines: dict[str, PipelineConfig] = {}
    if not isinstance(pipes_raw, dict) or not pipes_raw:
        problems.append(f"pipelines: expected a mapping of pipeline names to settings, got {pipes_raw!r}")
    else:
        for name, body in pipes_raw.items():
            if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
                problems.append(f"pipelines.{name}: a pipeline name uses letters, digits, - and _ only")
                continue
            cfg = build(PipelineConfig, body, f"pipelines.{name}", problems, name=name)
            if cfg is not None:
                pipelines[name] = _resolve_sources(cfg, path.parent)
    if pipeline is not None and isinstance(pipes_raw, dict) and pipeline not in pipes_raw:
        problems.append(f"no pipeline named {pipeline!r}; pipelines in this file: {', '.join(map(str, pipes_raw))}")
    if problems:
        raise ConfigError(problems, src)
    return Settings(path, dirs["data_dir"].resolve(), dirs["artifacts_dir"].resolve(), pipelines)
