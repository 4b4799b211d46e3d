"""pipelines.yaml loading: defaults, overrides, and every error at once with its key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.config import config_schema, load_settings, parse_set
from tasks.core.errors import ConfigError
from tasks.download.config import OFFICIAL

REPO = Path(__file__).resolve().parents[2]


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


def test_defaults_fill_what_the_file_omits(tmp_path):
    p = write(tmp_path, """
        data_dir: cache
        pipelines:
          tiny: {}
    """)
    t = load_settings(p).pipelines["tiny"]
    assert t.name == "tiny" and t.model == "seed_cnn" and t.training.epochs == 20
    assert t.dataset.source is None and t.schedule is None


def test_relative_folders_follow_the_file(tmp_path):
    p = write(tmp_path, """
        data_dir: cache
        pipelines:
          tiny: {}
    """)
    s = load_settings(p)
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
        "colour: unknown key; valid keys here: data_dir, artifacts_dir, train_slots, pipelines",
        "pipelines.a.modle: unknown key; valid keys here: description, expect, dataset, prepare, model",
        "pipelines.a.training.epochs: expected an integer, got 'ten'",
        "pipelines.a.training.batch_size: expected an integer, got 32.5",
        "pipelines.a.training.optimizer.name: 'adamw' is not valid; expected one of 'rmsprop', 'adam', 'sgd'",
        "pipelines.a.schedule.cron: Invalid cron string",
        "pipelines.b.model: unknown model 'resnet9000'; known models: airbench, seed_cnn",
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


def test_a_missing_file_is_a_problem(tmp_path):
    assert "file not found" in problems(tmp_path / "nope.yaml")[0]


def test_bad_yaml_is_a_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines: [unclosed\n")
    assert "not valid YAML" in problems(bad)[0]


def test_an_unknown_pipeline_is_a_problem_naming_those_there_are(tmp_path):
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


def test_a_set_value_of_the_wrong_type_or_key_is_a_problem(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a: {training: {epochs: 20}}
          b: {}
    """)
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


def test_non_finite_numbers_are_refused_with_their_key_path(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a:
            training: {epochs: .inf, optimizer: {learning_rate: .nan, decay: -.inf}}
            dataset: {read_timeout: .inf}
            promote: {min_delta: .nan}
    """)
    got = problems(p)
    assert "pipelines.a.training.optimizer.learning_rate: must be a finite number, got nan" in got
    assert "pipelines.a.training.optimizer.decay: must be a finite number, got -inf" in got
    assert "pipelines.a.dataset.read_timeout: must be a finite number, got inf" in got
    assert "pipelines.a.promote.min_delta: must be a finite number, got nan" in got
    assert "pipelines.a.training.epochs: expected an integer, got inf" in got
    assert len(got) == 5, got  # no cross-field check repeats them


def test_non_finite_set_values_are_refused_with_their_key_path(tmp_path):
    ok = write(tmp_path, "pipelines: {a: {}}\n")
    overrides = parse_set(["training.optimizer.learning_rate=inf", "training.optimizer.decay=nan",
                           "promote.min_delta=-Infinity"])
    got = problems(ok, overrides=overrides, pipeline="a")
    assert got == ["pipelines.a.training.optimizer.learning_rate: must be a finite number, got inf",
                   "pipelines.a.training.optimizer.decay: must be a finite number, got nan",
                   "pipelines.a.promote.min_delta: must be a finite number, got -inf"], got
    got = problems(ok, overrides={"training.optimizer.momentum": float("nan")})
    assert got == ["pipelines.a.training.optimizer.momentum: must be a finite number, got nan"]


def test_numbers_and_booleans_are_what_they_say(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a:
            training: {epochs: 5.0, batch_size: "32", augment: 1, optimizer: {momentum: true}}
            keep_last: true
    """)
    assert sorted(problems(p)) == [
        "pipelines.a.keep_last: expected an integer, got True",
        "pipelines.a.training.augment: expected true or false, got 1",
        "pipelines.a.training.batch_size: expected an integer, got '32'",
        "pipelines.a.training.epochs: expected an integer, got 5.0",
        "pipelines.a.training.optimizer.momentum: expected a number, got True",
    ]


