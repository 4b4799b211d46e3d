"""Content hashes: of files, of folder trees, of JSON-able settings, and of the code that decides
a stage's output (its cache key's code part: ``closure_fingerprint``, over the project modules
a stage's entry module imports, found by reading their source)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import stat
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

CHUNK = 1 << 20


class FileDigest(NamedTuple):
    sha256: str
    size: int
    md5: str | None = None


def hash_file(path: str | os.PathLike, *, md5: bool = False) -> FileDigest:
    """sha256 and size of a file in one pass (and its md5, for sources that publish one)."""
    sha = hashlib.sha256()
    legacy = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            if legacy is not None:
                legacy.update(block)
            size += len(block)
    return FileDigest(sha.hexdigest(), size, legacy.hexdigest() if legacy is not None else None)


def tree_files(root: str | os.PathLike, skipped: list[str] | None = None) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` (symlinks not followed), as (relative posix path, path),
    sorted by the relative path. Anything else found (a link, a FIFO, a socket, a device) is left
    out -- opening a FIFO would block forever -- and its relative path appended to ``skipped``
    when given, so the caller can say so. One ``scandir`` per folder, no ``stat`` per file (the
    entry's type comes with the listing): 60,000 files are listed in a fraction of a second."""
    out: list[tuple[str, str]] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            entries = list(it)
        for e in entries:
            name = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                walk(e.path, name + "/")
            elif e.is_file(follow_symlinks=False):
                out.append((name, e.path))
            elif skipped is not None:
                skipped.append(name)

    walk(os.fspath(root), "")
    if skipped is not None:
        skipped.sort()
    return [(rel, Path(p)) for rel, p in sorted(out)]


def _hash_regular(path: str | os.PathLike) -> FileDigest:
    """sha256 and size of one file of a tree, opened so that nothing can hang or escape: no
    following a link, no blocking on a FIFO swapped in since the listing (both refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is no longer a regular file")
        sha, size = hashlib.sha256(), 0
        while block := os.read(fd, CHUNK):
            sha.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return FileDigest(sha.hexdigest(), size)


def hash_tree(root: str | os.PathLike, *, files: list[tuple[str, Path]] | None = None) -> FileDigest:
    """One sha256 for a folder: over each file's relative path and sha256, in path order.

    Every byte is read, every call (no stat shortcut: a file rewritten with the same size and
    mtime changes the hash), in one thread: for small files such as CIFAR's ~1 KB images,
    threads were slower (the per-file work holds the GIL). ``files``: a ``tree_files`` listing
    at hand."""
    listing = tree_files(root) if files is None else files
    digests = [_hash_regular(p) for _, p in listing]
    h, size = hashlib.sha256(), 0
    for (rel, _), digest in zip(listing, digests):
        h.update(f"{rel}\0{digest.sha256}\n".encode())
        size += digest.size
    return FileDigest(h.hexdigest(), size)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON types (for metadata and cache keys)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable content hash of JSON-able parts (dataclasses allowed)."""
    blob = json.dumps(to_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------- code fingerprints
# Calls whose only effect is a message: a change to their wording never changes an output.
_MESSAGE_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "log"})
_MESSAGE_FUNCTIONS = frozenset({"print"})


def _is_message_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr in _MESSAGE_METHODS) or (
        isinstance(f, ast.Name) and f.id in _MESSAGE_FUNCTIONS)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


