"""pipelines.yaml: its shape, and reading it into checked settings for the flow and the CLI.

The file lists only what differs from the defaults, which live in the stage config dataclasses
beside the code that consumes them (``tasks/<stage>/config.py``). pydantic checks the file against
those very classes, so a new setting is one new field: typed, in the JSON Schema (``cifar check
--schema``) and checked for free. Added here: strict typing of the file as the JSON data it is (an
integer is not 5.0, "5" or true), every problem at once under its key path in plain words, the
cross-field ``problems()`` checks, ``--set KEY=VALUE`` overrides, and paths relative to the file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails, from_json, to_json

from flows.config_limits import NAME_RULE, PIPELINE_NAME, limit_problems, top_limit_problems
from flows.cron import schedule_problems
from flows.jobs import DeployConfig
from tasks.core.errors import ConfigError
from tasks.core.guards_files import NotRegularFileError, TooLargeError, read_regular
from tasks.core.guards_yaml import MAX_BYTES as MAX_CONFIG_BYTES
from tasks.core.guards_yaml import YAML11_BOOL_WORDS, YamlLimitError, load_bounded
from tasks.core.settings import SETTINGS
from tasks.download.config import DatasetConfig
from tasks.prepare.config import PrepareConfig
from tasks.report.config import ReportConfig
from tasks.store.config import PromoteConfig
from tasks.train.config import TrainingConfig
from tasks.train.models import MODELS

DEFAULT_CONFIG = "pipelines.yaml"


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule:`` in a pipeline: when `cifar serve` retrains it."""

    __pydantic_config__ = SETTINGS

    cron: str
    timezone: str = "UTC"
    # on-change: a scheduled run retrains only when the data, config or code changed (else it says
    # "nothing changed"); always: each scheduled run trains a challenger with a fresh seed.
    retrain: Literal["on-change", "always"] = "on-change"

    def problems(self) -> list[tuple[str, str]]:
        # The checks of Prefect's own validator (what `cifar serve` will build), without Prefect.
        return schedule_problems(self.cron, self.timezone)


@dataclass(frozen=True)
class PipelineConfig:
    """One entry under ``pipelines:``."""

    __pydantic_config__ = SETTINGS

    name: SkipJsonSchema[str] = ""  # its key under pipelines: (set by the loader, not in the file)
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
    deploy: DeployConfig = field(default_factory=DeployConfig)  # `cifar deploy --pool`: env, queue, image

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.model not in MODELS:
            out.append(("model", f"unknown model {self.model!r}; known models: {', '.join(sorted(MODELS))}"))
        if self.keep_last is not None and self.keep_last < 1:
            out.append(("keep_last", f"must be at least 1, got {self.keep_last}"))
        return out


PipelineName = Annotated[str, StringConstraints(pattern=PIPELINE_NAME)]


@dataclass(frozen=True, kw_only=True)
class PipelinesFile:
    """pipelines.yaml: where downloads and runs go, and the pipelines by name."""

    __pydantic_config__ = SETTINGS

    data_dir: Annotated[str, Field(min_length=1, description=(
        "downloads and the decoded dataset cache; relative to this file"))] = "data"
    artifacts_dir: Annotated[str, Field(min_length=1, description=(
        "runs (models, metrics, reports) and index.html; relative to this file"))] = "artifacts"
    train_slots: Annotated[int | None, Field(ge=1, description=(
        "trainings at once per machine (per GPU set when CUDA_VISIBLE_DEVICES pins the worker): OS "
        "locks in $CIFAR_SLOT_DIR (default <tmp>/cifar-slots) that die with their holder; null: 1"))] = None
    pipelines: Annotated[dict[PipelineName, PipelineConfig], Field(
        min_length=1, json_schema_extra={"additionalProperties": False},  # a name matches the pattern
        description="pipeline name (a letter or digit, then up to 63 of letters, digits, . _ -) -> what differs from the defaults")]


