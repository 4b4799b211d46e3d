"""The shipped automations (automations/) and the heartbeats they watch (flows/jobs.py): every
automation passes Prefect's own schema, the zombie window is three heartbeat periods, and pooled
deployments carry the period. The automations firing on a real server: tests/e2e/."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_automations_pass_prefects_own_schema():
    sys.path.insert(0, str(REPO / "automations"))
    try:
        import install
    finally:
        sys.path.pop(0)
    bid = uuid.uuid4()
    got = {a.name: a for a in install.definitions(bid)}
    assert set(got) == {"cifar-run-failed", "cifar-model-promoted", "cifar-run-zombie"}
    assert got["cifar-run-failed"].trigger.expect == {"cifar.run.failed"}
    assert got["cifar-model-promoted"].trigger.expect == {"cifar.model.promoted"}
    assert got["cifar-run-zombie"].trigger.after == {"prefect.flow-run.heartbeat"}
    assert all(a.actions[-1].block_document_id == bid for a in got.values())  # each notifies


def test_shipped_window_follows_the_heartbeat_period():
    """notify.yaml's window is 3 heartbeats of what `cifar serve` / `cifar deploy` set."""
    from flows.jobs import HEARTBEAT_SECONDS

    data = yaml.safe_load((REPO / "automations" / "notify.yaml").read_text())
    zombie = next(a for a in data["automations"] if a["name"] == "cifar-run-zombie")
    assert zombie["trigger"]["within"] == 3 * HEARTBEAT_SECONDS


def test_pooled_deployments_carry_the_heartbeat_period():
    """`cifar deploy` puts the period in the job's env, unless the user's env names it."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.jobs import heartbeat_warning, with_heartbeats

    assert with_heartbeats({"stream_output": False}) == {
        "stream_output": False, "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    own = {"env": {"PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60", "A": "1"}}
    assert with_heartbeats(own) == own
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert with_heartbeats({"env": {"A": "1"}}) == {"env": {"A": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}}
    assert "--heartbeat-window 180" in heartbeat_warning(60) and heartbeat_warning(30) is None
