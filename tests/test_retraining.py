"""Scheduled retraining, unit by unit (issue 16): local data re-checked by content at every run,
a published checksum followed, a fresh seed only for scheduled `always` runs, the champion
judged on the challenger's test images, the "what changed" section, the outcome's words.
The real-server slice is tests/test_retraining_e2e.py."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from archives import FileServer, build_binary_archive, build_image_folder

# Imported here, not in a test: Prefect configures logging on its first import, which would drop
# the handler caplog installed for a test that happens to run first.
from tasks.download.fetching import hash_local  # noqa: E402


def _cfg(**kw):
    from tasks.download.config import DatasetConfig

    return DatasetConfig(**kw)


def _rewrite_keeping_stat(path, data: bytes) -> None:
    """New bytes of the same length, the old mtime put back: what fooled the stat shortcut."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


# --------------------------------------------------------------------------- local data, by content
def test_a_rewrite_with_the_same_size_and_mtime_is_a_new_dataset(tmp_path):
    from tasks.download.fetching import fetch

    built = build_image_folder(tmp_path, per_class_train=2, per_class_test=1)
    cfg = _cfg(format="image-folder", source=str(built.path))
    first = fetch(cfg, tmp_path / "data")
    assert fetch(cfg, tmp_path / "data").sha256 == first.sha256  # unchanged: the same record

    img = built.path / "train" / "cat" / "0000.png"
    raw = bytearray(img.read_bytes())
    raw[-20] ^= 0xFF  # one byte of the last chunk's payload
    _rewrite_keeping_stat(img, bytes(raw))
    assert fetch(cfg, tmp_path / "data").sha256 != first.sha256

    archive = build_binary_archive(tmp_path / "bin", n_train=20, n_test=10)
    acfg = _cfg(format="cifar10-binary", source=str(archive.path))
    before = fetch(acfg, tmp_path / "data")
    assert before.sha256 == archive.sha256
    blob = bytearray(archive.path.read_bytes())
    blob[100] ^= 0x01
    _rewrite_keeping_stat(archive.path, bytes(blob))
    assert fetch(acfg, tmp_path / "data").sha256 == hashlib.sha256(blob).hexdigest() != before.sha256


@pytest.mark.timeout(20)
def test_a_fifo_in_a_folder_is_skipped_and_named_not_opened(tmp_path, caplog):
    from tasks.core.hashing import hash_tree, tree_files

    built = build_image_folder(tmp_path, per_class_train=2, per_class_test=1)
    os.mkfifo(built.path / "train" / "cat" / "pipe")
    skipped: list[str] = []
    names = [rel for rel, _ in tree_files(built.path, skipped)]
    assert skipped == ["train/cat/pipe"] and "train/cat/pipe" not in names
    with caplog.at_level(logging.WARNING):
        digest = hash_local(built.path, _cfg(format="image-folder", source=str(built.path)))
    assert digest == hash_tree(built.path)  # the FIFO never joined the hash, nor blocked it
    assert "train/cat/pipe" in caplog.text and "not regular files" in caplog.text


def test_the_folder_check_is_bounded_by_max_extract_mb_before_reading(tmp_path):
    from tasks.download.errors import UnsafeArchiveError

    built = build_image_folder(tmp_path, per_class_train=1, per_class_test=1)
    with open(built.path / "train" / "cat" / "big.bin", "wb") as f:
        f.truncate(2 * 2**20)  # sparse: 2 MiB by size, nothing to read
    with pytest.raises(UnsafeArchiveError) as info:
        hash_local(built.path, _cfg(format="image-folder", source=str(built.path), max_extract_mb=1))
    msg = str(info.value)
    assert str(built.path) in msg and "dataset.max_extract_mb (1 MiB)" in msg and "nothing was read" in msg


