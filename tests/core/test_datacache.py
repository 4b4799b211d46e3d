"""The dataset cache's manifest (tasks/core/datacache.py): a manifest edited by hand is a cache
problem, named. The engine rebuilding such a cache: tests/download/test_hostile_archives.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.core.datacache import cache_problems, write_dataset_cache


def _tiny_cache(path: Path, classes=("cat", "dog")):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 2, 2, 3), dtype=np.uint8)
    y = np.array([0, 1] * 3, dtype=np.uint8)
    return write_dataset_cache(path, x, y, x[:4], y[:4], classes, {"source": "tests", "format": "tiny"})


@pytest.mark.parametrize("edit", ["classes", "counts", "not an object", "files"])
def test_an_edited_manifest_is_a_cache_problem(tmp_path, edit):
    rec = _tiny_cache(tmp_path / "ds")
    mf = Path(rec.path) / "manifest.json"
    manifest = json.loads(mf.read_text())
    assert cache_problems(rec.path) == []
    if edit == "classes":
        manifest["classes"] = ["cat", "lion"]
    elif edit == "counts":
        manifest["counts"]["train"]["cat"] = 99
    elif edit == "files":
        del manifest["files"]["y_test.npy"]
        manifest.pop("manifest_sha256")
    mf.write_text(json.dumps([1, 2] if edit == "not an object" else manifest))
    problems = cache_problems(rec.path, verify_checksums=False)
    assert len(problems) == 1 and "manifest.json" in problems[0], problems
    assert ("is not a JSON object" if edit == "not an object" else "altered") in problems[0]
