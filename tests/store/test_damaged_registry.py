"""A damaged registry and a broken champion (issue 15; tasks/store/promotion.py, saving.py): an
unreadable registry.json is rebuilt from the runs' metadata, a champion whose model is gone is
never compared with, and with no intact run left the new run takes over, each saying why.

One chain of real saves of constant classifiers (tests/trainfolders.py; test accuracy 0.5, 0.3,
0.2, 0.2), done once; each test reads the step it is about."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runfolders import strict_json
from trainfolders import store_trained, three_class_cache, write_trained

from tasks.core import runs as layout

REPO = Path(__file__).resolve().parents[2]


def cifar(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": ""}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# The shared chain runs `cifar runs` in a process between two saves.
pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def constant_models(tmp_path_factory):
    """A dataset cache and constant classifiers: accuracy 0.5, 0.3, 0.2, 0.2."""
    root = tmp_path_factory.mktemp("const")
    ds = three_class_cache(root)
    models = {f"c{c}": write_trained(root, f"k-c{c}", ds, constant=c) for c in range(3)}
    models["c2b"] = write_trained(root, "k-c2b", ds, constant=2)
    return ds, models


@pytest.fixture(scope="module")
def chain(tmp_path_factory, constant_models):
    """Four saves of pipeline tiny, the registry as each left it, and `cifar runs` in between."""
    ds, models = constant_models
    root = tmp_path_factory.mktemp("registry")
    art = root / "artifacts"
    registry = art / "tiny" / "registry.json"

    def snapshot(name: str) -> Path:
        return Path(shutil.copy(registry, root / f"registry-after-{name}.json"))

    c = SimpleNamespace(art=art)
    c.first = store_trained(art, ds, models["c1"])  # 0.3: champion
    registry.write_text('{"champion": {"run_')  # truncated
    c.second = store_trained(art, ds, models["c2"])  # 0.2: judged against the rebuilt champion
    c.after_second = snapshot("second")

    (Path(c.first.path) / "model.keras").unlink()  # the champion's model is gone
    c.broken = layout.damaged_runs(art)
    cfg = root / "pipelines.yaml"
    cfg.write_text("artifacts_dir: artifacts\npipelines: {tiny: {}}\n")
    c.runs = cifar("runs", "tiny", "--config", str(cfg))

    c.third = store_trained(art, ds, models["c2b"])  # 0.2 again, with the champion broken
    c.after_third = snapshot("third")

    for run in (c.second, c.third):
        (Path(run.path) / "model.keras").unlink()
    c.fourth = store_trained(art, ds, models["c0"])  # no intact run left
    c.after_fourth = snapshot("fourth")
    return c


def test_an_unreadable_registry_is_rebuilt_from_the_runs_metadata(chain):
    second = chain.second
    assert not second.promoted and "registry.json was damaged" in second.reason, second.reason
    assert strict_json(chain.after_second)["champion"]["run_id"] == chain.first.run_id  # rebuilt from metadata


def test_a_champion_whose_model_is_gone_is_listed_as_damaged(chain):
    first, r = chain.first, chain.runs
    assert "model.keras is missing" in chain.broken[first.path]
    assert r.returncode == 0 and "* DAMAGED" in r.stdout and "Traceback" not in r.stderr
    assert f"run {first.run_id} of tiny is damaged (registry.json names it champion" in r.stderr


def test_a_broken_champion_is_never_compared_with(chain):
    # 0.2 again: compared with the best intact run (second, 0.2: a tie), never with the 0.3 of a
    # model that is gone; the registry now names the champion it was judged against
    first, second, third = chain.first, chain.second, chain.third
    assert not third.promoted, third.reason
    assert f"champion {first.run_id} is damaged" in third.reason and "model.keras is missing" in third.reason
    assert f"compared with the best run that verifies, {second.run_id}" in third.reason
    assert strict_json(chain.after_third)["champion"]["run_id"] == second.run_id


def test_with_no_intact_run_left_the_new_run_takes_over(chain):
    fourth = chain.fourth
    assert fourth.promoted and "no run that verifies is left" in fourth.reason, fourth.reason
    assert strict_json(chain.after_fourth)["champion"]["run_id"] == fourth.run_id
