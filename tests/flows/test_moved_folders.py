"""Folders can move (issue 26): move or copy ``data_dir`` and ``artifacts_dir`` after a run, point
the config at the new place, and the next run completes, reuses what is there (no download, no
decode, no training, the same run), and hands on only paths in the new place: Prefect's cache
records, which hold absolute paths, are re-anchored or dropped, never an error. The records
themselves, unit by unit: tests/core/test_caching.py."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from archives import FileServer, build_binary_archive


def _config(path: Path, url: str, sha256: str, data: Path, artifacts: Path) -> Path:
    path.write_text(textwrap.dedent(f"""
        data_dir: {json.dumps(str(data))}
        artifacts_dir: {json.dumps(str(artifacts))}
        pipelines:
          tiny:
            dataset: {{format: cifar10-binary, source: {json.dumps(url)}, sha256: {sha256}}}
            training: {{epochs: 1, batch_size: 16, seed: 1}}
    """))
    return path


def _paths(summary: dict) -> list[Path]:
    return [Path(summary[k]) for k in ("run_dir", "report", "index")]


def _hits(summary: dict) -> dict[str, bool]:
    return {stage: t["cache_hit"] for stage, t in summary["stages"].items()}


@pytest.mark.engine
def test_moved_then_copied_folders_are_reused_and_never_break_a_run(prefect_engine, tmp_path):
    from flows.cifar import cifar

    with FileServer() as server:
        built = build_binary_archive(tmp_path, n_train=60, n_test=20, seed=4)
        url = server.add("cifar-10-binary.tar.gz", built.path)
        old = tmp_path / "old"
        first = cifar(pipeline="tiny", config=str(_config(tmp_path / "a.yaml", url, built.sha256,
                                                           old / "data", old / "artifacts")))
        assert all(p.is_relative_to(old) for p in _paths(first)), first
        requests = len(server.hits())
        models = sorted(p.name for p in (old / "data/models").iterdir())

        # 1) moved: data_dir and artifacts_dir go to another disk, the config follows them
        moved = tmp_path / "big-disk"
        moved.mkdir()
        shutil.move(old / "data", moved / "data")
        shutil.move(old / "artifacts", moved / "artifacts")
        cfg = _config(tmp_path / "b.yaml", url, built.sha256, moved / "data", moved / "artifacts")
        second = cifar(pipeline="tiny", config=str(cfg))
        assert len(server.hits()) == requests, "the moved archive was downloaded again"
        assert second["run_id"] == first["run_id"] and second["outcome"] == "nothing changed"
        assert all(p.is_relative_to(moved) and p.exists() for p in _paths(second)), second
        # every record re-anchored in the new place: a cache hit at every stage, nothing rebuilt
        assert _hits(second) == {stage: True for stage in _hits(first)}, second["stages"]
        assert sorted(p.name for p in (moved / "data/models").iterdir()) == models
        assert len(list((moved / "artifacts/tiny/runs").iterdir())) == 1
        assert not old.joinpath("data").exists() and not old.joinpath("artifacts").exists()

        # ... and so is the run after that, at the new place
        third = cifar(pipeline="tiny", config=str(cfg))
        assert _hits(third) == {stage: True for stage in _hits(first)}, third["stages"]
        assert third["run_id"] == first["run_id"]
        assert all(p.is_relative_to(moved) for p in _paths(third)), third

        # 2) copied: both folders now exist; the copy's runs must not hand on the original's paths
        copy = tmp_path / "copy"
        shutil.copytree(moved, copy)
        before = {p: p.stat().st_mtime_ns for p in (moved / "artifacts").rglob("*") if p.is_file()}
        cfg_copy = _config(tmp_path / "c.yaml", url, built.sha256, copy / "data", copy / "artifacts")
        fourth = cifar(pipeline="tiny", config=str(cfg_copy))
        assert len(server.hits()) == requests
        assert fourth["run_id"] == first["run_id"] and fourth["outcome"] == "nothing changed"
        assert all(p.is_relative_to(copy) and p.exists() for p in _paths(fourth)), fourth
        after = {p: p.stat().st_mtime_ns for p in (moved / "artifacts").rglob("*") if p.is_file()}
        assert after == before, "a run of the copy wrote into the original folder"
        fifth = cifar(pipeline="tiny", config=str(cfg_copy))
        assert _hits(fifth) == {stage: True for stage in _hits(first)}, fifth["stages"]

        # the original, run again where it is, is untouched by the copy's runs: all cached
        sixth = cifar(pipeline="tiny", config=str(cfg))
        assert _hits(sixth) == {stage: True for stage in _hits(first)}, sixth["stages"]
        assert all(p.is_relative_to(moved) for p in _paths(sixth)), sixth

        # 3) artifacts_dir alone moved to a folder of another name: the save and report records
        # name the old run folder and cannot be carried over: rebuilt (the run is found, reused)
        shutil.move(moved / "artifacts", tmp_path / "reports")
        cfg_arts = _config(tmp_path / "d.yaml", url, built.sha256, moved / "data", tmp_path / "reports")
        seventh = cifar(pipeline="tiny", config=str(cfg_arts))
        assert seventh["run_id"] == first["run_id"] and seventh["outcome"] == "nothing changed"
        assert all(p.is_relative_to(tmp_path / "reports") and p.exists() for p in _paths(seventh)), seventh
        hits = _hits(seventh)
        assert hits["download"] and hits["prepare"] and hits["train"], hits
        assert not hits["save"] and not hits["report"], hits
        assert len(server.hits()) == requests