@dataclass(frozen=True)
class Settings:
    """The whole file, paths resolved against the file's own folder (never the CWD)."""

    config_path: Path
    data_dir: Path
    artifacts_dir: Path
    pipelines: dict[str, PipelineConfig]
    train_slots: int | None = None

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            raise ConfigError(
                [f"no pipeline named {name!r}; pipelines in this file: {', '.join(self.pipelines) or '(none)'}"],
                str(self.config_path),
            ) from None


_FILE = TypeAdapter(PipelinesFile)


@functools.cache
def config_schema() -> dict[str, Any]:
    """The JSON Schema of pipelines.yaml (what `cifar check --schema` prints)."""
    schema = _FILE.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "pipelines.yaml"}


# --------------------------------------------------------------------------- type check
Loc = tuple[str | int, ...]


def _plain(value: Any) -> Any:
    """``value`` as fresh JSON data: string keys, dates as text, and no YAML anchor sharing, so an
    override of one pipeline's aliased block (``training: *notebook``) does not leak into others."""
    return from_json(to_json(value, inf_nan_mode="constants", fallback=repr))


def _typed(raw: dict) -> tuple[PipelinesFile | None, list[ErrorDetails]]:
    """Type-check ``raw`` (changed in place) in pydantic's strict JSON mode; return its errors and
    the file built with every wrong value left out, so defaults stand in for them and the
    cross-field checks can still run (None when even that fails: a required key is wrong)."""
    reported: list[ErrorDetails] | None = None
    while True:
        try:
            built = _FILE.validate_json(to_json(raw, inf_nan_mode="constants"), strict=True)
            return built, reported or []
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        if [e for e in errors if _read_leniently(raw, e)]:
            continue  # look again at the values as read
        if reported is None:
            reported = errors
        if not [e for e in errors if _leave_out(raw, e["loc"])]:
            return None, reported


def _read_leniently(raw: dict, error: ErrorDetails) -> bool:
    """Take, as today, a number that PyYAML read as text (YAML 1.1 wants ``1.0e-4``, not ``1e-4``)
    and an empty block (``training:``) for all its defaults. True if ``raw`` was changed."""
    value = error["input"]
    if error["type"] == "float_type" and isinstance(value, str):
        try:
            value = float(value)  # "nan" and "inf" too: the next pass refuses them by name
        except ValueError:
            return False
    elif error["type"] == "dataclass_type" and value is None:
        value = {}
    else:
        return False
    *parents, key = error["loc"]
    node = raw
    for part in parents:
        node = node[part]
    node[key] = value
    return True


def _leave_out(raw: dict, loc: Loc) -> bool:
    """Delete the deepest key on ``loc`` that ``raw`` has (a list as a whole); True if one was."""
    node, parent, key = raw, None, None
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            break
        parent, key, node = node, part, node[part]
    if parent is None:
        return False
    del parent[key]
    return True


