"""The layout's rules, read from the code's own imports (docs/architecture.md draws them):

- a stage (``tasks/<stage>/``) imports ``tasks.core`` and itself, never another stage or ``flows``;
- ``tasks/core`` imports no stage and not ``flows``;
- no module in ``flows/`` or ``tasks/`` grows past a size a newcomer can read in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "prepare", "train", "store", "report", "predict")
MAX_MODULE_LINES = 450


def _modules(root: str) -> list[Path]:
    return sorted(p for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in ("tasks", "flows")}


def _owner(name: str) -> str:
    """'tasks.train.models' -> 'train'; 'tasks.core.x' -> 'core'; 'flows.cli' -> 'flows'."""
    parts = name.split(".")
    if parts[0] == "flows":
        return "flows"
    return parts[1] if len(parts) > 1 else "tasks"


def test_every_stage_is_a_package():
    for stage in STAGES:
        assert (REPO / "tasks" / stage / "__init__.py").is_file(), stage
        assert not (REPO / "tasks" / f"{stage}.py").exists(), f"tasks/{stage}.py and a package"


@pytest.mark.parametrize("path", _modules("tasks"), ids=lambda p: str(p.relative_to(REPO)))
def test_stages_import_only_core_and_themselves(path):
    rel = path.relative_to(REPO / "tasks").parts
    here = rel[0] if len(rel) > 1 else "tasks"
    allowed = {"core", here} if here != "core" else {"core"}
    bad = sorted(n for n in _imported(path) if _owner(n) not in allowed and n != "tasks")
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: a stage may import tasks.core only"


@pytest.mark.parametrize("path", _modules("tasks") + _modules("flows"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_modules_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines: split it by job"