def test_yes_no_on_off_are_words_not_booleans(tmp_path):
    # YAML 1.1 reads them as booleans: `flip: off` would be false, refused as no flip choice
    p = write(tmp_path, """
        pipelines:
          a: {training: {recipe: {flip: off}}, promote: {auto: no}}
          b: {training: {recipe: {flip: random}}, promote: {auto: false}}
    """)
    assert problems(p) == ["pipelines.a.promote.auto: expected true or false, got 'no' "
                           "(only true and false are booleans here, as in YAML 1.2)"]
    p.write_text(p.read_text().replace("auto: no", "auto: FALSE"))
    s = load_settings(p)
    assert s.pipelines["a"].training.recipe.flip == "off" and s.pipelines["a"].promote.auto is False
    s = load_settings(p, parse_set(["training.recipe.flip=off"]), "b")  # the same on the command line
    assert s.pipelines["b"].training.recipe.flip == "off"


def test_an_integer_or_a_number_read_as_text_is_a_number(tmp_path):
    # an integer is a number, and so is a number PyYAML read as text (no dot: 1e-4)
    p = write(tmp_path, "pipelines: {a: {training: {optimizer: {learning_rate: 1e-4, decay: 0}}}}\n")
    opt = load_settings(p).pipelines["a"].training.optimizer
    assert (opt.learning_rate, opt.decay) == (1e-4, 0.0) and isinstance(opt.decay, float)


def test_an_empty_block_means_its_defaults(tmp_path):
    p = write(tmp_path, """
        pipelines:
          bare:
          half: {training: , schedule: }
    """)
    s = load_settings(p, {"dataset.limit_train": 50}, pipeline="bare")
    assert s.pipelines["bare"].dataset.limit_train == 50 and s.pipelines["bare"].training.epochs == 20
    assert s.pipelines["half"].training.epochs == 20 and s.pipelines["half"].schedule is None


def test_a_pipeline_is_named_by_its_key(tmp_path):
    p = write(tmp_path, """
        pipelines:
          a: {name: b}
          "two words": {}
          ok-name_2: {schedule: {cronn: "0 3 * * *"}}
    """)
    got = problems(p)
    assert got[0].startswith("pipelines.a.name: unknown key; valid keys here: description, expect")
    assert ("pipelines.two words: a pipeline name is a portable file name: a letter or digit, then at most "
            "63 letters, digits, '.', '_' or '-'; got 'two words'. Rename the pipeline") in got
    assert "pipelines.ok-name_2.schedule.cron: required key is missing (a string)" in got
    assert "pipelines.ok-name_2.schedule.cronn: unknown key; valid keys here: cron, timezone, retrain" in got
    assert len(got) == 4, got
    assert load_settings(write(tmp_path, "pipelines: {x-1: {}}\n")).pipelines["x-1"].name == "x-1"


def test_the_file_needs_pipelines(tmp_path):
    for text, want in [
        ("data_dir: d\n", "pipelines: required key is missing (a mapping of names to settings)"),
        ("pipelines: {}\n", "pipelines: must not be empty, got {}"),
        ("pipelines: [a]\n", "pipelines: expected a mapping of names to settings, got ['a']"),
        ("pipelines: {a: {}}\ndata_dir: ''\n", "data_dir: must not be empty, got ''"),
    ]:
        assert problems(write(tmp_path, text)) == [want]


def test_set_on_an_unknown_pipeline_does_not_create_it(tmp_path):
    p = write(tmp_path, "pipelines: {a: {}}\n")
    assert problems(p, overrides={"training.epochs": 1}, pipeline="zzz") == [
        "no pipeline named 'zzz'; pipelines in this file: a"]


def test_the_schema_describes_the_file():
    schema = config_schema()
    pipeline = schema["$defs"]["PipelineConfig"]
    assert pipeline["additionalProperties"] is False and "name" not in pipeline["properties"]
    assert {"dataset", "prepare", "model", "training", "promote", "keep_last", "report",
            "schedule"} <= set(pipeline["properties"])
    assert schema["$defs"]["OptimizerConfig"]["properties"]["name"]["enum"] == ["rmsprop", "adam", "sgd"]
    assert schema["required"] == ["pipelines"] and schema["additionalProperties"] is False


