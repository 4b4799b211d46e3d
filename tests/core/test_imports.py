"""Stage shells apart (issue 27): a stage's Prefect tasks live in ``tasks/<stage>/tasks.py``, so
its package, its config and ``flows.config`` load without Prefect, Keras or TensorFlow. That keeps
``cifar --help``, ``cifar check`` and ``cifar predict`` quick, with no lazy-import workarounds.

Each module is imported in a fresh interpreter: in this one, other tests have loaded everything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "prepare", "train", "store", "report", "predict")
HEAVY = ("prefect", "keras", "tensorflow", "tensorboard")  # tensorboard: a dependency now, still heavy

LIGHT = ["flows.config", "flows.cli", "flows.predict_cli", "flows.endpoint_cli", "flows.endpoint"]
LIGHT += [f"tasks.{stage}" for stage in STAGES]
LIGHT += [f"tasks.{stage}.config" for stage in STAGES if (REPO / "tasks" / stage / "config.py").is_file()]

PROBE = "import json, sys, {module}; print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))"


def _heavy_after_import(module: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_stage_config_is_probed():
    assert {"tasks.download.config", "tasks.prepare.config", "tasks.train.config", "tasks.store.config",
            "tasks.report.config"} <= set(LIGHT)


@pytest.mark.subprocess
@pytest.mark.parametrize("module", LIGHT)
def test_module_loads_without_prefect_keras_or_tensorflow(module):
    heavy = _heavy_after_import(module)
    assert heavy == [], (f"importing {module} loads {heavy}: keep @task wrappers in tasks/<stage>/tasks.py "
                         "and import Prefect or Keras inside the functions that use them")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_keeps_its_prefect_tasks_in_tasks_py(stage):
    """The package's __init__ only says where things are; ``tasks.<stage>.tasks`` holds the tasks."""
    body = ast.parse((REPO / "tasks" / stage / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
        f"tasks/{stage}/__init__.py holds more than its docstring")
    assert "from prefect import task" in (REPO / "tasks" / stage / "tasks.py").read_text()
