"""``training.budget`` (tasks/train/budget.py): a recipe's epochs chosen on each machine so that its
run fits the notebook's epochs there. The arithmetic and the settings are plain functions; one
real (tiny) training through the flow times both models on this machine and records its choice
(tests/flows/test_flow.py)."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest

from tasks.train import budget
from tasks.train.config import RecipeConfig, TrainingConfig

TINY = RecipeConfig(widths=(8, 16, 16), whiten_images=40)
CAL = {"notebook": {"train_step": 0.03, "eval_step": 0.01, "trace": 2.0},
       "recipe": {"train_step": 2.0, "eval_step": 0.7, "trace": 10.0}}


# --------------------------------------------------------------------------- arithmetic
def test_the_most_whole_epochs_that_fit_after_the_fixed_cost():
    assert budget.epochs_within(20, notebook_epoch=60, recipe_epoch=200, fixed=40, most=17) == 5  # 1160/200
    assert budget.epochs_within(20, notebook_epoch=60, recipe_epoch=50, fixed=40, most=17) == 17  # capped
    assert budget.epochs_within(1, notebook_epoch=60, recipe_epoch=200, fixed=40, most=17) == 1  # at least one


def test_a_notebook_epoch_counts_its_validation_and_the_recipe_its_scoring():
    cfg = TrainingConfig(epochs=17, batch_size=512, budget=20, recipe=RecipeConfig(validate="last"))
    p = budget.plan(CAL, cfg, n_train=50_000, n_val=10_000, n_test=10_000)
    notebook = 1563 * 0.03 + 313 * 0.01  # train steps at batch 32 + the test split's validation
    assert p["notebook_epoch_seconds"] == round(notebook, 2)
    assert p["recipe_epoch_seconds"] == 97 * 2.0  # full batches only; validate: last adds none
    assert p["recipe_fixed_seconds"] == round(10.0 + 6 * 20 * 0.7, 2)  # tracing + 6 TTA views of 20 batches
    assert p["epochs"] == int((20 * notebook - p["recipe_fixed_seconds"]) // (97 * 2.0)) == 4
    every = budget.plan(CAL, TrainingConfig(epochs=17, batch_size=512, budget=20, recipe=RecipeConfig()),
                        n_train=50_000, n_val=10_000, n_test=10_000)
    assert every["recipe_epoch_seconds"] == round(97 * 2.0 + 20 * 0.7, 2)  # validate: every


# --------------------------------------------------------------------------- settings
def test_a_budget_needs_a_recipe_a_positive_number_and_one_machine():
    def keys(**kw):
        return dict(TrainingConfig(**kw).problems())

    assert "budget" not in keys(budget=20, recipe=TINY)
    assert "must be a number of notebook epochs > 0, got 0" in keys(budget=0, recipe=TINY)["budget"]
    assert "add training.recipe" in keys(budget=20)["budget"]
    assert "multi-worker" in keys(budget=20, recipe=TINY, strategy="multi_worker")["budget"]


def test_pipelines_yaml_takes_a_budget_and_names_a_wrong_one(tmp_path):
    from flows.config import load_settings
    from tasks.core.errors import ConfigError

    p = tmp_path / "pipelines.yaml"
    p.write_text(textwrap.dedent("""
        pipelines:
          quick: {model: airbench, training: {budget: 20, recipe: {validate: last}}}
          plain: {training: {budget: 20}}
    """))
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert [x for x in info.value.problems if "budget" in x] == [
        "pipelines.plain.training.budget: chooses a recipe's epochs (its schedule is laid over them); the "
        "notebook's recipe trains `epochs` as given: add training.recipe or remove training.budget"]
    p.write_text(p.read_text().replace("plain: {training: {budget: 20}}", "plain: {}"))
    quick = load_settings(p).pipelines["quick"]
    assert quick.training.budget == 20

    from flows.cifar import describe

    assert "the epochs of 20 notebook epochs on this machine (at most 20)" in describe(quick, None)


# --------------------------------------------------------------------------- the machine
def test_the_machine_is_read_from_cpuinfo_without_tensorflow():
    facts = budget.host_facts("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512_bf16 sse\n"
                              "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512_bf16 sse\n")
    assert facts["cpu"] == "AMD EPYC" and facts["flags"] == ["avx2", "avx512_bf16", "fma"]
    assert facts["cores"] >= 1 and facts["tensorflow"]


def test_the_train_key_covers_the_machine_only_with_a_budget(monkeypatch):
    from tasks.prepare.config import PrepareConfig
    from tasks.train.run import train_key

    ds = SimpleNamespace(content="c" * 16, fingerprint="f")
    plain, budgeted = TrainingConfig(recipe=TINY), TrainingConfig(recipe=TINY, budget=20)
    before = {c: train_key(ds, None, "airbench", c, PrepareConfig()) for c in (plain, budgeted)}
    monkeypatch.setattr(budget, "host_facts", lambda cpuinfo=None: {"cpu": "another machine"})
    assert train_key(ds, None, "airbench", plain, PrepareConfig()) == before[plain]
    assert train_key(ds, None, "airbench", budgeted, PrepareConfig()) != before[budgeted]


# --------------------------------------------------------------------------- the files it keeps
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """resolve() with the timing replaced by fixed figures (the real timing: the last test)."""
    calls = []

    def fake(*args, **kw):
        calls.append(1)
        return CAL

    monkeypatch.setattr(budget, "calibrate", fake)
    ds = SimpleNamespace(test_size=10_000, input_shape=(32, 32, 3))
    cfg = TrainingConfig(epochs=17, batch_size=512, budget=20, recipe=RecipeConfig(validate="last"))
    rows = (range(50_000), range(0))
    runtime = SimpleNamespace(strategy="one_device")

    def resolve(work="w"):
        return budget.resolve(cfg, "airbench", ds, runtime, None, {}, rows, tmp_path / "data", tmp_path / work)

    return SimpleNamespace(resolve=resolve, calls=calls, root=tmp_path)


def test_a_machine_is_timed_once_and_its_choice_kept(offline):
    cfg, facts = offline.resolve("a")
    assert cfg.epochs == facts["epochs"] == 4 and offline.calls == [1]
    assert json.loads((offline.root / "a" / budget.CHOSEN).read_text())["epochs"] == 4
    cfg, _ = offline.resolve("b")
    assert cfg.epochs == 4 and offline.calls == [1]  # the calibration file was reused


@pytest.mark.parametrize("garbage", [b"{not json", b'{"notebook": {"train_step": -1}}', b"[]" * 40_000])
def test_an_unusable_calibration_is_measured_again(offline, garbage, caplog):
    offline.resolve("a")
    (cal,) = (offline.root / "data" / budget.CALIBRATION).iterdir()
    cal.write_bytes(garbage)
    cfg, _ = offline.resolve("b")
    assert cfg.epochs == 4 and offline.calls == [1, 1]
    assert f"the calibration {cal} is unusable" in caplog.text
    assert budget.calibration_problems(json.loads(cal.read_text())) == []


def test_a_resumed_training_keeps_the_epochs_it_started_with(offline):
    (offline.root / "w").mkdir()
    (offline.root / "w" / budget.CHOSEN).write_text(json.dumps({"epochs": 9}))
    assert offline.resolve()[0].epochs == 9 and offline.calls == []


def test_an_unusable_choice_starts_the_training_over(offline, caplog):
    work = offline.root / "w"
    (work / "backup").mkdir(parents=True)
    (work / budget.CHOSEN).write_text(json.dumps({"epochs": 99}))  # more than epochs allows
    cfg, _ = offline.resolve()
    assert cfg.epochs == 4 and not (work / "backup").exists()
    assert "is unusable (epochs: expected a whole number within [1, 17], got 99)" in caplog.text


# A real training with a budget, this machine timed for real, the choice in train.json and the
# report: tests/flows/test_flow.py::test_a_tiny_airbench_pipeline_end_to_end (the engine tests).