# --------------------------------------------------------------------------- messages
def _key_path(loc: Loc) -> str:
    """``('pipelines', 'a', 'dataset', 'mirrors', 0)`` -> ``pipelines.a.dataset.mirrors[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a mapping's key rather than its value
            out += f".{part}" if out else part
    return out


def _deref(node: dict) -> dict:
    while "$ref" in node:
        node = config_schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _non_null(node: dict) -> dict:
    node = _deref(node)
    options = [_deref(o) for o in node.get("anyOf", []) if o.get("type") != "null"]
    return options[0] if len(options) == 1 else node


def _schema_at(loc: Loc) -> dict:
    """The JSON Schema of the value at ``loc`` ({} where the file has no such place)."""
    node = config_schema()
    for part in loc:
        node = _non_null(node)
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif node.get("patternProperties"):  # a mapping's values (the pipelines)
            node = next(iter(node["patternProperties"].values()))
        elif isinstance(node.get("additionalProperties"), dict):  # a mapping's values (deploy.env)
            node = node["additionalProperties"]
        else:
            return {}
    return _deref(node)


def _describe(node: dict) -> str:
    """What a schema asks for, in words: "an integer", "one of 'adam', 'sgd'", "a mapping"."""
    node = _deref(node)
    if "enum" in node:
        return "one of " + ", ".join(repr(v) for v in node["enum"])
    if "anyOf" in node:
        return " or ".join(_describe(o) for o in node["anyOf"] if o.get("type") != "null")
    if node.get("type") == "array":
        return f"a list, each {_describe(node.get('items', {}))}"
    if node.get("type") == "object" and "properties" not in node:
        return "a mapping of names to settings"
    words = {"integer": "an integer", "number": "a number", "boolean": "true or false",
             "string": "a string", "object": "a mapping"}
    return words.get(node.get("type"), "a valid value")


def _message(error: ErrorDetails) -> str:
    """One pydantic error as ``key.path: what is wrong``, worded as the CLI always has."""
    kind, loc, value = error["type"], error["loc"], error["input"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = _non_null(_schema_at(loc[:-1])).get("properties", {})
        text = f"unknown key; valid keys here: {', '.join(valid)}"
    elif loc[-1:] == ("[key]",):
        text = f"{NAME_RULE}; got {value!r}. Rename the pipeline"
    elif kind == "missing":
        text = f"required key is missing ({_describe(_schema_at(loc))})"
    elif kind == "literal_error":
        text = f"{value!r} is not valid; expected {_describe(_schema_at(loc))}"
    elif kind == "finite_number":
        text = f"must be a finite number, got {value!r}"
    elif kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        text = f"expected {_describe(_schema_at(loc))}, got {value!r}"
        if kind == "bool_type" and str(value).lower() in YAML11_BOOL_WORDS:
            text += " (only true and false are booleans here, as in YAML 1.2)"
    elif kind in ("too_short", "string_too_short"):
        text = f"must not be empty, got {value!r}"
    else:
        text = error["msg"]  # pydantic's own words for anything this file does not expect
    return f"{_key_path(loc)}: {text}"


def _cross_field(obj: Any, loc: Loc, failed: list[Loc]) -> list[tuple[Loc, str]]:
    """The ``problems()`` of ``obj`` and of the configs inside it, except those about a key whose
    value already failed its type check (it was left out, so the check would judge the default)."""
    out: list[tuple[Loc, str]] = []
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(inner := getattr(obj, f.name)):
            out += _cross_field(inner, (*loc, f.name), failed)
    wrong = {bad[len(loc)] for bad in failed if len(bad) > len(loc) and bad[:len(loc)] == loc}
    for key, text in obj.problems() if hasattr(obj, "problems") else []:
        if key.split(".")[0].split("[")[0] not in wrong:
            out.append(((*loc, key), f"{_key_path(loc)}.{key}: {text}"))
    return out


def _check(raw: dict) -> tuple[PipelinesFile | None, list[str]]:
    """Every problem of the (overridden) file, type errors and cross-field ones, by pipeline."""
    pipes = raw.get("pipelines") if isinstance(raw.get("pipelines"), dict) else {}
    rank = {("pipelines", name): i for i, name in enumerate(pipes)}  # before _typed drops any
    errors: list[ErrorDetails] = []
    for key, body in pipes.items():
        if isinstance(body, dict) and "name" in body:  # a pipeline's name is its key
            errors.append({"type": "extra_forbidden", "loc": ("pipelines", key, "name"),
                           "input": body.pop("name"), "msg": ""})
    built, type_errors = _typed(raw)
    errors += type_errors
    found = [(e["loc"], _message(e)) for e in errors]
    if built is not None:
        failed = [e["loc"] for e in errors]
        for name, pipeline in built.pipelines.items():
            found += _cross_field(pipeline, ("pipelines", name), failed)
            wrong = {".".join(map(str, loc[2:])) for loc in failed if loc[:2] == ("pipelines", name)}
            found += [(("pipelines", name, key), text) for key, text in limit_problems(name, pipeline, wrong)]
        found += [(("top",), text) for text in top_limit_problems(built)]
    found.sort(key=lambda item: rank.get(item[0][:2], -1))  # top-level first, then by pipeline
    return (None if errors else built), [text for _, text in found]


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
            out[key.strip()] = load_bounded(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise ConfigError(problems, "command line")
    return out


def _apply(raw: dict, pipeline: str | None, overrides: dict[str, Any]) -> list[str]:
    """Set each dotted key in ``raw``: a top-level one, or a pipeline setting for the chosen
    pipeline (for every one when none is chosen, as `cifar check` does). Returns problems."""
    problems: list[str] = []
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] in ("data_dir", "artifacts_dir", "pipelines", "train_slots"):
            _set_path(raw, parts, dotted, _plain(value), problems)
            continue
        pipes = raw.get("pipelines")
        if not isinstance(pipes, dict):
            continue  # reported by the type check
        for name in [pipeline] if pipeline is not None else list(pipes):
            if name in pipes and pipes[name] is None:
                pipes[name] = {}  # an empty pipeline: all defaults
            if isinstance(pipes.get(name), dict):  # an unknown name or a wrong body is reported later
                _set_path(pipes[name], parts, dotted, _plain(value), problems)
    return problems


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
def _read(path: Path) -> dict:
    """The file as plain JSON data; ConfigError if it is missing, not YAML, or not a mapping."""
    src = str(path)
    try:  # a regular file (a FIFO or /dev/zero is refused unread), at most 1 MiB
        text = read_regular(path, MAX_CONFIG_BYTES, follow_links=True, what="pipelines file").decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found; pass --config FILE or create {path.name}"], src) from None
    except (NotRegularFileError, TooLargeError) as exc:
        raise ConfigError([str(exc)], src) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"], src) from None
    except OSError as exc:
        raise ConfigError([f"cannot be read ({exc.strerror or exc}); check its permissions"], src) from None
    try:  # aliases, depth and duplicate keys bounded while it is read (tasks.core.guards_yaml)
        raw = load_bounded(text) or {}
    except YamlLimitError as exc:
        raise ConfigError([f"refused: {exc}"], src) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], src) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(raw).__name__}"], src)
    return _plain(raw)


def _relative_to(base: Path, value: str) -> Path:
    given = Path(os.path.expandvars(value)).expanduser()
    return given if given.is_absolute() else (base / given).resolve()


def _resolved(name: str, cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """The pipeline named by its key, local dataset paths relative to the file like data_dir."""
    def local(source: str) -> str:
        return source if "://" in source else str(_relative_to(base, source))

    ds = cfg.dataset
    ds = dataclasses.replace(ds, source=local(ds.source) if ds.source else None,
                             mirrors=[local(m) for m in ds.mirrors])
    return dataclasses.replace(cfg, name=name, dataset=ds)


def load_settings(
    path: str | os.PathLike = DEFAULT_CONFIG,
    overrides: dict[str, Any] | None = None,
    pipeline: str | None = None,
) -> Settings:
    """Read, override and validate; raise ConfigError listing every problem with its key path.
    Every command reads the file here, and none of it imports Prefect, Keras or TensorFlow (the
    cron schedules are checked as Prefect would: ``flows.cron``)."""
    path = Path(path).expanduser().resolve()
    raw = _read(path)
    problems = _apply(raw, pipeline, overrides or {})
    names = list(raw["pipelines"]) if isinstance(raw.get("pipelines"), dict) else None
    built, found = _check(raw)
    problems += found
    if pipeline is not None and names is not None and pipeline not in names:
        problems.append(f"no pipeline named {pipeline!r}; pipelines in this file: {', '.join(names)}")
    if problems or built is None:
        raise ConfigError(problems, str(path))
    base = path.parent
    return Settings(
        path, _relative_to(base, built.data_dir).resolve(), _relative_to(base, built.artifacts_dir).resolve(),
        {name: _resolved(name, cfg, base) for name, cfg in built.pipelines.items()}, built.train_slots,
    )
