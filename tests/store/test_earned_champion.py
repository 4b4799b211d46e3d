"""The champion is earned (issue 28): no edited file, broken export or weak model fools the
registry. Real saves of constant classifiers (tests/trainfolders.py: test accuracy 0.5, 0.3 and
0.2 on 20 images of 3 classes), done once per chain; each test reads the step it is about.

Each fooling of the issue, as it was found:

- a non-champion's metrics.json edited to 0.99 became the stand-in of a champion whose
  model.keras went missing, and `cifar predict` served it (``test_an_edited_metrics_json_...``);
- a champion with a damaged savedmodel/ made every save on a new test split crash re-scoring it
  (``test_a_champion_with_a_damaged_savedmodel_...``);
- a champion with a truncated model.tflite stayed champion (``test_a_truncated_tflite_...``);
- a first run under chance was promoted (``test_a_first_run_under_the_floor_...``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trainfolders import CLASSES3, Y_TEST, store_trained, three_class_cache, write_trained

from tasks.core import runs as layout
from tasks.core.datacache import write_dataset_cache
from tasks.core.files import read_json
from tasks.core.hashing import hash_tree
from tasks.core.registry import checksum
from tasks.core.verify import tree_sha256
from tasks.predict.errors import NoModelError
from tasks.predict.resolve import resolve_model
from tasks.store.manual import PromoteError, promote_by_hand
from tasks.store.table import damage_warnings, format_runs_table

REPO = Path(__file__).resolve().parents[2]


def cifar(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": ""}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dataset cache, the same images' classes with another test split, and constant
    classifiers: accuracy 0.5 (c0), 0.3 (c1), 0.2 (c2) on the first."""
    root = tmp_path_factory.mktemp("earned")
    ds = three_class_cache(root)
    rng = np.random.default_rng(7)
    other = write_dataset_cache(root / "datasets" / "other-split", rng.integers(0, 256, (12, 8, 8, 3), np.uint8),
                                np.array([0, 1, 2] * 4, np.uint8), rng.integers(0, 256, (20, 8, 8, 3), np.uint8),
                                Y_TEST, CLASSES3, {"source": "other", "archive_sha256": "cd" * 32, "format": "test"})
    made = {name: write_trained(root, f"k-{name}", ds, constant=int(name[1]))
            for name in ("c0", "c1", "c2", "c2b", "c1b")}
    return SimpleNamespace(root=root, ds=ds, other=other, **made)


def _run(art: Path, pipeline: str, record) -> Path:
    return layout.run_dir(art, pipeline, record.run_id)


def _champion(art: Path, pipeline: str) -> str | None:
    return (read_json(art / pipeline / "registry.json").get("champion") or {}).get("run_id")


# --------------------------------------------------------------------------- edited files
@pytest.fixture(scope="module")
def fooled(models, tmp_path_factory):
    """Pipeline a: c0 champion, c1 and c2 kept; c2's metrics.json edited to claim 0.99 and c0's
    model.keras gone; then a save (c2b) that needs a stand-in; then the stand-in's model.tflite
    truncated and one more save (c1b)."""
    art = tmp_path_factory.mktemp("fooled") / "artifacts"
    f = SimpleNamespace(art=art)
    f.c0 = store_trained(art, models.ds, models.c0)
    f.c1 = store_trained(art, models.ds, models.c1)
    f.c2 = store_trained(art, models.ds, models.c2)
    metrics = _run(art, "tiny", f.c2) / "metrics.json"
    metrics.write_text(json.dumps({**read_json(metrics), "test_accuracy": 0.99}))  # still valid JSON
    (_run(art, "tiny", f.c0) / "model.keras").unlink()
    f.rows = layout.list_runs(art)
    f.c2b = store_trained(art, models.ds, models.c2b)
    f.champion_after_c2b = _champion(art, "tiny")
    f.served = resolve_model(art, "tiny")
    tflite = _run(art, "tiny", f.c1) / "model.tflite"
    tflite.write_bytes(tflite.read_bytes()[:1000])
    f.rows_truncated = layout.list_runs(art)
    with pytest.raises(NoModelError) as f.refused:
        resolve_model(art, "tiny")
    f.c1b = store_trained(art, models.ds, models.c1b)
    return f


