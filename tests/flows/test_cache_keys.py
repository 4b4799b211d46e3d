"""Cache keys change only when a stage's output can: the whole flow, run from a copy of the code.

Run 1 trains from scratch. Then every module of every stage gets a new comment, docstring, log
message and error message: run 2 must be a cache hit at every stage (nothing re-decoded,
re-validated, retrained, re-saved or re-rendered). Then the model builder changes: run 3 must
retrain, while the download and validation stay cached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archives import build_binary_archive

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine

RUN = textwrap.dedent("""
    import json, sys
    import tasks
    from flows.cifar import cifar
    summary = cifar(pipeline="tiny", config=sys.argv[1])
    print("RESULT " + json.dumps({"code": tasks.__file__, "run_id": summary["run_id"],
                                  "hits": {k: v["cache_hit"] for k, v in summary["stages"].items()}}))
""")


def _run_flow(code: Path, cfg: Path, api_url: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "PREFECT_API_URL": api_url}
    proc = subprocess.run([sys.executable, "-c", RUN, str(cfg)], cwd=code, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert Path(result["code"]).resolve().is_relative_to(code.resolve()), "ran the wrong copy"
    return result


def _reword(source: str) -> str:
    """A new comment, and new wording in the first docstring, log call and raised error."""
    out = "# reworded by test_cache_keys\n" + source
    out = out.replace('"""', '"""Reworded. ', 1)
    out = re.sub(r'(\.(?:info|warning|debug|error)\(f?")', r"\1reworded: ", out, count=1)
    out = re.sub(r'(raise \w+\(f?")', r"\1reworded: ", out, count=1)
    return out


def test_messages_retrain_nothing_but_the_model_builder_retrains(prefect_engine, tmp_path):
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    code = tmp_path / "code"
    for top in ("tasks", "flows"):
        shutil.copytree(REPO / top, code / top, ignore=shutil.ignore_patterns("__pycache__"))
    built = build_binary_archive(tmp_path, n_train=60, n_test=20, seed=5)
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data_dir: data
        artifacts_dir: artifacts
        pipelines:
          tiny:
            dataset: {{format: cifar10-binary, source: {json.dumps(str(built.path))}, sha256: {built.sha256}}}
            training: {{epochs: 1, batch_size: 16, seed: 1}}
    """))

    first = _run_flow(code, cfg, api_url)
    assert not any(first["hits"].values()), first

    reworded = 0
    for path in sorted((code / "tasks").rglob("*.py")):
        text = path.read_text()
        new = _reword(text)
        assert new != text
        path.write_text(new)
        reworded += 1
    assert reworded >= 20, "every stage's modules should have been reworded"
    second = _run_flow(code, cfg, api_url)
    assert second["hits"] == {stage: True for stage in first["hits"]}, second
    assert second["run_id"] == first["run_id"]

    builder = code / "tasks" / "train" / "models.py"
    text = builder.read_text()
    assert "layers.Dropout(0.5)" in text
    builder.write_text(text.replace("layers.Dropout(0.5)", "layers.Dropout(0.4)", 1))
    third = _run_flow(code, cfg, api_url)
    assert third["hits"]["download"] and third["hits"]["prepare"], third
    assert not third["hits"]["train"], third
    assert third["run_id"] != first["run_id"]
