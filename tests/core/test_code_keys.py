"""The code part of every stage's cache key is the import closure of the stage's entry module.

(a) Each stage's code version is the fingerprint of exactly the project modules its entry
    imports, transitively (found here by an independent walk over the real source).
(b) A behaviour change in a module the entry reaches only indirectly (download/archive.py), or
    in a new module nobody listed, changes the key of every stage that imports it, and no other.
(c) New comments, docstrings, log and error wording in every module change no key.

(b) and (c) edit a copy of ``tasks/`` and ``flows/`` in ``tmp_path`` and read the keys in a
subprocess importing from that copy, as tests/flows/test_cache_keys.py runs the flow. No training, no
Prefect engine: a few seconds in all.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "prepare", "train", "store", "report", "predict")
PREDICT_TEMPLATE = REPO / "tasks" / "predict" / "templates" / "predictions.html.j2"

# The stage, the module holding its logic, and the template files its key counts byte for byte.
ENTRIES = {
    "fetch": ("tasks.download.fetching", ()),
    "decode": ("tasks.download.decode", ()),
    "prepare": ("tasks.prepare.validation", ()),
    "train": ("tasks.train.run", ()),
    "store": ("tasks.store.saving", ()),
    "report": ("tasks.report.rendering", tuple(sorted((REPO / "tasks" / "report" / "templates").glob("*.j2")))),
    "predict": ("tasks.predict.jobs", (PREDICT_TEMPLATE,)),
}

# Every stage's code version as its key uses it, and as metadata.json records it.
KEYS = textwrap.dedent("""
    import json
    import tasks
    from flows.outcomes import code_versions
    from tasks.download.decode import CODE_VERSION
    from tasks.download.fetching import FETCH_CODE_VERSION
    from tasks.predict.jobs import scoring_code_version
    from tasks.prepare.validation import validation_code_version
    from tasks.report.rendering import template_version
    from tasks.store.saving import store_code_version
    from tasks.train.run import training_code_version
    from tasks.core.hashing import import_closure

    keys = {"fetch": FETCH_CODE_VERSION, "decode": CODE_VERSION, "prepare": validation_code_version(),
            "train": training_code_version(), "store": store_code_version(),
            "report": template_version(), "predict": scoring_code_version()}
    print("RESULT " + json.dumps({"code": tasks.__file__, "keys": keys, "recorded": code_versions(),
                                  "decode_closure": import_closure("tasks.download.decode")}))
""")


# --------------------------------------------------------------------------- an independent walk
def _file_of(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (Path(f"{base}.py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _reference_closure(entry: str, root: Path = REPO) -> list[str]:
    """``entry`` and what it imports from tasks/flows, transitively, every import statement of
    every module (in functions too): ``from P import n`` is module P.n when that is a file, else P."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(_file_of(root, name).read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if _file_of(root, f"{node.module}.{a.name}") else node.module
                           for a in node.names]
            else:
                continue
            todo += [t for t in targets if t.split(".")[0] in ("tasks", "flows") and _file_of(root, t)]
    return sorted(seen)


def test_each_stage_key_is_the_fingerprint_of_its_entrys_import_closure():
    from flows.outcomes import code_versions
    from tasks.core.hashing import import_closure, modules_fingerprint
    from tasks.download.decode import CODE_VERSION
    from tasks.download.fetching import FETCH_CODE_VERSION
    from tasks.predict.jobs import scoring_code_version
    from tasks.prepare.validation import validation_code_version
    from tasks.report.rendering import template_version
    from tasks.store.saving import store_code_version
    from tasks.train.run import training_code_version

    used = {"fetch": FETCH_CODE_VERSION, "decode": CODE_VERSION, "prepare": validation_code_version(),
            "train": training_code_version(), "store": store_code_version(),
            "report": template_version(), "predict": scoring_code_version()}
    for stage, (entry, files) in ENTRIES.items():
        closure = _reference_closure(entry)
        assert list(import_closure(entry)) == closure, stage
        assert used[stage] == modules_fingerprint(closure, *files), f"{stage}'s key covers other code"
        owner = entry.split(".")[1]
        for name in closure:  # the logic and tasks.core; never the Prefect tasks or a package
            assert name.split(".")[1] in (owner, "core"), (stage, name)
            assert not name.endswith(".tasks") and _file_of(REPO, name).name != "__init__.py", (stage, name)
    # what decides the decoded arrays, listed by hand nowhere (the old list left these out)
    decode = set(import_closure("tasks.download.decode"))
    assert {"tasks.download.archive", "tasks.download.inflate", "tasks.core.members",
            "tasks.download.formats", "tasks.download.image_folder", "tasks.core.datacache"} <= decode
    assert {"tasks.train.models", "tasks.train.airbench", "tasks.train.inputs", "tasks.core.pixels"} <= set(
        import_closure("tasks.train.run"))
    # metadata.json records the very values the keys use: one definition per stage
    assert code_versions() == {"download": used["fetch"], "decode": used["decode"], "prepare": used["prepare"],
                               "train": used["train"], "store": used["store"]}