def test_an_edited_metrics_json_is_damaged_and_never_stands_in(fooled):
    rows = {r["run_id"]: r for r in fooled.rows}
    edited = rows[fooled.c2.run_id]
    assert edited["test_accuracy"] is None and "metrics.json: sha256" in edited["damaged"]
    assert "recorded in metadata.json" in edited["damaged"]
    text = format_runs_table(fooled.rows)
    assert "0.9900" not in text and "DAMAGED" in text
    warned = "\n".join(damage_warnings(fooled.rows))
    assert f"run {fooled.c2.run_id} of tiny is damaged" in warned and "restore the run folder" in warned
    # the champion's model is gone: the best run that verifies (c1, 0.3) stands in, not the 0.99
    assert not fooled.c2b.promoted
    assert f"compared with the best run that verifies, {fooled.c1.run_id}" in fooled.c2b.reason, fooled.c2b.reason
    assert fooled.champion_after_c2b == fooled.c1.run_id
    assert fooled.served.run_id == fooled.c1.run_id  # and that is what predict serves


def test_a_truncated_tflite_makes_its_champion_damaged_and_the_next_run_replaces_it(fooled):
    rows = {r["run_id"]: r for r in fooled.rows_truncated}
    c1 = rows[fooled.c1.run_id]
    assert not c1["champion"] and c1["named_champion"] and "model.tflite: sha256" in c1["damaged"]
    assert c1["test_accuracy"] == 0.3  # only the model is damaged: its verified number is still shown
    message = str(fooled.refused.value)
    assert f"the champion registry.json names {fooled.c1.run_id} of tiny is damaged" in message
    assert "model.tflite" in message and "--run RUN_ID" in message
    # the next save: compared with the best run that verifies (c2b, 0.2), never c1 nor the edited c2
    assert fooled.c1b.promoted and f"champion {fooled.c1.run_id} is damaged" in fooled.c1b.reason
    assert f"the best run that verifies, {fooled.c2b.run_id}" in fooled.c1b.reason
    registry = read_json(fooled.art / "tiny" / "registry.json")
    assert registry["champion"]["run_id"] == fooled.c1b.run_id
    assert [h["by"] for h in registry["history"]][-2:] == ["stand-in", "rule"]


def test_registry_json_carries_its_checksum_and_an_edited_one_is_not_trusted(fooled, tmp_path):
    art = tmp_path / "artifacts"
    shutil.copytree(fooled.art, art)
    path = art / "tiny" / "registry.json"
    registry = read_json(path)
    assert registry["sha256"] == checksum(registry)
    registry["champion"]["value"] = 0.99  # an edit that keeps the file valid JSON
    path.write_text(json.dumps(registry))
    _, problem = layout.load_registry(art / "tiny")
    assert f"{path}: its checksum" in problem and "edited or half-written" in problem
    assert not any(r["champion"] for r in layout.list_runs(art))  # until the next save rebuilds it


def test_the_hash_cache_gives_hash_trees_bytes(fooled):
    folder = _run(fooled.art, "tiny", fooled.c1b) / "savedmodel"
    assert tree_sha256(folder) == hash_tree(folder).sha256


# --------------------------------------------------------------------------- a damaged SavedModel
def test_a_champion_with_a_damaged_savedmodel_never_blocks_a_save_on_a_new_test_split(models, tmp_path):
    art = tmp_path / "artifacts"
    first = store_trained(art, models.ds, models.c0)
    variables = sorted((_run(art, "tiny", first) / "savedmodel" / "variables").glob("variables.data-*"))[0]
    variables.write_bytes(variables.read_bytes()[:8])  # was: IndexError: Read less bytes than requested
    second = store_trained(art, models.other, models.c1)  # another test split: the champion is re-scored
    assert second.promoted and f"champion {first.run_id} is damaged" in second.reason, second.reason
    assert "savedmodel: tree sha256" in second.reason
    assert _champion(art, "tiny") == second.run_id


