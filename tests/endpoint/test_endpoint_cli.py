"""`cifar endpoint` as users run it: a real process (flows/endpoint_cli.py) that reads the
pipelines file, serves on the port it is given, loads no TensorFlow, and
stops cleanly on SIGTERM (uvicorn finishes the requests in flight, then exits 143 as every `cifar` command)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_cifar_endpoint_serves_the_champion_and_stops_on_sigterm(saved_runs, tmp_path):
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nartifacts_dir: {saved_runs['artifacts']}\n"
                      "pipelines:\n  tiny: {}\n")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "endpoint", "--config", str(config),
                             "--pipeline", "tiny", "--pipeline", "other", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() - started < 60, "not ready in 60 s"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            ready_after = time.monotonic() - started
            r = client.post("/v1/models/tiny:predict", json={"instances": [[[[0] * 3] * 32] * 32]})
            assert r.json()["predictions"][0]["class_name"] == "cat"
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert "_pywrap_tensorflow_internal" not in maps and "libtensorflow_framework" not in maps
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, out  # as every cifar command: 128 + the signal
    assert "interrupted by SIGTERM: cifar endpoint stopped" in out and "Traceback" not in out
    assert f"serving tiny, other from {saved_runs['artifacts']} at http://127.0.0.1:{port}" in out
    assert "tiny: now serving run" in out and "batch: 1 image(s) from 1 request(s)" in out
    assert ready_after < 30, ready_after


@pytest.mark.subprocess
def test_an_unknown_pipeline_is_a_config_error_naming_the_known_ones(saved_runs, tmp_path):
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"artifacts_dir: {saved_runs['artifacts']}\npipelines:\n  tiny: {{}}\n  later: {{}}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "endpoint", "--config", str(config), "--pipeline", "tiyn"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--pipeline tiyn: no such pipeline in the file" in r.stderr and "pipelines: tiny, later" in r.stderr