class _Behaviour(ast.NodeTransformer):
    """Drops what cannot change a result: docstrings, log and print calls, the wording of raised
    errors (the exception's type stays). Comments and line numbers never reach the AST dump."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]) and isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = body[1:]
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            stmts = getattr(node, name, None)
            if isinstance(stmts, list) and not stmts and name == "body":
                setattr(node, name, [ast.Pass()])
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if _is_message_call(node.value):
            return None
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if isinstance(node.exc, ast.Call):
            node.exc = ast.Call(func=node.exc.func, args=[], keywords=[])
        return node


def behaviour_of_source(source: str) -> str:
    """The source's behaviour as a canonical AST dump (see ``_Behaviour``)."""
    tree = _Behaviour().visit(ast.parse(source))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def code_fingerprint(*parts: ModuleType | type | Any) -> str:
    """What decides a stage's output, as a short hash: the behaviour of the given modules,
    classes or functions (not their comments, docstrings, log or error wording), and the raw
    bytes of any file paths given (templates: their every character is output)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, os.PathLike)):
            h.update(Path(part).read_bytes())
            continue
        h.update(behaviour_of_source(inspect.getsource(part)).encode())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- import closures
# A stage's cache key counts the code of its entry module and of every project module that module
# imports, transitively (``import_closure``): a new helper module is inside the key the moment it
# is imported, and nobody keeps a list. Since issue 27 every stage key is computed this way; the
# switch changed every key's value once (one rebuild of each cached output, then hits again).
PROJECT_PACKAGES = ("tasks", "flows")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding tasks/ and flows/


def _module_file(name: str) -> Path | None:
    """The source file of project module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The project modules one import statement takes code from.

    ``import a.b.c`` takes module ``a.b.c``; ``from a.b import c`` takes module ``a.b.c`` when
    that is a module, else the name ``c`` defined by ``a.b`` itself (its ``__init__`` when a
    package). The packages passed through on the way (``a``, ``a.b``) are run by Python but not
    counted: a stage package's ``__init__`` holds only its docstring, and the Prefect task
    wrappers live in ``tasks.py`` beside the logic, outside its key, so counting the packages
    would count nothing (or, while an ``__init__`` still held the tasks, every module of the
    stage). A package counts when a name that is not a submodule is taken from it."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: from the package of ``here``
        package = here if is_package else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if alias.name != "*" and _module_file(sub) is not None else base)
    return out


@functools.lru_cache(maxsize=None)
def _read_module(name: str) -> tuple[tuple[str, ...], str]:
    """(the project modules it imports, its behaviour): one read and one parse per module and
    process. Imports inside functions and under ``if TYPE_CHECKING:`` count too (a superset of
    what runs is the safe side of a cache key)."""
    path = _module_file(name)
    if path is None:
        raise ValueError(
            f"{name!r} is not a module of this project (no {name.replace('.', '/')}.py under "
            f"{PROJECT_ROOT}). To resolve this: name an importable module of {', '.join(PROJECT_PACKAGES)}.")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(m for m in _imported_modules(node, name, is_package) if _module_file(m) is not None)
    found.discard(name)
    behaviour = ast.dump(_Behaviour().visit(tree), annotate_fields=False, include_attributes=False)
    return tuple(sorted(found)), behaviour


@functools.lru_cache(maxsize=None)
def import_closure(entry: str) -> tuple[str, ...]:
    """``entry`` and every project module it imports, transitively, sorted by name: read from the
    source (nothing is imported), cycle-safe. See ``_imported_modules`` for what counts."""
    seen, todo = {entry}, [entry]
    while todo:
        for dep in _read_module(todo.pop())[0]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


def modules_fingerprint(modules: tuple[str, ...] | list[str], *files: str | os.PathLike) -> str:
    """A short hash of the named project modules' behaviour (``behaviour_of_source``: not their
    comments, docstrings, log or error wording), in the given order, and of the files' names and
    raw bytes (templates: their every character is output)."""
    h = hashlib.sha256()
    for name in modules:
        h.update(f"{name}\0{_read_module(name)[1]}\n".encode())
    for path in files:
        h.update(f"{Path(path).name}\0".encode() + Path(path).read_bytes() + b"\n")
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def closure_fingerprint(entry: str, *files: str | os.PathLike) -> str:
    """The code part of a stage's cache key: the behaviour of ``entry``'s import closure, plus
    the given files' bytes. Computed once per process (module sources are read, never imported,
    so a module may compute its own at import time)."""
    return modules_fingerprint(import_closure(entry), *files)
