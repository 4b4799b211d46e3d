"""The `cifar` command as a user meets it: real subprocesses, exit codes, messages, no tracebacks."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser, format_data_summary

REPO = Path(__file__).resolve().parents[2]
CIFAR = [sys.executable, "-m", "flows.cli"]


def cifar(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PREFECT_API_URL": "", **(env or {})}
    return subprocess.run([*CIFAR, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.subprocess
def test_check_prints_the_shipped_pipelines():
    r = cifar("check")
    assert r.returncode == 0, r.stderr
    assert "pipelines.yaml: OK" in r.stdout
    assert "train " in r.stdout and "cron '0 3 * * 1' UTC" in r.stdout
    assert "smoke " in r.stdout and "limit 10000/2000, 1 epoch(s)" in r.stdout


@pytest.mark.subprocess
def test_check_on_a_broken_file_lists_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(textwrap.dedent("""
        pipelines:
          a: {training: {epochs: many}, model: vgg}
          b: {dataset: {source: "https://example.org/x.tgz"}, schedule: {cron: "not a cron"}}
    """))
    r = cifar("check", "--config", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "4 problem(s)" in r.stderr
    for key in ("pipelines.a.training.epochs", "pipelines.a.model", "pipelines.b.dataset.source",
                "pipelines.b.schedule.cron"):
        assert key in r.stderr


@pytest.mark.subprocess
def test_set_is_shown_by_check():
    r = cifar("check", "--set", "training.epochs=3")
    assert r.returncode == 0 and "3 epoch(s)" in r.stdout


@pytest.mark.subprocess
def test_set_is_type_checked():
    r = cifar("check", "--set", "training.batch_size=big")
    assert r.returncode == 2 and "training.batch_size: expected an integer, got 'big'" in r.stderr


@pytest.mark.subprocess
def test_set_without_a_value_is_refused():
    r = cifar("check", "--set", "nonsense")
    assert r.returncode == 2 and "expected KEY=VALUE" in r.stderr


@pytest.mark.subprocess
def test_check_schema_prints_a_json_schema_the_shipped_file_meets():
    r = cifar("check", "--schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"data_dir", "artifacts_dir", "train_slots", "pipelines"}
    pipeline = schema["$defs"]["PipelineConfig"]
    assert pipeline["additionalProperties"] is False
    assert {"dataset", "prepare", "model", "training", "promote", "report", "schedule", "deploy"} <= set(pipeline["properties"])
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values())
    shipped = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    broken = copy.deepcopy(shipped)
    broken["pipelines"]["train"]["keep_last"] = "many"
    broken["pipelines"]["smoke"]["colour"] = "blue"
    try:
        import jsonschema
    except ImportError:  # no validator installed: the structure it would check, by hand
        assert schema["properties"]["pipelines"]["patternProperties"]
        assert schema["$defs"]["TrainingConfig"]["properties"]["epochs"]["type"] == "integer"
        return
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(shipped)) == []
    wrong = sorted(list(e.absolute_path) for e in validator.iter_errors(broken))
    assert wrong == [["pipelines", "smoke"], ["pipelines", "train", "keep_last"]]


@pytest.mark.subprocess
def test_unknown_pipeline_is_a_clear_error():
    r = cifar("run", "nope")
    assert r.returncode == 2 and "no pipeline named 'nope'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.subprocess
def test_serve_refuses_the_embedded_api_and_says_how_to_start_a_server():
    r = cifar("serve")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "prefect server start" in r.stderr and "PREFECT_API_URL" in r.stderr


@pytest.mark.parametrize("command", ["run", "data", "check", "serve", "deploy", "runs", "report", "predict", "endpoint", "sweep"])
def test_every_command_has_help_with_config_and_set(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--set KEY=VALUE" in out


def test_data_summary_formatting():
    text = format_data_summary({
        "pipeline": "p",
        "dataset": {"fingerprint": "f00", "path": "/d", "train_size": 4, "test_size": 2,
                    "input_shape": [32, 32, 3], "classes": ["cat", "dog"]},
        "validation": {"counts": {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}},
                       "channel_mean": [0.5, 0.25, 0.125], "channel_std": [0.1, 0.2, 0.3],
                       "train_test_duplicates": 0,
                       "checks": [{"name": "scaled range", "passed": True, "detail": "min 0 max 1"}]},
        "stages": {"download": {"seconds": 0.5, "cache_hit": True}},
    })
    assert "4 train + 2 test images of shape (32, 32, 3), 2 classes" in text
    assert "  cat                  2       1" in text
    assert "channel mean [0.5000, 0.2500, 0.1250]" in text
    assert "1/1 checks passed" in text and "download: 0.50 s (cached)" in text


def test_an_unreachable_url_gets_a_next_step():
    from flows.cli import _hint
    from tasks.download.errors import ChecksumError, TransientDownloadError

    hint = _hint(TransientDownloadError("https://x/c.tgz: gaierror"))
    assert "dataset.source" in hint and "mirrors" in hint and "smoke-jpeg" in hint
    assert _hint(ChecksumError("bad")) is None  # its own message already says what to do


def test_disk_faults_name_the_path_and_the_remedy():
    import errno

    from flows.cli import disk_fault

    full = disk_fault(OSError(errno.ENOSPC, "No space left on device", "/big/artifacts/train/run.tmp"))
    assert "/big/artifacts/train/run.tmp" in full and "ENOSPC" in full and "free space" in full
    assert "--set artifacts_dir=" in full and "Nothing half-written" in full
    assert "remount" in disk_fault(OSError(errno.EROFS, "Read-only file system", "/ro/x"))


def test_faults_that_are_not_the_users_disk_pass_through():
    import errno

    from flows.cli import disk_fault

    assert disk_fault(OSError(errno.ECONNREFUSED, "refused")) is None  # not the user's disk
    assert disk_fault(ValueError("x")) is None and disk_fault(None) is None


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_a_file_where_data_dir_should_be_is_a_clear_error_not_a_traceback(tmp_path):
    """A real OS fault (root can't bypass it, unlike a read-only permission): data_dir runs
    through a plain file. The command says which path and what to do, with no traceback."""
    blocker = tmp_path / "disk"
    blocker.write_text("not a folder")
    r = cifar("data", "smoke", "--set", f"data_dir={blocker}/cifar", "--set", f"artifacts_dir={tmp_path}/a")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot use {blocker}/cifar" in r.stderr and "ENOTDIR" in r.stderr, r.stderr
    assert "--set data_dir=" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert blocker.read_text() == "not a folder"