def test_sha256_url_in_the_config(tmp_path):
    from flows.config import load_settings
    from tasks.core.errors import ConfigError

    p = tmp_path / "pipelines.yaml"
    p.write_text("pipelines:\n  a:\n    dataset: {source: 'https://example.org/c.tar.gz', "
                 "sha256_url: 'https://example.org/c.tar.gz.sha256'}\n    schedule: {cron: '0 3 * * 1', retrain: always}\n")
    settings = load_settings(p, {}, "a")
    assert settings.pipeline("a").schedule.retrain == "always"
    p.write_text("pipelines:\n  a:\n    dataset: {source: 'https://example.org/c.tar.gz', sha256: '" + "0" * 64
                 + "', sha256_url: 'https://example.org/c.sha256'}\n    schedule: {cron: '0 3 * * 1', retrain: sometimes}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(p, {}, "a")
    text = str(info.value)
    assert "pipelines.a.dataset.sha256_url: set dataset.sha256" in text and "not both" in text
    assert "pipelines.a.schedule.retrain" in text


# --------------------------------------------------------------------------- out of range (issue 15)
def test_out_of_range_settings_are_refused_at_config_time_with_key_paths(tmp_path):
    p = tmp_path / "pipelines.yaml"
    p.write_text(textwrap.dedent("""
        pipelines:
          a:
            training: {epochs: 0, batch_size: -1, seed: -1,
                       optimizer: {name: sgd, learning_rate: 0, decay: -0.5, momentum: -5}}
            dataset: {subset_seed: -3}
            report: {sample_images: 100000, confident_mistakes: -1}
          b:
            training: {seed: 4294967296, optimizer: {learning_rate: "nan", momentum: 1.0}}
    """))
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert info.value.exit_code == 2 and str(p) in str(info.value)
    assert sorted(info.value.problems) == sorted([
        "pipelines.a.training.epochs: must be at least 1, got 0",
        "pipelines.a.training.batch_size: must be at least 1, got -1",
        "pipelines.a.training.seed: must be within [0, 4294967295], got -1",
        "pipelines.a.training.optimizer.learning_rate: must be > 0, got 0.0",
        "pipelines.a.training.optimizer.decay: must be >= 0, got -0.5",
        "pipelines.a.training.optimizer.momentum: must be within [0, 1), got -5.0",
        "pipelines.a.dataset.subset_seed: must be within [0, 4294967294], got -3",
        "pipelines.a.report.sample_images: must be within [0, 256], got 100000",
        "pipelines.a.report.confident_mistakes: must be within [0, 256], got -1",
        # the string "nan" is a number PyYAML read as text, refused by name; the momentum beside
        # it is still judged (a wrong learning rate does not hide the rest of the optimizer)
        "pipelines.b.training.optimizer.learning_rate: must be a finite number, got nan",
        "pipelines.b.training.optimizer.momentum: must be within [0, 1), got 1.0",
        "pipelines.b.training.seed: must be within [0, 4294967295], got 4294967296",
    ])


OK_OPTIMIZER = "pipelines: {a: {training: {optimizer: {name: sgd, momentum: 0.9}}}}\n"


def test_an_in_range_momentum_loads(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(OK_OPTIMIZER)
    assert load_settings(ok).pipelines["a"].training.optimizer.momentum == 0.9


@pytest.mark.parametrize("item, want", [
    ("training.optimizer.momentum=-5", "momentum: must be within [0, 1), got -5.0"),
    ("training.optimizer.learning_rate=nan", "learning_rate: must be a finite number, got nan"),
    ("training.optimizer.learning_rate=-1e-3", "learning_rate: must be > 0, got -0.001")])
def test_out_of_range_set_values_are_refused_with_their_key_path(tmp_path, item, want):
    ok = tmp_path / "ok.yaml"
    ok.write_text(OK_OPTIMIZER)
    with pytest.raises(ConfigError) as info:
        load_settings(ok, parse_set([item]), pipeline="a")
    assert [f"pipelines.a.training.optimizer.{want}"] == info.value.problems, item
