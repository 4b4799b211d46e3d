"""Where a report points outside its own folder: the flow run that made it, in Prefect's UI."""

from __future__ import annotations


def flow_run_url(flow_run_id: str | None, ui_url: str | None = None) -> str | None:
    """The flow run's page in Prefect's UI (``PREFECT_UI_URL``, which Prefect derives from
    ``PREFECT_API_URL``); None outside a server (the embedded API of `cifar run` has no UI and is
    gone when the command ends) or without a flow run."""
    if not flow_run_id:
        return None
    if ui_url is None:
        from prefect.settings import PREFECT_UI_URL

        ui_url = PREFECT_UI_URL.value()
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui_url else None
