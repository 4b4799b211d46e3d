"""Parsing untrusted JSON within bounds, checked before ``json.loads`` builds anything.

TF Serving's REST front end parsed request bodies with a recursive parser and no depth limit, so
a few kilobytes of ``[[[[...`` crashed the server (CVE-2025-0649). Python's ``json`` recurses too
(a ``RecursionError`` at ~1,000 levels, after allocating every level). Here the body is refused
by its size first, then by its nesting, measured on the raw text: strings are blanked out (their
brackets do not count), the remaining ``[``/``{`` and ``]``/``}`` become +1/-1 and a cumulative
sum gives the depth at every point, all in C (``re`` and NumPy), so a body at the size cap costs
milliseconds and no Python object is built for a body that is refused. Only then does
``json.loads`` run, refusing ``NaN``/``Infinity`` (not JSON, but Python's parser takes them) and
duplicate keys.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from tasks.core.errors import CifarError

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}\"")
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class JSONLimitError(CifarError):
    """A JSON document that is too large, too deeply nested, or not valid JSON."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (raw JSON text), strings ignored.
    An unterminated string is a ``JSONLimitError``."""
    structure = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if b'"' in structure:
        raise JSONLimitError("malformed JSON: a string is not terminated")
    if not structure:
        return 0
    return int(np.cumsum(_STEP[np.frombuffer(structure, np.uint8)], dtype=np.int64).max())


def _refuse_constant(name: str) -> Any:
    raise JSONLimitError(f"malformed JSON: {name} is not a JSON number (send finite numbers only)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JSONLimitError(f"malformed JSON: key {dup!r} appears twice in one object")
    return out


def check_bounds(data: bytes, max_bytes: int, max_depth: int) -> None:
    """``JSONLimitError`` unless ``data`` has at most ``max_bytes`` bytes and ``max_depth`` levels."""
    if len(data) > max_bytes:
        raise JSONLimitError(f"request body of {len(data):,} bytes is larger than the {max_bytes:,} "
                             "bytes allowed")
    depth = nesting_depth(data)
    if depth > max_depth:
        raise JSONLimitError(f"JSON nested {depth} levels deep; at most {max_depth} are allowed")


def loads_bounded(data: bytes, max_bytes: int, max_depth: int) -> Any:
    """``data`` parsed as JSON, or ``JSONLimitError`` naming the bound it broke: more than
    ``max_bytes`` bytes, nesting deeper than ``max_depth`` (``check_bounds``), not UTF-8, not
    JSON, NaN/Infinity, a duplicate key, or an integer too long to convert."""
    check_bounds(data, max_bytes, max_depth)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONLimitError(f"request body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise JSONLimitError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit
        raise JSONLimitError(f"malformed JSON: {exc}") from None
