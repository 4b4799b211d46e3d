"""``cifar runs`` as text: the rows of ``tasks.core.runs.list_runs`` in aligned columns."""

from __future__ import annotations

from typing import Any

from tasks.core.numbers import pct


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """The rows of list_runs as aligned text (``cifar runs``); ``*`` marks each champion,
    ``* BROKEN`` one whose model.keras is missing or altered."""
    if not rows:
        return "no runs yet"
    head = ["PIPELINE", "RUN ID", "CREATED (UTC)", "MODEL", "EPOCHS", "TEST ACC", "TRAIN TIME", "CHAMPION", "REPORT"]
    table = [head]
    for r in rows:
        created = str(r.get("created_at") or "-")[:16].replace("T", " ")
        acc = r.get("test_accuracy")
        table.append(
            [
                str(r.get("pipeline")),
                str(r.get("run_id")),
                created,
                str(r.get("model") or "-"),
                "-" if r.get("epochs") is None else str(r["epochs"]),
                "-" if acc is None else pct(acc),
                _duration(r.get("train_seconds")),
                ("* BROKEN" if r.get("champion_problem") else "*") if r.get("champion") else "",
                r.get("report") or "-",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {4, 5, 6}  # numbers align right
    lines = []
    for row in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