def test_a_module_that_is_not_in_the_project_is_refused_by_name():
    from tasks.core.hashing import closure_fingerprint

    with pytest.raises(ValueError, match="tasks.download.nowhere"):
        closure_fingerprint("tasks.download.nowhere")


# --------------------------------------------------------------------------- copies of the code
def _copy(tmp_path: Path, name: str) -> Path:
    code = tmp_path / name
    for top in ("tasks", "flows"):
        shutil.copytree(REPO / top, code / top, ignore=shutil.ignore_patterns("__pycache__"))
    return code


def _keys(code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", KEYS], cwd=code, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert Path(result["code"]).resolve().is_relative_to(code.resolve()), "imported the wrong copy"
    return result


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def _changed(before: dict, after: dict) -> set[str]:
    return {stage for stage in before["keys"] if before["keys"][stage] != after["keys"][stage]}


@pytest.mark.subprocess
def test_a_behaviour_change_in_the_archive_reader_changes_the_decode_key_only(tmp_path):
    from tasks.download.decode import CODE_VERSION

    base = _keys(_copy(tmp_path, "base"))
    assert base["keys"]["decode"] == CODE_VERSION, "a key must not depend on where the code lies"
    code = _copy(tmp_path, "archive")
    _edit(code / "tasks/download/archive.py", 'zipfile.ZIP_DEFLATED: "deflate"}', "}")  # the header bound
    # moved to core.members (issue 29), shared with predict: a download-only behaviour here
    after = _keys(code)
    assert _changed(base, after) == {"decode"}
    assert after["recorded"]["decode"] == after["keys"]["decode"] != base["recorded"]["decode"]


@pytest.mark.subprocess
def test_a_new_module_is_inside_the_key_of_every_stage_that_imports_it(tmp_path):
    """A new module, imported inside a function only, importing back into the stage (a cycle)."""
    runs = {}
    for scale in (1, 2):
        code = _copy(tmp_path, f"scale{scale}")
        (code / "tasks/download/augment.py").write_text(
            f'"""A helper nobody listed."""\n\nSCALE = {scale}\n\n\ndef again():\n'
            "    from tasks.download import decode\n\n    return decode\n")
        _edit(code / "tasks/download/archive.py", "def _budget(max_bytes",
              "def _scale():\n    from tasks.download import augment\n\n    return augment.SCALE\n\n\n"
              "def _budget(max_bytes")
        runs[scale] = _keys(code)
    assert "tasks.download.augment" in runs[1]["decode_closure"]
    assert _changed(runs[1], runs[2]) == {"decode"}


# --------------------------------------------------------------------------- rewording
_MESSAGES = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_QUOTE = re.compile(r"[rRuUbBfF]*(\"\"\"|'''|\"|')")


def _string_starts(tree: ast.AST) -> list[ast.expr]:
    """Every docstring, the message of every log/print statement and of every raised error."""
    found = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            found.append(body[0].value)
        call = node.value if isinstance(node, ast.Expr) else node.exc if isinstance(node, ast.Raise) else None
        if not isinstance(call, ast.Call) or not call.args:
            continue
        f = call.func
        message = isinstance(node, ast.Raise) or (isinstance(f, ast.Attribute) and f.attr in _MESSAGES) or (
            isinstance(f, ast.Name) and f.id == "print")
        first = call.args[0]
        if message and (isinstance(first, ast.JoinedStr) or (isinstance(first, ast.Constant)
                                                             and isinstance(first.value, str))):
            found.append(first)
    return found


def _reword(source: str) -> tuple[str, int]:
    """Every comment, docstring, log/print message and error message reworded; a comment line
    added on top. Returns the new source and how many places changed."""
    lines = source.splitlines(keepends=True)
    inserts = []  # (line index, character column, text)
    for node in _string_starts(ast.parse(source)):
        line = lines[node.lineno - 1]
        col = len(line.encode()[:node.col_offset].decode())
        quote = _QUOTE.match(line, col)
        assert quote, (line, col)
        inserts.append((node.lineno - 1, quote.end(), "Reworded: "))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            inserts.append((tok.start[0] - 1, tok.start[1] + 1, " reworded"))
    for row, col, text in sorted(set(inserts), reverse=True):
        lines[row] = lines[row][:col] + text + lines[row][col:]
    return "# reworded by test_code_keys\n" + "".join(lines), len(inserts) + 1


@pytest.mark.subprocess
def test_comments_docstrings_and_messages_change_no_key(tmp_path):
    from tasks.core.hashing import import_closure

    base = _keys(_copy(tmp_path, "base"))
    code = _copy(tmp_path, "reworded")
    places, touched = 0, set()
    for path in sorted((code / "tasks").rglob("*.py")) + sorted((code / "flows").rglob("*.py")):
        new, count = _reword(path.read_text())
        ast.parse(new)
        path.write_text(new)
        places += count
        touched.add(".".join(path.relative_to(code).with_suffix("").parts))
    closures = {m for entry, _ in ENTRIES.values() for m in import_closure(entry)}
    assert closures <= touched and places > 500, places
    after = _keys(code)
    assert after["keys"] == base["keys"]
    assert after["recorded"] == base["recorded"]
