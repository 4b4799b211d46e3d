"""``cifar sweep``'s pure half (flows/sweep_plan.py), its page (tasks/report/sweep_page.py) and
``--promote best`` over hand-made run folders: no Prefect, no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.sweep_plan import (
    MAX_CHILDREN, Child, Plan, SweepError, aggregate, best_by_validation, expand, format_table, parse_ablations,
    parse_grid, parse_seeds, plan, point_label, read_child, split_values, table_rows,
)
from runfolders import recorded_files
from tasks.core import runs
from tasks.core.errors import ConfigError
from tasks.core.files import atomic_write_json

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def config(tmp_path) -> str:
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(textwrap.dedent("""
        data_dir: data
        artifacts_dir: artifacts
        pipelines:
          tiny:
            dataset: {format: cifar10-binary, source: x.tar.gz}
            training: {epochs: 1, batch_size: 16, seed: 7}
    """))
    return str(cfg)


# --------------------------------------------------------------------------- values and points
def test_values_split_on_commas_outside_brackets_and_quotes():
    assert split_values("1, 2,[8,16,16],{a: 1, b: 2},'x,y'") == ["1", "2", "[8,16,16]", "{a: 1, b: 2}", "'x,y'"]


def test_grid_values_are_typed_like_set():
    grid = parse_grid(["training.epochs=1,2", "training.recipe.lookahead=true,false",
                       "training.recipe.widths=[8,16,16],[16,32,32]", "training.optimizer.name=adam"])
    assert grid == {"training.epochs": [1, 2], "training.recipe.lookahead": [True, False],
                    "training.recipe.widths": [[8, 16, 16], [16, 32, 32]], "training.optimizer.name": ["adam"]}


@pytest.mark.parametrize("items, needle", [
    (["training.epochs"], "expected KEY=VALUE"),
    (["training.epochs=1,,2"], "an empty value"),
    (["training.epochs=1,1"], "listed twice"),
    (["training.epochs=1", "training.epochs=2"], "given twice"),
])
def test_bad_grid_flags_are_refused_naming_the_flag(items, needle):
    with pytest.raises(SweepError) as err:
        parse_grid(items)
    assert needle in str(err.value) and "training.epochs" in str(err.value)


def test_a_grid_is_the_cartesian_product_first_key_slowest():
    points = expand({"a": [1, 2], "b": ["x", "y"]}, [])
    assert points == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_an_ablation_adds_one_point_per_flag_beside_the_base():
    abl = parse_ablations(["training.recipe.lookahead=false", "training.recipe.dirac=false"])
    assert expand({}, abl) == [{}, {"training.recipe.lookahead": False}, {"training.recipe.dirac": False}]
    assert point_label({}) == "base" and point_label(abl[0]) == "training.recipe.lookahead=false"
    # with a grid, each flag is changed on every grid point; a point already there is not repeated
    assert expand({"e": [1, 2]}, [{"e": 2}, {"f": 0}]) == [{"e": 1}, {"e": 2}, {"e": 1, "f": 0}, {"e": 2, "f": 0}]
    with pytest.raises(SweepError, match="one value per flag"):
        parse_ablations(["training.epochs=1,2"])


def test_seeds_count_up_from_the_configured_one_or_are_listed():
    assert parse_seeds(3, None, 42) == [42, 43, 44]
    assert parse_seeds(None, "5,9", 42) == [5, 9]
    assert parse_seeds(None, None, 42) == [42]
    for args, needle in (((0, None, 1), "at least 1"), ((None, "1,x", 1), "'x' is not an integer"),
                         ((None, "1,1", 1), "listed twice"), ((2, "1", 1), "not both")):
        with pytest.raises(SweepError, match=needle):
            parse_seeds(*args)


# --------------------------------------------------------------------------- a whole plan
def test_a_plan_gives_every_child_its_point_seed_and_no_promotion(config):
    p = plan("tiny", config, {"training.batch_size": 8}, ["training.epochs=1,2"], None, seeds=2)
    assert p.seeds == [7, 8] and p.points == [{"training.epochs": 1}, {"training.epochs": 2}]
    assert [(i, s) for i, s, _ in p.children] == [(0, 7), (0, 8), (1, 7), (1, 8)]
    assert p.children[3][2] == {"training.batch_size": 8, "training.epochs": 2, "training.seed": 8,
                                "promote.auto": False}


def test_a_bad_key_or_value_is_refused_before_anything_runs_naming_both(config):
    with pytest.raises(ConfigError) as err:
        plan("tiny", config, {}, ["training.epochs=1,x", "training.epoch=3"], None)
    text = str(err.value)
    assert "point training.epochs=x, training.epoch=3" in text and "expected an integer, got 'x'" in text
    assert "training.epoch: unknown key" in text
    with pytest.raises(ConfigError, match="seed 4294967296"):
        plan("tiny", config, {}, None, None, seed_list="1,4294967296")
    with pytest.raises(ConfigError, match="no pipeline|tiny2"):
        plan("tiny2", config, {}, None, None)


def test_the_number_of_children_is_bounded_and_the_limit_named(config):
    with pytest.raises(SweepError) as err:
        plan("tiny", config, {}, ["training.epochs=1,2,3"], None, seeds=100)
    assert f"3 point(s) x 100 seed(s) = 300 child runs, more than the limit of {MAX_CHILDREN}" in str(err.value)


def test_the_seed_is_swept_with_seeds_not_grid(config):
    with pytest.raises(SweepError, match="--seeds N or --seed"):
        plan("tiny", config, {}, ["training.seed=1,2"], None)


# --------------------------------------------------------------------------- aggregation
PLAN = Plan("tiny", "c.yaml", {}, [{"e": 1}, {"e": 2}, {"e": 3}], [1, 2, 3])


def test_aggregate_is_mean_and_sample_sd_over_the_seeds_that_count():
    children = [
        Child(0, 1, "Completed", run_id="a", test_accuracy=0.2, validation_accuracy=0.3, train_seconds=2.0),
        Child(0, 2, "Completed", run_id="b", test_accuracy=0.4, validation_accuracy=0.5, train_seconds=4.0),
        Child(0, 3, "Failed", message="boom"),
        Child(1, 1, "Completed", run_id="c", test_accuracy=0.5, validation_accuracy=None, train_seconds=1.0),
        Child(1, 2, "Completed", run_id="d", damaged="metrics.json: sha256 differs"),
    ]
    rows = aggregate(PLAN, children)
    r0, r1, r2 = rows
    assert r0["n"] == 2 and r0["runs"] == ["a", "b"] and r0["seeds"] == [1, 2, 3]
    assert r0["test_accuracy"]["mean"] == pytest.approx(0.3) and r0["test_accuracy"]["sd"] == pytest.approx(0.141421356)
    assert r0["validation_accuracy"]["mean"] == pytest.approx(0.4) and r0["train_seconds"] == pytest.approx(3.0)
    assert r0["failed"] == [{"seed": 3, "state": "Failed", "message": "boom"}]
    # a damaged run gives no number, and is listed as damaged; a missing validation stays missing
    assert r1["n"] == 1 and r1["runs"] == ["c"] and r1["test_accuracy"] == {"mean": 0.5, "sd": None, "n": 1}
    assert r1["validation_accuracy"] == {"mean": None, "sd": None, "n": 0}
    assert r1["damaged"] == [{"seed": 2, "run_id": "d", "why": "metrics.json: sha256 differs"}]
    assert r2["n"] == 0 and r2["test_accuracy"]["mean"] is None
    cells = table_rows(rows)
    assert cells[0]["validation accuracy"] == "40.00% ± 14.14 pp" and cells[0]["test accuracy"] == "30.00% ± 14.14 pp"
    assert cells[0]["n"] == "2/3" and cells[0]["train time"] == "3.0 s" and cells[0]["problems"] == "seed 3 failed"
    assert cells[1]["validation accuracy"] == "—" and cells[1]["test accuracy"] == "50.00%"
    assert cells[1]["problems"] == "run d damaged" and cells[2]["runs"] == "—"
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["point", "validation", "accuracy"] and "e=2" in table


def test_the_best_child_is_chosen_by_validation_never_by_test():
    children = [Child(0, 1, "Completed", run_id="a", test_accuracy=0.9, validation_accuracy=0.2),
                Child(0, 2, "Completed", run_id="b", test_accuracy=0.1, validation_accuracy=0.6),
                Child(1, 1, "Completed", run_id="c", validation_accuracy=0.9, damaged="bad"),
                Child(1, 2, "Failed", run_id=None)]
    assert best_by_validation(children).run_id == "b"
    assert best_by_validation([Child(0, 1, "Completed", run_id="a", test_accuracy=0.9)]) is None


# --------------------------------------------------------------------------- run folders
def fake_run(artifacts: Path, run_id: str, test: float, validation: float | None, seconds: float = 3.0,
             protocol: str = "held-out") -> Path:
    """A run folder whose files verify: metrics.json (with validation_accuracy and its
    ``protocol`` when given), metadata.json recording its files' sha256 and the training's seconds."""
    run = runs.run_dir(artifacts, "tiny", run_id)
    run.mkdir(parents=True)
    metrics = {"test_accuracy": test, **({} if validation is None else {
        "validation_accuracy": validation, "validation": {"protocol": protocol}})}
    atomic_write_json(run / "metrics.json", metrics)
    atomic_write_json(run / "metadata.json", {"pipeline": "tiny", "run_id": run_id, "created_at": "2026-12-01T10:00:00",
                                              "training": {"seconds": seconds}, "files": recorded_files(run)})
    return run


def published(artifacts: Path) -> dict:
    return {r.run_id: r for r in runs.pipeline_runs(runs.pipeline_dir(artifacts, "tiny"), warn_damaged=False)}


def test_a_child_is_read_through_the_verified_readers(tmp_path):
    fake_run(tmp_path, "r1", 0.25, 0.3, seconds=4.5)
    fake_run(tmp_path, "r2", 0.5, None)
    bad = fake_run(tmp_path, "r3", 0.75, 0.8)
    (bad / "metrics.json").write_text(json.dumps({"test_accuracy": 0.99, "validation_accuracy": 0.99}))
    found = published(tmp_path)
    one = read_child(Child(0, 1, "Completed", run_id="r1"), found["r1"])
    assert (one.test_accuracy, one.validation_accuracy, one.train_seconds, one.damaged) == (0.25, 0.3, 4.5, None)
    two = read_child(Child(0, 2, "Completed", run_id="r2"), found["r2"])
    assert two.validation_accuracy is None and two.test_accuracy == 0.5  # never the test accuracy instead
    three = read_child(Child(0, 3, "Completed", run_id="r3"), found["r3"])
    assert three.damaged and "metrics.json" in three.damaged and three.test_accuracy is None
    assert three.validation_accuracy is None and not three.usable
    gone = read_child(Child(0, 4, "Completed", run_id="r4", run_dir="/nowhere"), None)
    assert "missing" in gone.damaged and not gone.usable
    fake_run(tmp_path, "r5", 0.5, 0.5, protocol="test")  # validation: test -- the test accuracy, not a held-out one
    on_test = read_child(Child(0, 5, "Completed", run_id="r5"), published(tmp_path)["r5"])
    assert on_test.validation_accuracy is None and on_test.validation_protocol == "test"


def test_promote_best_names_the_best_by_validation_with_a_reason_naming_the_sweep(tmp_path, config):
    from flows.config import load_settings
    from flows.sweep import promote_best

    settings = load_settings(config, {}, "tiny")
    art = settings.artifacts_dir
    fake_run(art, "hi-test", 0.9, 0.2)
    fake_run(art, "hi-val", 0.1, 0.6)
    found = published(art)
    children = [read_child(Child(0, i, "Completed", run_id=r), found[r]) for i, r in enumerate(("hi-test", "hi-val"))]
    done = promote_best(settings, "tiny", children, "tiny-20261207-000000")
    registry = json.loads((art / "tiny" / "registry.json").read_text())
    assert done["run_id"] == "hi-val" == registry["champion"]["run_id"]
    reason = registry["champion"]["reason"]
    assert "`cifar sweep --promote best`" in reason and "sweep tiny-20261207-000000" in reason and "60.00%" in reason

    none = [read_child(Child(0, 1, "Completed", run_id="x"), found["hi-test"])]
    none[0].validation_accuracy = None
    with pytest.raises(SweepError, match="no child of sweep s has a validation accuracy on held-out images"):
        promote_best(settings, "tiny", none, "s")
    fake_run(art, "on-test", 0.9, 0.9, protocol="test")
    tested = [read_child(Child(0, 1, "Completed", run_id="on-test"), published(art)["on-test"])]
    with pytest.raises(SweepError, match="they validated on the test split"):
        promote_best(settings, "tiny", tested, "s")


# --------------------------------------------------------------------------- the page
def test_the_page_escapes_labels_and_embeds_one_plot(tmp_path):
    from tasks.report.sweep_page import write_page

    rows = aggregate(Plan("tiny", "c", {}, [{"k": "<script>x</script>\x1b[31m"}, {"k": 2}], [1]), [
        Child(0, 1, "Completed", run_id="a", test_accuracy=0.2, validation_accuracy=0.3),
        Child(1, 1, "Completed", run_id="b", test_accuracy=0.4)])
    page = write_page(tmp_path, rows, table_rows(rows), pipeline="tiny", sweep="tiny-1", notes=["<b>note</b>"])
    html = page.read_text()
    assert page.parent == tmp_path / "sweeps" and page.name.startswith("tiny-") and page.suffix == ".html"
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;\\x1b[31m" in html
    assert "&lt;b&gt;note&lt;/b&gt;" in html and html.count("data:image/png;base64,") == 1
    assert "30.00%" in html and "—" in html and not list(tmp_path.glob("sweeps/.*"))  # no temp file left


# --------------------------------------------------------------------------- the command's refusals
@pytest.mark.subprocess
def test_the_command_refuses_a_bad_grid_and_a_pool_without_server_before_anything_runs(config, capsys, monkeypatch):
    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr("flows.interrupts.install", lambda: None)  # pytest keeps its own signal handlers
    assert main(["sweep", "tiny", "--config", config, "--grid", "training.batch_size=16,big"]) == 2
    err = capsys.readouterr().err
    assert "point training.batch_size=big, seed 7" in err and "expected an integer, got 'big'" in err
    assert "Traceback" not in err
    # --pool without a server: in a process of its own (an engine test's harness, earlier in this
    # worker, leaves Prefect's settings pointing at its API whatever the environment says)
    env = {**os.environ, "PREFECT_API_URL": ""}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", "tiny", "--config", config, "--pool", "gpus"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "cifar sweep needs a Prefect server" in done.stderr and "PREFECT_API_URL" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (Path(config).parent / "artifacts").exists()  # nothing ran, nothing was written


def test_a_pool_the_server_does_not_have_is_named_with_what_to_do(config, capsys, monkeypatch, prefect_engine):
    from flows.cli import main

    monkeypatch.setattr("flows.interrupts.install", lambda: None)
    assert main(["sweep", "tiny", "--config", config, "--pool", "nope"]) == 1
    err = capsys.readouterr().err
    assert "has no work pool named 'nope'" in err and "prefect work-pool create nope --type process" in err
    assert "Traceback" not in err and "404" not in err


def test_a_pool_sweep_says_what_its_runs_wait_for():
    from flows.sweep import waiting_note

    note = waiting_note(["Completed", "Running", "Scheduled", "Scheduled"], "gpus")
    assert note.startswith("waiting: 1 Completed, 1 Running, 2 Scheduled; ")
    assert "work pool 'gpus' (`prefect worker start --pool gpus`)" in note
    assert waiting_note(["Running", "Completed"], "gpus") == "waiting: 1 Completed, 1 Running"
