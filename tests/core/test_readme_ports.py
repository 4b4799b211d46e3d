"""The README says how to point Prefect's UI at a server on another port, with settings Prefect
really reads (a renamed setting would leave the UI unable to reach its API again)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_starts_a_server_on_another_port_with_the_ui_pointed_at_it():
    text = README.read_text()
    m = re.search(r"PREFECT_UI_API_URL=(http://127\.0\.0\.1:(\d+)/api) \S*prefect server start --port (\d+)", text)
    assert m and m.group(2) == m.group(3) != "4200", "README: no server on another port with PREFECT_UI_API_URL"
    assert f"PREFECT_API_URL={m.group(1)}" in text  # the shells point at the same server

    import os

    from prefect.settings import Settings  # what Prefect reads from these names

    saved = {k: os.environ.get(k) for k in ("PREFECT_UI_API_URL", "PREFECT_SERVER_API_PORT")}
    try:
        os.environ["PREFECT_UI_API_URL"] = m.group(1)
        os.environ["PREFECT_SERVER_API_PORT"] = m.group(2)
        settings = Settings()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert settings.server.ui.api_url == m.group(1) and settings.server.api.port == int(m.group(2))