@pytest.mark.timeout(20)
def test_hash_tree_skips_links_and_fifos_and_keeps_its_format(tmp_path):
    from tasks.core.hashing import hash_tree, tree_files

    root = tmp_path / "t"
    for i in range(300):
        (root / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 7}" / f"{i:04d}").write_bytes(os.urandom(i % 50))
    os.symlink(root / "d0" / "0000", root / "link")
    os.mkfifo(root / "d1" / "fifo")
    skipped: list[str] = []
    listed = tree_files(root, skipped)
    assert skipped == ["d1/fifo", "link"] and len(listed) == 300
    assert hash_tree(root) == hash_tree(root, files=listed)
    old = hashlib.sha256()  # the tree hash as it always was: relative path and sha256, in path order
    for rel, p in listed:
        old.update(f"{rel}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    assert hash_tree(root).sha256 == old.hexdigest()


# --------------------------------------------------------------------------- a published checksum
def test_parse_checksums_picks_the_archives_line_and_says_what_is_wrong():
    from tasks.download.published import ChecksumFileError, parse_checksums

    a, b = "a" * 64, "B" * 64
    assert parse_checksums(f"{a}  other.tar.gz\n{b} *dir/cifar.tar.gz\n", "cifar.tar.gz", "u") == b.lower()
    assert parse_checksums(f"# published\n{a}\n", "cifar.tar.gz", "u") == a
    with pytest.raises(ChecksumFileError, match=r"u: no checksum for 'cifar.tar.gz' \(it lists x, y\)"):
        parse_checksums(f"{a}  x\n{b}  y\n", "cifar.tar.gz", "u")
    with pytest.raises(ChecksumFileError, match="'<html>' is not a checksum line"):
        parse_checksums("<html>\n", "cifar.tar.gz", "u")


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


def test_a_changed_published_checksum_downloads_again_an_unchanged_one_does_not(tmp_path):
    from tasks.download.errors import SourceNotFoundError
    from tasks.download.fetching import fetch
    from tasks.download.published import follow

    one = build_binary_archive(tmp_path / "one", n_train=20, n_test=10, seed=1)
    two = build_binary_archive(tmp_path / "two", n_train=20, n_test=10, seed=2)
    with FileServer() as srv:
        url = srv.add("c.tar.gz", one.path)
        sums = srv.add("c.tar.gz.sha256", f"{one.sha256}  c.tar.gz\n".encode())
        cfg = _cfg(format="cifar10-binary", source=url, sha256_url=sums)
        data = tmp_path / "data"
        assert fetch(follow(cfg), data).sha256 == one.sha256
        assert fetch(follow(cfg), data).sha256 == one.sha256
        assert len(srv.hits("c.tar.gz")) == 1 and len(srv.hits("c.tar.gz.sha256")) == 2

        srv.add("c.tar.gz", two.path)
        srv.add("c.tar.gz.sha256", f"{two.sha256}  c.tar.gz\n".encode())
        again = fetch(follow(cfg), data)
        assert again.sha256 == two.sha256 and len(srv.hits("c.tar.gz")) == 2

        with pytest.raises(SourceNotFoundError, match="dataset.sha256_url .*missing.sha256: HTTP 404"):
            follow(_cfg(format="cifar10-binary", source=url, sha256_url=srv.url("missing.sha256")))


# --------------------------------------------------------------------------- seeds and schedules
def test_only_a_scheduled_run_of_an_always_pipeline_gets_a_fresh_seed():
    from flows.config import ScheduleConfig
    from flows.outcomes import scheduled_seed, trigger_record

    always, on_change = ScheduleConfig(cron="0 3 * * 1", retrain="always"), ScheduleConfig(cron="0 3 * * 1")
    seeds = {scheduled_seed(always, True) for _ in range(5)}
    assert len(seeds) > 1 and all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert scheduled_seed(always, False) is None
    assert scheduled_seed(on_change, True) is None and scheduled_seed(None, True) is None
    rec = trigger_record(True, always, 7, 42)
    assert rec == {"scheduled": True, "retrain": "always", "seed": 7, "seed_source": "fresh (schedule.retrain: always)"}
    assert trigger_record(False, always, None, 42)["seed"] == 42


def test_the_schedule_marks_its_runs_as_scheduled(tmp_path):
    from flows.config import PipelineConfig, ScheduleConfig
    from flows.deploy import deployment_kwargs

    kwargs = deployment_kwargs(PipelineConfig(name="p", schedule=ScheduleConfig(cron="0 3 * * 1")), tmp_path)
    (sched,) = kwargs["schedules"]
    assert sched.parameters == {"scheduled": True} and sched.schedule.cron == "0 3 * * 1"
    assert "scheduled" not in kwargs["parameters"]  # a manual run is not a scheduled one


# --------------------------------------------------------------------------- a fair comparison
def test_the_promotion_reason_gives_both_numbers_of_a_rescored_champion():
    from tasks.store.config import PromoteConfig
    from tasks.store.promotion import decide_promotion

    champ = {"run_id": "R1", "metric": "test_accuracy", "value": 0.4,
             "rescored": {"recorded": 0.5, "value": 0.4, "images": 60, "metric": "test_accuracy"}}
    won = decide_promotion(0.45, champ, None, PromoteConfig())
    assert won["promoted"] and won["reason"].startswith(
        "test_accuracy 0.450 beats champion 0.400 on the new test split (60 images; 0.500 on its own) by 0.050")
    assert won["champion_rescored"]["recorded"] == 0.5
    lost = decide_promotion(0.35, champ, None, PromoteConfig())
    assert not lost["promoted"] and "champion 0.400 on the new test split (60 images; 0.500 on its own)" in lost["reason"]
    plain = decide_promotion(0.45, {"run_id": "R1", "metric": "test_accuracy", "value": 0.4}, None, PromoteConfig())
    assert "new test split" not in plain["reason"] and "champion_rescored" not in plain


def test_what_changed_rows():
    from tasks.report.changes import class_rows, diff_settings

    rows = class_rows({"train": {"cat": 3, "dog": 3}, "test": {"cat": 2, "dog": 2}},
                      {"train": {"cat": 5, "dog": 2, "emu": 1}, "test": {"cat": 3, "dog": 2, "emu": 1}})
    assert rows[0] == {"class": "cat", "train": {"before": 3, "now": 5, "delta": 2},
                       "test": {"before": 2, "now": 3, "delta": 1}}
    assert rows[1]["train"]["delta"] == -1 and rows[2]["train"] == {"before": None, "now": 1, "delta": 1}
    assert diff_settings({"training": {"seed": 1, "epochs": 2}, "x": 1},
                         {"training": {"seed": 9, "epochs": 2}, "y": [1]}) == [
        {"key": "training.seed", "before": 1, "now": 9},
        {"key": "x", "before": 1, "now": None},
        {"key": "y", "before": None, "now": [1]},
    ]


# --------------------------------------------------------------------------- the outcome's words
def test_nothing_changed_is_a_reused_run_or_a_cached_save():
    from flows.outcomes import nothing_changed, nothing_changed_message, outcome_markdown
    from tasks.store.saving import RunRecord

    run = RunRecord("p", "R2", "/x", 0.5, True, "first run of this pipeline")
    assert not nothing_changed(run, {"save": {"cache_hit": False}})
    assert nothing_changed(run, {"save": {"cache_hit": True}})
    reused = RunRecord("p", "R2", "/x", 0.5, True, "first run of this pipeline", reused=True)
    assert nothing_changed(reused, {}) and reused == run  # the same run; reused says how it was found
    msg = nothing_changed_message("R2", "R1", "2026-12-01 09:30 UTC")
    assert msg == "nothing changed since run R2; champion R1 (since 2026-12-01 09:30 UTC)"
    assert nothing_changed_message("R2", None) == "nothing changed since run R2; champion (none)"
    md = outcome_markdown({"pipeline": "p", "outcome": "nothing changed", "message": msg, "run_id": "R2",
                           "test_accuracy": 0.5, "promoted": False, "promotion_reason": None,
                           "champion": "R1", "champion_since": "2026-12-01 09:30 UTC", "report": "/r.html",
                           "trigger": {"scheduled": True, "seed": 3, "seed_source": "training.seed"}})
    assert md.startswith("### p: nothing changed\n\n" + msg) and "schedule; seed 3" in md
    assert "| Champion | `R1` since 2026-12-01 09:30 UTC |" in md
    assert "promot" not in md.lower(), md  # a run that changed nothing promoted nothing


def test_a_nothing_changed_run_never_replays_the_promotion_of_the_run_it_found():
    """The CLI's lines, the flow's done: line and the outcome artifact of a rerun whose save found
    run R1 (promoted when it was first saved): what happened, the champion and since when."""
    from flows.outcomes import done_line, outcome_fields, outcome_markdown, run_lines, since_text
    from tasks.store.saving import RunRecord

    assert since_text("2026-12-01T09:30:05+00:00") == "2026-12-01 09:30 UTC"
    assert since_text("2026-12-01T10:30:05+01:00") == "2026-12-01 09:30 UTC"
    assert since_text(None) is None and since_text("last week") == "last week"

    saved = RunRecord("p", "R1", "/a/p/runs/R1", 0.5, True, "first run of this pipeline")
    champion = {"run_id": "R1", "promoted_at": "2026-12-01T09:30:05+00:00"}
    base = {"pipeline": "p", "run_id": "R1", "test_accuracy": 0.5, "report": "/a/p/runs/R1/report.html",
            "index": "/a/index.html", "trigger": {}}
    said = "nothing changed since run R1; champion R1 (since 2026-12-01 09:30 UTC)"
    summary = {**base, **outcome_fields(saved, True, champion)}
    assert summary["message"] == said and summary["outcome"] == "nothing changed"
    assert summary["promoted"] is False and summary["promotion_reason"] is None
    assert summary["champion"] == "R1" and summary["champion_since"] == "2026-12-01 09:30 UTC"
    assert run_lines(summary) == [f"p: {said}", "p: test accuracy 0.5000 (run R1)"]
    assert done_line(summary) == f"done: test accuracy 0.5000, {said}; report /a/p/runs/R1/report.html"
    for text in [*run_lines(summary), done_line(summary), outcome_markdown(summary)]:
        assert "promot" not in text.lower(), text

    trained = {**base, **outcome_fields(saved, False, champion)}
    assert trained["promoted"] is True and trained["message"] == "trained and saved run R1: promoted to champion"
    assert run_lines(trained) == ["p: test accuracy 0.5000 (promoted to champion: first run of this pipeline)"]
    assert done_line(trained).startswith("done: test accuracy 0.5000, promoted to champion; report ")
    assert "| Promoted | yes: first run of this pipeline |" in outcome_markdown(trained)


def test_the_shipped_automations_pass_prefects_own_schema():
    import sys
    import uuid
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "automations"))
    try:
        import install
    finally:
        sys.path.pop(0)
    bid = uuid.uuid4()
    got = {a.name: a for a in install.definitions(bid)}
    assert set(got) == {"cifar-run-failed", "cifar-model-promoted", "cifar-run-zombie"}
    assert got["cifar-run-failed"].trigger.expect == {"cifar.run.failed"}
    assert got["cifar-model-promoted"].trigger.expect == {"cifar.model.promoted"}
    assert got["cifar-run-zombie"].trigger.after == {"prefect.flow-run.heartbeat"}
    assert all(a.actions[-1].block_document_id == bid for a in got.values())  # each notifies


def test_a_champions_savedmodel_scores_as_its_evaluation_did(tmp_path):
    """Re-scoring through the serving SavedModel (uint8 in, scaling inside) gives the numbers the
    store's own evaluation gives for the same model and images, with and without test-time views."""
    import keras
    import numpy as np

    from tasks.store.evaluation import predict_views, savedmodel_metrics, score_test_split
    from tasks.store.export import write_savedmodel

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    pre = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0]}
    write_savedmodel(tmp_path / "savedmodel", model, ["a", "b", "c"], pre)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 37).astype(np.int64)

    _, want = score_test_split(model, images, labels, ["a", "b", "c"], pre)
    got = savedmodel_metrics(tmp_path / "savedmodel", images, labels, ["a", "b", "c"], batch_size=16)
    assert got["test_size"] == 37 and got["confusion_matrix"] == want["confusion_matrix"]
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-4)
    mirror = predict_views(model, images, pre["mean"], pre["std"], "mirror")["mirror"]
    got_tta = savedmodel_metrics(tmp_path / "savedmodel", images, labels, ["a", "b", "c"], tta="mirror")
    assert got_tta["test_accuracy"] == float((mirror.argmax(1) == labels).mean())
