"""Install automations/notify.yaml on the Prefect server PREFECT_API_URL points at, with the
notification block it should send through.

    python automations/install.py --block custom-webhook/ops      (TYPE/NAME of a saved block)
    python automations/install.py --block-id 0b6c...              (or its id)
    python automations/install.py --block ... --heartbeat-window 540   (runs heartbeat every 180 s)

Automations already on the server under the same names are replaced, so running it again
updates them. The block must exist first (the UI's Blocks page, or a block's ``.save(name)``).

``--heartbeat-window`` sets how long the zombie automation (``cifar-run-zombie``) waits after a
run's last heartbeat before it marks the run Crashed: 90 s in notify.yaml, 3 times the 30 s
period that ``cifar serve`` and ``cifar deploy`` give their runs (flows/jobs.py
HEARTBEAT_SECONDS). Keep it well above the period the runs heartbeat at, or it crashes live runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from uuid import UUID

import yaml

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "NOTIFICATION_BLOCK_ID"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
MIN_HEARTBEAT_SECONDS = 30  # Prefect sends no heartbeat more often (flow_engine.MINIMUM_HEARTBEAT_INTERVAL)


def definitions(block_id: UUID, path: Path = HERE / "notify.yaml",
                heartbeat_window: float | None = None) -> list:
    """The file's automations, validated by Prefect's own schema, the block id filled in; with
    ``heartbeat_window``, the ``within`` of those that watch heartbeats set to it (seconds)."""
    from prefect.events.schemas.automations import AutomationCore

    if heartbeat_window is not None and heartbeat_window <= MIN_HEARTBEAT_SECONDS:
        raise SystemExit(f"--heartbeat-window {heartbeat_window:g}: flow runs send a heartbeat every "
                         f"{MIN_HEARTBEAT_SECONDS} s at the most, so a window of {heartbeat_window:g} s "
                         "would mark healthy runs Crashed; give 3 times their period (90 for 30 s)")
    data = yaml.safe_load(path.read_text())
    out = []
    for item in data["automations"]:
        trigger = item.get("trigger", {})
        if heartbeat_window is not None and HEARTBEAT_EVENT in (trigger.get("after") or []):
            trigger["within"] = heartbeat_window
        for action in item.get("actions", []):
            if action.get("block_document_id") == PLACEHOLDER:
                action["block_document_id"] = str(block_id)
        out.append(AutomationCore.model_validate(item))
    return out


def block_id_of(client, slug: str) -> UUID:
    """The id of the saved block ``TYPE/NAME`` (as ``prefect block ls`` lists it)."""
    from prefect.exceptions import ObjectNotFound

    if "/" not in slug:
        raise SystemExit(f"--block {slug!r}: give the block as TYPE/NAME, e.g. custom-webhook/ops "
                         "(see `prefect block ls`)")
    block_type, name = slug.split("/", 1)
    try:
        return client.read_block_document_by_name(name, block_type_slug=block_type).id
    except ObjectNotFound:
        raise SystemExit(f"no block {slug!r} on this server; create it first (see `prefect block ls`)") from None


def install(block: str | None = None, block_id: str | None = None,
            heartbeat_window: float | None = None) -> list[tuple[str, UUID]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        bid = UUID(block_id) if block_id else block_id_of(client, block)
        created = []
        for automation in definitions(bid, heartbeat_window=heartbeat_window):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created.append((automation.name, client.create_automation(automation)))
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--block", help="the notification block as TYPE/NAME (prefect block ls)")
    which.add_argument("--block-id", help="the notification block's id")
    parser.add_argument("--heartbeat-window", type=float, metavar="SECONDS",
                        help="seconds without a heartbeat before a run is marked Crashed "
                             "(default 90, from notify.yaml: 3 times the 30 s heartbeat period)")
    args = parser.parse_args(argv)
    for name, automation_id in install(args.block, args.block_id, args.heartbeat_window):
        print(f"installed automation {name!r} ({automation_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
