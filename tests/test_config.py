"""pipelines.yaml loading: defaults, overrides, and every error at once with its key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.config import load_settings, parse_set
from tasks.core.errors import ConfigError
from tasks.download import OFFICIAL

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipelines.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, **kw)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2
    return info.value.problems


def test_shipped_file_loads_with_train_and_smoke():
    s = load_settings(REPO / "pipelines.yaml")
    train, smoke = s.pipelines["train"], s.pipelines["smoke"]
    assert train.model == "seed_cnn"
    assert (train.training.epochs, train.training.batch_size) == (20, 32)
    opt = train.training.optimizer
    assert (opt.name, opt.learning_rate, opt.decay) == ("rmsprop", 1e-4, 1e-6)
    assert train.schedule.cron == "0 3 * * 1" and train.schedule.timezone == "UTC"
    assert train.dataset.format == "cifar10-binary" and train.dataset.source is None
    assert smoke.training.epochs == 1
    assert (smoke.dataset.limit_train, smoke.dataset.limit_test) == (10000, 2000)
    assert s.data_dir == REPO / "data" and s.artifacts_dir == REPO / "artifacts"


def test_defaults_fill_what_the_file_omits_and_paths_follow_the_file(tmp_path):
    p = write(tmp_path, """
        data_dir: cache
        pipelines:
          tiny: {}
    """)
    s = load_settings(p)
    t = s.pipelines["tiny"]
    assert t.name == "tiny" and t.model == "seed_cnn" and t.training.epochs == 20
    assert t.dataset.source is None and t.schedule is None
    assert s.data_dir == tmp_path / "cache"
    assert s.artifacts_dir == tmp_path / "artifacts"


def test_local_dataset_source_is_relative_to_the_file(tmp_path):
    p = write(tmp_path, """
        pipelines:
          mine: {dataset: {format: image-folder, source: imgs/set.tar.gz}}
    """)
    assert load_settings(p).pipelines["mine"].dataset.source == str(tmp_path / "imgs/set.tar.gz")


def test_every_problem_is_reported_at_once_with_key_paths(tmp_path):
    p = write(tmp_path, """
        data_dir: data
        colour: blue
        pipelines:
          a:
            modle: seed_cnn
            training: {epochs: ten, batch_size: 32.5, optimizer: {name: adamw}}
            schedule: {cron: "61 * * * *"}
          b:
            model: resnet9000
            dataset: {format: tfrecords, limit_train: -5}
          c:
            dataset: {source: "https://example.org/cifar.tgz"}
            schedule: {cron: "0 3 * * *", timezone: Mars/Olympus}
    """)
    got = problems(p)
    expected = [
        "colour: unknown key; valid keys here: data_dir, artifacts_dir, pipelines",
        "pipelines.a.modle: unknown key; valid keys here: description, expect, dataset, prepare, model",
        "pipelines.a.training.epochs: expected an integer, got 'ten'",
        "pipelines.a.training.batch_size: expected an integer, got 32.5",
        "pipelines.a.training.optimizer.name: 'adamw' is not valid; expected one of 'rmsprop', 'adam', 'sgd'",
        "pipelines.a.schedule.cron: Invalid cron string",
        "pipelines.b.model: unknown model 'resnet9000'; known models: seed_cnn",
        "pipelines.b.dataset.format: 'tfrecords' is not valid",
        "pipelines.c.dataset.source: 'https://example.org/cifar.tgz' is downloaded over the network but the dataset has no sha256",
        "pipelines.c.schedule.timezone: Invalid timezone",
    ]
    for want in expected:
        assert any(g.startswith(want) or want in g for g in got), (want, got)
    assert "pipelines.b.dataset.limit_train: must be positive, got -5" in got
    assert len(got) == len(expected) + 1, got


def test_value_checks_after_types(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a:
            dataset: {limit_train: 0, sha256: abc}
            training: {epochs: 0}
            keep_last: 0
    """)
    got = problems(p)
    assert "pipelines.a.dataset.sha256: 'abc' is not 64 hex digits" in got
    assert "pipelines.a.dataset.limit_train: must be positive, got 0" in got
    assert "pipelines.a.training.epochs: must be at least 1, got 0" in got
    assert "pipelines.a.keep_last: must be at least 1, got 0" in got


def test_official_url_needs_no_checksum_but_a_mirror_does(tmp_path):
    url = OFFICIAL["cifar10-binary"]["url"]
    p = write(tmp_path, f"""
        pipelines:
          ok: {{dataset: {{source: "{url}"}}}}
          mirror: {{dataset: {{mirrors: ["http://127.0.0.1:9/c.tgz"]}}}}
    """)
    got = problems(p)
    assert len(got) == 1 and got[0].startswith("pipelines.mirror.dataset.mirrors[0]:")


def test_missing_file_bad_yaml_and_unknown_pipeline(tmp_path):
    assert "file not found" in problems(tmp_path / "nope.yaml")[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines: [unclosed\n")
    assert "not valid YAML" in problems(bad)[0]
    p = write(tmp_path, "pipelines: {a: {}}\n")
    assert problems(p, pipeline="zzz") == ["no pipeline named 'zzz'; pipelines in this file: a"]


def test_set_values_are_typed_like_the_file(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a: {training: {epochs: 20}}
          b: {}
    """)
    ov = parse_set(["training.epochs=1", "dataset.limit_train=500", "training.augment=true",
                    "training.optimizer.learning_rate=3e-4", "data_dir=/tmp/x cache"])
    assert ov == {"training.epochs": 1, "dataset.limit_train": 500, "training.augment": True,
                  # YAML 1.1 reads 3e-4 (no dot) as text; the loader types it as the number it is
                  "training.optimizer.learning_rate": "3e-4", "data_dir": "/tmp/x cache"}
    s = load_settings(p, ov, pipeline="a")
    a = s.pipelines["a"]
    assert (a.training.epochs, a.dataset.limit_train, a.training.augment) == (1, 500, True)
    assert a.training.optimizer.learning_rate == 3e-4
    assert s.data_dir == Path("/tmp/x cache")
    assert s.pipelines["b"].training.epochs == 20  # only the chosen pipeline is overridden
    got = problems(p, overrides=parse_set(["training.epochs=many", "training.bogus=1"]), pipeline="a")
    assert "pipelines.a.training.epochs: expected an integer, got 'many'" in got
    assert any(g.startswith("pipelines.a.training.bogus: unknown key") for g in got)


def test_override_of_an_aliased_block_does_not_leak(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a: {training: &t {epochs: 20}}
          b: {training: *t}
    """)
    s = load_settings(p, {"training.epochs": 2}, pipeline="a")
    assert s.pipelines["a"].training.epochs == 2 and s.pipelines["b"].training.epochs == 20


def test_malformed_set():
    with pytest.raises(ConfigError) as info:
        parse_set(["epochs"])
    assert "expected KEY=VALUE" in str(info.value)
