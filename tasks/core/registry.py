"""registry.json's content: the champion, every change of champion (who decided, when, why), and
the file's own checksum.

::

    {"champion": {"run_id", "metric", "value", "promoted_at", "reason", "by"},
     "history":  [{"run_id", "at", "by", "reason"}, ...]   oldest first, one per change
     "sha256":   "<sha256 of the rest, as canonical JSON>"}

``by`` is ``rule`` (the promotion rule), ``person`` (``cifar promote``), ``rollback``
(``cifar promote --previous``), ``stand-in`` (the best verified run replacing a damaged champion)
or ``rebuild`` (a damaged registry.json rebuilt from the runs). The checksum catches an edited or
half-written file: such a registry is damaged, and the pipeline's next save rebuilds it from the
runs that verify. A registry written before issue 28 (neither ``sha256`` nor ``history``) is read
as it is and gains both at its next write. The checksum is no signature: whoever can edit the
file can recompute it; the champion's value is always read again from its verified run.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any

from tasks.core.files import _finite, atomic_write_json
from tasks.core.hashing import to_jsonable

CHECKSUM = "sha256"
HISTORY = "history"
MAX_HISTORY = 500  # changes of champion kept (a registry stays a small file)
BY = ("rule", "person", "rollback", "stand-in", "rebuild")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def checksum(registry: dict[str, Any]) -> str:
    """The sha256 of the registry without its checksum, as canonical JSON (sorted keys, NaN as
    null: what ``atomic_write_json`` writes and a reader parses back)."""
    body = {k: v for k, v in registry.items() if k != CHECKSUM}
    text = json.dumps(_finite(to_jsonable(body)), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def checksum_problem(path: str | os.PathLike, registry: dict[str, Any]) -> str | None:
    """Why a parsed registry.json cannot be trusted (its checksum is missing or differs), or None."""
    recorded = registry.get(CHECKSUM)
    if recorded is None:
        if HISTORY in registry:
            return f"{path} has no {CHECKSUM} checksum (it was edited by hand?)"
        return None  # written before registries carried one
    actual = checksum(registry)
    if recorded != actual:
        return (f"{path}: its checksum {str(recorded)[:12]}... differs from {actual[:12]}..., the sha256 of "
                "its content: the file was edited or half-written")
    return None


def write_registry(path: str | os.PathLike, registry: dict[str, Any]) -> None:
    """Write registry.json atomically with its history list and checksum."""
    body = {k: v for k, v in registry.items() if k != CHECKSUM}
    body.setdefault(HISTORY, [])
    body[CHECKSUM] = checksum(body)
    atomic_write_json(path, body)


def champion_entry(run_id: str, metric: str, value: float | None, reason: str, by: str = "rule",
                   at: str | None = None) -> dict[str, Any]:
    """registry.json's ``champion``."""
    assert by in BY, by
    return {"run_id": run_id, "metric": metric, "value": value, "promoted_at": at or now_iso(),
            "reason": reason, "by": by}


def set_champion(registry: dict[str, Any], entry: dict[str, Any] | None) -> None:
    """Name ``entry`` the champion; a change of champion is appended to the history."""
    before = (registry.get("champion") or {}).get("run_id")
    registry["champion"] = entry
    if entry is not None and entry["run_id"] != before:
        history = [h for h in registry.get(HISTORY) or [] if isinstance(h, dict)]
        history.append({"run_id": entry["run_id"], "at": entry.get("promoted_at") or now_iso(),
                        "by": entry.get("by", "rule"), "reason": entry.get("reason", ""),
                        "replaced": before})
        registry[HISTORY] = history[-MAX_HISTORY:]


def earlier_champions(registry: dict[str, Any]) -> list[str]:
    """The run ids that were champion before the current one, most recent first, each once: each
    history entry's run and the run it replaced (a registry written before the history existed
    knows its first champion only as the run the first entry replaced)."""
    current = (registry.get("champion") or {}).get("run_id")
    out: list[str] = []
    for h in reversed(registry.get(HISTORY) or []):
        if not isinstance(h, dict):
            continue
        for run_id in (h.get("run_id"), h.get("replaced")):
            if isinstance(run_id, str) and run_id and run_id != current and run_id not in out:
                out.append(run_id)
    return out


def last_decision(registry: dict[str, Any]) -> dict[str, Any] | None:
    """The newest history entry (who made the champion what it is, when, why), or None."""
    history = [h for h in registry.get(HISTORY) or [] if isinstance(h, dict)]
    return history[-1] if history else None