# --------------------------------------------------------------------------- the floor
def test_a_first_run_under_the_floor_is_kept_but_never_promoted(models, tmp_path):
    art = tmp_path / "artifacts"
    weak = store_trained(art, models.ds, models.c2, min_value=None)  # 0.2 on 3 classes: chance is 1/3
    assert not weak.promoted
    assert weak.reason.startswith("test_accuracy 20.00% does not reach the floor: it is below or at chance "
                                  "(33.33% for 3 classes"), weak.reason
    assert "kept as a run, never promoted" in weak.reason
    assert _champion(art, "tiny") is None and [r["run_id"] for r in layout.list_runs(art)] == [weak.run_id]


# --------------------------------------------------------------------------- a person's decision
@pytest.fixture(scope="module")
def by_hand(models, tmp_path_factory):
    """promote.auto false: c0 kept; promoted by hand; c1 saved (auto) and kept; c1 named by hand;
    rolled back; c1's metrics.json edited, then named again (refused)."""
    root = tmp_path_factory.mktemp("hand")
    art = root / "artifacts"
    h = SimpleNamespace(root=root, art=art)
    h.c0 = store_trained(art, models.ds, models.c0, auto=False)
    h.first = promote_by_hand(art, "tiny", h.c0.run_id, reason="reviewed the confusion matrix")
    h.c1 = store_trained(art, models.ds, models.c1)
    h.second = promote_by_hand(art, "tiny", h.c1.run_id, reason="canary")
    h.back = promote_by_hand(art, "tiny", reason="canary failed")
    h.registry = read_json(art / "tiny" / "registry.json")
    metrics = _run(art, "tiny", h.c1) / "metrics.json"
    metrics.write_text(json.dumps({**read_json(metrics), "test_accuracy": 0.31}))
    (root / "pipelines.yaml").write_text("artifacts_dir: artifacts\npipelines: {tiny: {}}\n")
    return h


def test_with_promote_auto_false_only_a_person_names_the_champion(by_hand):
    c0 = by_hand.c0
    assert not c0.promoted and "promote.auto is false" in c0.reason
    assert f"`cifar promote tiny {c0.run_id}`" in c0.reason
    assert by_hand.first["run_id"] == c0.run_id and by_hand.first["by"] == "person"
    assert by_hand.first["reason"] == "promoted by hand with `cifar promote`: reviewed the confusion matrix"


def test_a_person_promotes_a_run_and_rolls_back(by_hand):
    assert not by_hand.c1.promoted  # 0.3 does not beat 0.5
    assert by_hand.second["run_id"] == by_hand.c1.run_id and by_hand.second["replaced"] == by_hand.c0.run_id
    assert by_hand.back["run_id"] == by_hand.c0.run_id and by_hand.back["by"] == "rollback"
    assert by_hand.back["reason"].startswith(f"rolled back from {by_hand.c1.run_id} with `cifar promote --previous`")
    history = by_hand.registry["history"]
    assert [(h["run_id"], h["by"]) for h in history] == [
        (by_hand.c0.run_id, "person"), (by_hand.c1.run_id, "person"), (by_hand.c0.run_id, "rollback")]
    assert all(h["at"] for h in history) and history[1]["reason"].endswith(": canary")


@pytest.mark.subprocess
def test_promoting_a_damaged_run_is_refused_with_exit_2_and_no_traceback(by_hand):
    with pytest.raises(PromoteError) as err:
        promote_by_hand(by_hand.art, "tiny", by_hand.c1.run_id)
    assert err.value.exit_code == 2 and "metrics.json: sha256" in str(err.value)
    r = cifar("promote", "tiny", by_hand.c1.run_id, "--config", str(by_hand.root / "pipelines.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: run {by_hand.c1.run_id} of tiny is damaged, so it cannot be champion")
    assert len(r.stderr.strip().splitlines()) == 1 and "To resolve this:" in r.stderr
    assert read_json(by_hand.art / "tiny" / "registry.json")["champion"]["run_id"] == by_hand.c0.run_id
