"""Issue 29: `cifar reports` (flows/reports_server.py) against hostile clients: a foreign Host
header (DNS rebinding), dotfiles, idle and half-sent connections, clients that hang up, a port
out of range. Real sockets on loopback; the CLI in a subprocess where its output matters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.reports_server import MAX_CONNECTIONS, Background

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def artifacts(tmp_path):
    root = tmp_path / "artifacts"
    (root / "p").mkdir(parents=True)
    (root / "index.html").write_text("<h1>runs</h1>")
    (root / ".env").write_text("AWS_SECRET_ACCESS_KEY=xyz")
    (root / "p" / ".tmp-save").mkdir()
    (root / "p" / ".tmp-save" / "x.json").write_text("{}")
    (root / "big.bin").write_bytes(bytes(8 << 20))
    return root


def get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


def test_only_loopback_host_names_are_answered(artifacts):
    with Background(artifacts) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert get(url, "/index.html", host)[0] == 200, host
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            assert get(url, "/index.html", host)[0] == 421, host


def test_dotfiles_and_dot_folders_are_not_served_or_listed(artifacts):
    with Background(artifacts) as url:
        assert get(url, "/.env")[0] == 404
        assert get(url, "/p/.tmp-save/x.json")[0] == 404
        assert get(url, "/%2eenv")[0] == 404
        (artifacts / "p" / "report.html").write_text("r")
        status, body = get(url, "/p/")
        assert status == 200 and b"report.html" in body and b".tmp-save" not in body


def test_idle_and_half_sent_connections_are_dropped_and_capped(artifacts):
    before = threading.active_count()
    with Background(artifacts, idle_timeout=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            socks.append(s)
        time.sleep(0.3)
        assert threading.active_count() - before <= MAX_CONNECTIONS + 2
        time.sleep(1.5)
        assert threading.active_count() - before <= 2  # every idle one timed out
        assert get(url, "/index.html")[0] == 200
        for s in socks:
            s.close()


def _cli(tmp_path: Path, *args: str, **kw) -> subprocess.Popen:
    (tmp_path / "pipelines.yaml").write_text("artifacts_dir: artifacts\npipelines:\n  a: {}\n")
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "reports", "--config",
                             str(tmp_path / "pipelines.yaml"), *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


@pytest.mark.subprocess
def test_a_client_that_hangs_up_is_one_line_not_a_traceback(artifacts, tmp_path):
    proc = _cli(tmp_path, "--port", "0")
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.recv(100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # a reset mid-transfer
        time.sleep(1.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err[-3000:]
    assert err.count("connection ended") >= 1, err[-3000:]


@pytest.mark.subprocess
@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(tmp_path, port):
    proc = _cli(tmp_path, "--port", port)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"expected a port number 0..65535, got {port!r}" in err
