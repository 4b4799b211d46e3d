"""How `cifar predict` reads pipelines.yaml (flows/predict_cli.py): with flows.config, as every
command does. The command itself on saved runs: tests/predict/test_predict.py."""

from __future__ import annotations

import pytest


def test_predict_reads_the_file_with_flows_config(tmp_path, monkeypatch):
    """One reader: artifacts_dir as load_settings resolves it ($VARS, relative to the file, --set);
    a --set of any other key refused; every check made, the schedules' included."""
    from flows.predict_cli import predict_artifacts_dir
    from tasks.core.errors import ConfigError

    monkeypatch.setenv("H14_ROOT", str(tmp_path / "elsewhere"))
    cfg = tmp_path / "cfg" / "pipelines.yaml"
    cfg.parent.mkdir()
    cfg.write_text("artifacts_dir: $H14_ROOT/a\npipelines:\n  p: {schedule: {cron: '0 3 * * 1'}}\n")
    assert predict_artifacts_dir(cfg, []) == (tmp_path / "elsewhere" / "a").resolve()
    assert predict_artifacts_dir(cfg, ["artifacts_dir=../up"]) == (tmp_path / "up").resolve()
    with pytest.raises(ConfigError, match="--set training.epochs: cifar predict reads only artifacts_dir"):
        predict_artifacts_dir(cfg, ["training.epochs=1"])
    cfg.write_text("pipelines:\n  p: {modle: seed_cnn}\n")
    with pytest.raises(ConfigError, match="pipelines.p.modle: unknown key"):
        predict_artifacts_dir(cfg, [])
    cfg.write_text("pipelines:\n  p: {schedule: {cron: '61 * * * *'}}\n")
    with pytest.raises(ConfigError, match="pipelines.p.schedule.cron: Invalid cron string"):
        predict_artifacts_dir(cfg, [])
