"""The report's "what changed since the champion" section: from this run's metadata.json and the
champion's (the one it was judged against), the images per class (net, by split), the channel
statistics of the training images, the settings and the code versions that differ, and, when
the test split changed, the champion's score on this run's test images beside its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.run_files import read_run_file

SPLITS = ("train", "test")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"training": {"seed": 1}} -> {"training.seed": 1}."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj} if prefix else {}


def diff_settings(before: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {key, before, now} for every dotted key whose value differs (absent: None)."""
    a, b = flatten(before or {}), flatten(now or {})
    return [{"key": k, "before": a.get(k), "now": b.get(k)}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def class_rows(before: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class and split: images in the champion's dataset, in this run's, and the net change
    (a class new in this run has None before)."""
    rows = []
    classes = list(dict.fromkeys([*((now.get("train") or {}).keys()), *((before.get("train") or {}).keys())]))
    for cls in classes:
        row: dict[str, Any] = {"class": cls}
        for split in SPLITS:
            b, n = (before.get(split) or {}).get(cls), (now.get(split) or {}).get(cls)
            row[split] = {"before": b, "now": n, "delta": (n or 0) - (b or 0)}
        rows.append(row)
    return rows


def _stats(validation: dict[str, Any]) -> dict[str, Any]:
    return {"mean": validation.get("channel_mean"), "std": validation.get("channel_std")}


def changes_since_champion(meta: dict[str, Any], artifacts_dir: str | Path) -> dict[str, Any] | None:
    """What the section shows, or None when there was no champion before this run (or its
    metadata is gone)."""
    promo = meta.get("promotion") or {}
    champ_id = promo.get("champion_before")
    if not champ_id or champ_id == meta.get("run_id"):
        return None
    champ, _ = read_run_file(runs.run_dir(artifacts_dir, meta.get("pipeline", ""), champ_id) / runs.METADATA,
                             "metadata")
    if not champ:
        return None
    ds_before, ds_now = champ.get("dataset") or {}, meta.get("dataset") or {}
    rows = class_rows(ds_before.get("counts") or {}, ds_now.get("counts") or {})
    code_before, code_now = champ.get("code") or {}, meta.get("code") or {}
    code = [{"stage": k, "before": code_before.get(k), "now": code_now.get(k)}
            for k in sorted(set(code_before) | set(code_now)) if code_before.get(k) != code_now.get(k)]
    return {
        "champion": champ_id,
        "data_changed": ds_before.get("fingerprint") != ds_now.get("fingerprint"),
        "archive_before": ds_before.get("archive_sha256"),
        "archive_now": ds_now.get("archive_sha256"),
        "class_rows": rows,
        "added": {s: sum(max(r[s]["delta"], 0) for r in rows) for s in SPLITS},
        "removed": {s: sum(max(-r[s]["delta"], 0) for r in rows) for s in SPLITS},
        "test_split_changed": ds_before.get("test_split") != ds_now.get("test_split"),
        "stats_before": _stats(champ.get("validation") or {}),
        "stats_now": _stats(meta.get("validation") or {}),
        "config": diff_settings(champ.get("config") or {}, meta.get("config") or {}),
        "code": code,
        "code_known": bool(code_before and code_now),
        "rescored": promo.get("champion_rescored"),
        "trigger": meta.get("trigger"),
    }
