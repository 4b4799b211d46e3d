"""Issue 29, predict half: what `cifar predict` and batch scoring read (files, folders, archives,
URLs) passes the core guards (tasks/core/guards_files.py, members.py, guards_http.py), and what
they print or write passes guards_text. Real files, FIFOs and devices, real loopback HTTP; the
cases that hung or blew up before run in a subprocess with a timeout and RLIMIT_AS."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tasks.core.members import ExtractionBudget
from tasks.predict.inputs import iter_sources

REPO = Path(__file__).resolve().parents[2]


def run_py(code: str, timeout: float = 30, limit: int = 1 << 30) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter under RLIMIT_AS ``limit``; prints its peak RSS last (VmHWM:
    ru_maxrss would carry the forking pytest worker's peak across exec)."""
    body = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    """) + textwrap.dedent(code) + textwrap.dedent("""
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
        print("PEAK_MB", int(hwm.split()[1]) // 1024)
    """)
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def peak_mb(r: subprocess.CompletedProcess) -> int:
    return int(r.stdout.rsplit("PEAK_MB", 1)[1])


def sources_of(*paths, budget=None) -> list:
    return list(iter_sources([Path(p) for p in paths], budget) if budget else iter_sources(paths))


def huge_header_tar(path: Path, kind: bytes, size: int) -> None:
    """A .tar.gz whose first header declares a GNU long name (kind L) or pax header (kind x) of
    ``size`` bytes, the body zeros, written a MiB at a time."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, size
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT)[:512])
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            f.write(block)


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["gnu-long-name", "pax"])
def test_a_huge_tar_header_is_refused_before_it_is_read(tmp_path, kind):
    path = tmp_path / "names.tar.gz"
    huge_header_tar(path, kind, 100 << 20)
    assert path.stat().st_size < 600_000  # ~460 KB
    r = run_py(f"""
        from pathlib import Path
        from tasks.predict.inputs import iter_sources
        for s in iter_sources([Path({str(path)!r})]):
            print("SOURCE", s.name, s.error)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "header of 104,857,600 bytes (at most 1,048,576 are read); refused" in r.stdout
    assert peak_mb(r) < 200, r.stdout


def test_one_budget_of_entries_for_the_whole_call(tmp_path):
    for i in range(2):
        with tarfile.open(tmp_path / f"many{i}.tar", "w") as tf:
            for j in range(700):
                tf.addfile(tarfile.TarInfo(f"e{j}.txt"), io.BytesIO())
    budget = ExtractionBudget(1 << 30, "the inputs", "Split it.", max_members=1000)
    got = sources_of(tmp_path / "many0.tar", tmp_path / "many1.tar", budget=budget)
    assert [s.name for s in got] == [str(tmp_path / "many1.tar")]  # the first fits, the second tips it
    assert "more than 1,000 entries (at 'e300.txt'); refused as a possible archive bomb. Split it." in got[0].error


def test_one_budget_of_bytes_for_the_whole_call(tmp_path):
    png = b"\x89PNG" + bytes(600_000)
    for i in range(2):
        with zipfile.ZipFile(tmp_path / f"z{i}.zip", "w") as zf:
            zf.writestr("a.png", png)
    budget = ExtractionBudget(1_000_000, "the inputs", "Split it.")
    got = sources_of(tmp_path / "z0.zip", tmp_path / "z1.zip", budget=budget)
    assert got[0].data == png and got[1].name == str(tmp_path / "z1.zip")
    assert "members add up to more than 1 MiB (at 'a.png')" in got[1].error


def test_the_default_budget_is_per_call_and_bounded():
    from tasks.predict import inputs

    assert inputs.MAX_INPUT_FILES <= 100_000 and inputs.MAX_INPUT_BYTES <= 4 << 30
    assert inputs.new_budget("x").max_members == inputs.MAX_INPUT_FILES


@pytest.mark.subprocess
def test_fifos_devices_and_links_in_a_folder_are_named_and_never_opened(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.tar")
    os.mkfifo(folder / "noext")
    (folder / "zero.png").symlink_to("/dev/zero")
    r = run_py(f"""
        from pathlib import Path
        from tasks.predict.inputs import iter_sources
        for s in iter_sources([Path({str(folder)!r}), Path("/dev/zero")]):
            print("SOURCE", s.name, "|", s.error)
    """, timeout=20)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("SOURCE")]
    assert f"SOURCE {folder}/pipe.png | {folder}/pipe.png is a FIFO (named pipe), not a regular file; skipped" \
           in "\n".join(lines)
    assert any(f"{folder}/pipe.tar is a FIFO" in ln for ln in lines)
    assert any(f"{folder}/zero.png is a symbolic link, not a regular file" in ln for ln in lines)
    assert any("/dev/zero is a character device, not a regular file; skipped" in ln for ln in lines)
    assert len(lines) == 4 and peak_mb(r) < 200


def test_a_file_past_the_per_file_cap_is_skipped_unread(tmp_path, monkeypatch):
    from tasks.predict import inputs

    monkeypatch.setattr(inputs, "MAX_FILE_BYTES", 1000)
    (tmp_path / "big.png").write_bytes(bytes(5000))
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        info = tarfile.TarInfo("big.png")
        info.size = 5000
        tf.addfile(info, io.BytesIO(bytes(5000)))
    got = sources_of(tmp_path / "big.png", tmp_path / "a.tar")
    assert [s.data for s in got] == [None, None]
    assert all("5,000 bytes, more than the 0 MiB an image may have; skipped unread" in s.error for s in got)


# --------------------------------------------------------------------------- names on the way out
HOSTILE = ["\x1b[2J\x1b[31mred.png", "ok.png\rcat 0.999", "=HYPERLINK(\"http://x\").png",
           "+cmd|' /C calc'!A0.png", "@SUM(1).png", "-2+3.png"]


def test_hostile_names_are_escaped_for_the_terminal_and_inert_in_the_csv(tmp_path):
    import csv

    from tasks.predict.batch import build_folder
    from tasks.predict.scoring import _prepare, as_line, as_record
    from tasks.predict.inputs import Source

    fails = [_prepare(Source(n, b"not an image"), (8, 8, 3)) for n in HOSTILE]
    assert fails[0].name == "\\x1b[2J\\x1b[31mred.png" and "\x1b" not in fails[0].error
    assert fails[1].name == "ok.png\\x0dcat 0.999"
    build_folder(tmp_path / "out", iter(fails), {"pipeline": "p", "run_id": "r", "model_sha256": "0",
                                                 "input": "i", "input_sha256": "0", "top_k": 1,
                                                 "input_shape": [8, 8, 3]})
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv", encoding="utf-8")))
    assert [r["file"][0] for r in rows[2:]] == ["'"] * 4  # =, +, @, - lead: text, not formulas
    assert rows[2]["file"] == "'=HYPERLINK(\"http://x\").png"
    assert all(not r["error"].startswith(("=", "+", "-", "@")) for r in rows)
    from tasks.predict.scoring import Prediction

    line = as_line(Prediction(fails[1].name, [("cat", 0.5)], 0))
    assert "\r" not in line and "\x1b" not in json.dumps(as_record(fails[0]))


def test_a_name_that_is_not_utf8_stays_valid_json(tmp_path):
    from tasks.predict.scoring import _prepare, as_record

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(b"junk")
    (src,) = sources_of(folder)
    rec = as_record(_prepare(src, (8, 8, 3)))
    assert rec["file"].endswith("caf\\xe9.png")
    json.dumps(rec, ensure_ascii=False).encode("utf-8")  # no lone surrogate left


def test_image_errors_name_the_file_not_a_buffer():
    from tasks.predict.scoring import _prepare
    from tasks.predict.inputs import Source

    err = _prepare(Source("x.png", b"\x89PNG junk"), (8, 8, 3)).error
    assert "BytesIO" not in err and "x.png: corrupt or unreadable image" in err


# --------------------------------------------------------------------------- URL inputs
class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/gzip":
            body = gzip.compress(bytes(32 << 20), 1)  # 32 MiB once inflated, ~32 KB sent
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_an_encoded_response_is_refused_not_inflated(server, tmp_path):
    from tasks.predict.errors import InputError
    from tasks.predict.fetch import fetch_url

    with pytest.raises(InputError, match="sent a 'gzip'-encoded body although only the file's own bytes"):
        fetch_url(f"{server}/gzip", tmp_path, max_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_a_slow_server_meets_the_overall_deadline(server, tmp_path):
    from tasks.predict.errors import InputError
    from tasks.predict.fetch import fetch_url

    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"drip: not complete after 1 s \(\d+ bytes so far\); given up"):
        fetch_url(f"{server}/drip", tmp_path, deadline_s=1.0)
    assert time.monotonic() - t0 < 5 and list(tmp_path.iterdir()) == []


def test_a_redirect_loop_names_the_url(server, tmp_path):
    from tasks.predict.errors import InputError
    from tasks.predict.fetch import fetch_url

    with pytest.raises(InputError, match=r"/loop: more than 5 redirects \(a redirect loop\?\)"):
        fetch_url(f"{server}/loop", tmp_path)


def test_the_output_folder_is_checked_before_anything_is_scored(tmp_path):
    from flows.predict import check_output
    from tasks.predict.errors import InputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder; nothing was scored"):
        check_output(tmp_path / "file")
    with pytest.raises(InputError, match="cannot be written; nothing was scored"):
        check_output(tmp_path / "file" / "sub")
    check_output(tmp_path / "new" / "folder")  # created later: fine


def test_downloaded_inputs_and_old_scoring_folders_are_cleaned_up(tmp_path):
    from tasks.predict.fetch import remove_fetched
    from tasks.predict.jobs import prune_scores

    inputs = tmp_path / "predict-inputs"
    inputs.mkdir()
    (inputs / "x.tar").write_text("x")
    remove_fetched(inputs / "x.tar", inputs)
    remove_fetched(tmp_path / "elsewhere", inputs)  # only a file inside the folder is removed
    assert not (inputs / "x.tar").exists()
    root = tmp_path / "predictions"
    for i in range(5):
        (root / f"k{i}").mkdir(parents=True)
        os.utime(root / f"k{i}", (1000 + i, 1000 + i))
    assert sorted(prune_scores(tmp_path, keep=2, current="k0")) == ["k1", "k2"]
    assert sorted(p.name for p in root.iterdir()) == ["k0", "k3", "k4"]


# --------------------------------------------------------------------------- secrets
def test_credentials_never_reach_a_message_a_log_line_or_a_record(tmp_path, caplog):
    from tasks.core.errors import CifarError
    from tasks.core.logs import get_logger
    from tasks.core.guards_text import redact_record

    url = "https://alice:s3cret@host/data.tgz?X-Amz-Signature=abcd&X-Amz-Credential=AKIA&sig=1&v=2"
    assert "s3cret" not in str(CifarError(f"{url}: HTTP 404")) and "abcd" not in str(CifarError(url))
    with caplog.at_level("INFO", logger="cifar"):
        get_logger().info("downloading %s", url)
        get_logger().info(f"downloading {url}")
    assert "s3cret" not in caplog.text and "abcd" not in caplog.text and "AKIA" not in caplog.text
    assert "https://***@host/data.tgz?X-Amz-Signature=***&X-Amz-Credential=***&sig=***&v=2" in caplog.text
    rec = redact_record({"config": {"dataset": {"source": url},
                                    "deploy": {"env": {"AWS_SECRET_ACCESS_KEY": "xyz", "N": "1"}}}})
    assert rec["config"]["deploy"]["env"] == {"AWS_SECRET_ACCESS_KEY": "***", "N": "***"}
    assert "s3cret" not in json.dumps(rec) and "xyz" not in json.dumps(rec)


def test_the_dataset_cache_records_no_credentials(tmp_path):
    import numpy as np

    from tasks.core.datacache import load_dataset, write_dataset_cache

    x, y = np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1], np.uint8)
    out = tmp_path / "fp"
    write_dataset_cache(out, x, y, x, y, ("a", "b"), {"source": "http://u:pw@h/d.tgz?token=t0k"})
    text = (out / "manifest.json").read_text()
    assert "pw@" not in text and "t0k" not in text and "http://***@h/d.tgz?token=***" in text
    load_dataset(out)  # the manifest's own checksum still holds


def test_the_archive_record_prefect_caches_holds_no_credentials():
    # the fetch task's result is pickled into Prefect's cache records (data/prefect/): its source
    # is redacted when the record is made, a local path kept as it is
    from tasks.download.fetching import ArchiveRecord

    url = "https://user:pw@example.org/c.tar.gz?X-Amz-Signature=abc&x=1"
    record = ArchiveRecord("/data/c.tar.gz", "ab" * 32, 1, url)
    assert "pw" not in record.source and "abc" not in record.source and record.source.endswith("&x=1")
    assert ArchiveRecord("/data/c.tar.gz", "ab" * 32, 1, "/home/me/c.tar.gz").source == "/home/me/c.tar.gz"
