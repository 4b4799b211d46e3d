"""``cifar runs`` as text: the rows of ``tasks.core.runs.list_runs`` in aligned columns, the
test-set size beside each accuracy, a note when the accuracies were measured on test sets of
different sizes, and a warning for each damaged run."""

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


def _status(r: dict[str, Any]) -> str:
    """``*`` the champion; ``DAMAGED`` a run that does not verify (``* DAMAGED``: the one the
    registry names, which is therefore no champion until the next run replaces it)."""
    if r.get("damaged"):
        return "* DAMAGED" if r.get("named_champion") else "DAMAGED"
    return "*" if r.get("champion") else ""


def size_note(rows: list[dict[str, Any]]) -> str | None:
    """A line saying the accuracies were measured on test sets of different sizes, or None."""
    sizes = sorted({r["test_images"] for r in rows if r.get("test_images") is not None})
    if len(sizes) < 2:
        return None
    return (f"note: these accuracies were measured on test sets of different sizes "
            f"({', '.join(f'{n:,}' for n in sizes)} images): compare runs with the same TEST IMAGES only")


def damage_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One warning per damaged run: which file fails which check, and what to do."""
    from tasks.core.verify import WHAT_TO_DO

    return [f"warning: run {r['run_id']} of {r['pipeline']} is damaged"
            + (" (registry.json names it champion; it is not served nor compared with)" if r.get("named_champion") else "")
            + f": {r['damaged']}. To resolve this: {WHAT_TO_DO}."
            for r in rows if r.get("damaged")]


def _validation_cell(r: dict[str, Any]) -> str:
    if r.get("validation_accuracy") is not None:
        return pct(r["validation_accuracy"])
    return "test" if r.get("validation_protocol") == "test" else "-"


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """The rows of list_runs as aligned text (``cifar runs``); ``*`` marks each champion,
    ``DAMAGED`` a run that does not verify (its accuracy ``?`` when metrics.json is the file that
    fails); TEST IMAGES says how many images each accuracy was measured on; VAL ACC is the
    accuracy on held-out training images (``test`` where the run validated on the test split)."""
    if not rows:
        return "no runs yet"
    head = ["PIPELINE", "RUN ID", "CREATED (UTC)", "MODEL", "EPOCHS", "VAL ACC", "TEST ACC", "TEST IMAGES",
            "TRAIN TIME", "CHAMPION", "REPORT"]
    table = [head]
    for r in rows:
        created = str(r.get("created_at") or "-")[:16].replace("T", " ")
        acc, size = r.get("test_accuracy"), r.get("test_images")
        table.append(
            [
                str(r.get("pipeline")),
                str(r.get("run_id")),
                created,
                str(r.get("model") or "-"),
                "-" if r.get("epochs") is None else str(r["epochs"]),
                _validation_cell(r),
                ("?" if r.get("damaged") else "-") if acc is None else pct(acc),
                "-" if size is None else f"{size:,}",
                _duration(r.get("train_seconds")),
                _status(r),
                r.get("report") or "-",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {4, 5, 6, 7, 8}  # numbers align right
    lines = []
    for row in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
