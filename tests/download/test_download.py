"""Download-and-cache: real loopback HTTP, tiny archives in the official layouts, real Prefect
for the retry and cache slice. No mocks."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import io
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from archives import (
    CIFAR10_CLASSES,
    Fault,
    FileServer,
    add_bytes,
    add_symlink,
    binary_members,
    build_binary_archive,
    build_image_folder,
    build_python_archive,
    cut,
    encode_image,
    evil_pickle,
    flip,
    ignore_range,
    random_split,
    redirect,
    sha256_of,
    slow,
    status,
    write_tar,
    wrong_offset,
)
from tasks.core.datacache import cache_problems, load_dataset
from tasks.download.archive import iter_tar_threaded
from tasks.download.config import DatasetConfig
from tasks.download.decode import balanced_subset, decode_and_cache, decode_archive
from tasks.download.errors import (
    ChecksumError,
    DatasetFormatError,
    SourceNotFoundError,
    TransientDownloadError,
    UnsafeArchiveError,
)
from tasks.download.fetching import fetch

MB = 2**20
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                   "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch):
    """The client honours the proxy variables; these tests set their own, so a proxy in the
    machine's environment does not carry (or break) their loopback requests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def url_cfg(built, url, **kw) -> DatasetConfig:
    return DatasetConfig(source=url, sha256=built.sha256, connect_timeout=2, read_timeout=5, **kw)


@pytest.fixture
def binary(tmp_path):
    return build_binary_archive(tmp_path / "src", n_train=60, n_test=20)


@pytest.fixture
def file_server():
    with FileServer() as srv:
        yield srv


def downloads(data: Path) -> list[str]:
    d = data / "downloads"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.exists() else []


# --------------------------------------------------------------------------- download
def test_body_cut_midway_resumes_with_range_for_exactly_the_remainder(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.script("c.tar.gz", cut(1000))
    rec = fetch(url_cfg(binary, url), tmp_path / "data")
    reqs = file_server.hits("c.tar.gz")
    assert [(r.status, r.range, r.sent) for r in reqs] == [
        (200, None, 1000), (206, "bytes=1000-", binary.size - 1000)]
    assert rec.sha256 == binary.sha256 and rec.size == binary.size
    assert Path(rec.path).read_bytes() == binary.path.read_bytes()
    assert Path(rec.path).name.startswith(binary.sha256[:16])
    assert not any(n.endswith(".part") for n in downloads(tmp_path / "data"))


def test_206_at_the_wrong_offset_restarts_from_zero(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.script("c.tar.gz", cut(500), wrong_offset(7))
    rec = fetch(url_cfg(binary, url), tmp_path / "data")
    assert [(r.status, r.range) for r in file_server.hits()] == [
        (200, None), (206, "bytes=500-"), (200, None)]
    assert rec.sha256 == binary.sha256


def test_ignored_range_200_rewrites_from_zero(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.script("c.tar.gz", cut(700), ignore_range())
    rec = fetch(url_cfg(binary, url), tmp_path / "data")
    assert [(r.status, r.range) for r in file_server.hits()] == [(200, None), (200, "bytes=700-")]
    assert Path(rec.path).read_bytes() == binary.path.read_bytes()


def test_503_is_transient_and_the_partial_file_is_kept_for_the_retry(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.script("c.tar.gz", status(503))
    with pytest.raises(TransientDownloadError, match="503"):
        fetch(url_cfg(binary, url), tmp_path / "data")
    assert downloads(tmp_path / "data") == []
    assert fetch(url_cfg(binary, url), tmp_path / "data").sha256 == binary.sha256


def test_flipped_bytes_give_a_checksum_error_and_nothing_is_cached(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.default["c.tar.gz"] = flip(100)
    with pytest.raises(ChecksumError) as err:
        fetch(url_cfg(binary, url), tmp_path / "data")
    msg = str(err.value)
    assert url in msg and binary.sha256 in msg and "To resolve" in msg
    actual = msg.split("got ")[1].split()[0]
    assert len(actual) == 64 and actual != binary.sha256
    assert downloads(tmp_path / "data") == []  # no final file, no .part
    assert len(file_server.hits()) == 1


def test_checksum_mismatch_and_404_move_to_the_next_mirror(tmp_path, binary, file_server):
    file_server.add("bad.tar.gz", binary.path)
    file_server.default["bad.tar.gz"] = flip(5)
    good = file_server.add("good.tar.gz", binary.path)
    cfg = DatasetConfig(source=file_server.url("missing.tar.gz"), mirrors=[file_server.url("bad.tar.gz"), good],
                        sha256=binary.sha256)
    rec = fetch(cfg, tmp_path / "data")
    assert rec.source == good and rec.sha256 == binary.sha256
    assert [(r.path, r.status) for r in file_server.hits()] == [
        ("/missing.tar.gz", 404), ("/bad.tar.gz", 200), ("/good.tar.gz", 200)]


def test_404_alone_is_a_clear_not_found_error(tmp_path, binary, file_server):
    cfg = url_cfg(binary, file_server.url("nope.tar.gz"))
    with pytest.raises(SourceNotFoundError, match=r"nope\.tar\.gz: HTTP 404"):
        fetch(cfg, tmp_path / "data")


def test_second_run_makes_zero_requests(tmp_path, binary, file_server):
    cfg = url_cfg(binary, file_server.add("c.tar.gz", binary.path))
    first = fetch(cfg, tmp_path / "data")
    n = len(file_server.requests)
    t0 = time.perf_counter()
    again = fetch(cfg, tmp_path / "data")
    assert time.perf_counter() - t0 < 0.5
    assert len(file_server.requests) == n == 1 and again == first


def test_a_damaged_archive_on_disk_is_fetched_again(tmp_path, binary, file_server):
    cfg = url_cfg(binary, file_server.add("c.tar.gz", binary.path))
    rec = fetch(cfg, tmp_path / "data")
    data = bytearray(Path(rec.path).read_bytes())
    data[50] ^= 1
    Path(rec.path).write_bytes(bytes(data))  # same size, new mtime -> re-hashed
    assert fetch(cfg, tmp_path / "data").sha256 == binary.sha256
    assert len(file_server.requests) == 2


def test_two_concurrent_fetches_download_once(tmp_path, binary, file_server):
    cfg = url_cfg(binary, file_server.add("c.tar.gz", binary.path))
    file_server.default["c.tar.gz"] = slow(0.05)
    results, errors = [], []

    def go():
        try:
            results.append(fetch(cfg, tmp_path / "data"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(file_server.hits("c.tar.gz")) == 1


def test_a_local_path_without_checksum_is_hashed(tmp_path, binary):
    rec = fetch(DatasetConfig(source=str(binary.path)), tmp_path / "data")
    assert rec.path == str(binary.path) and rec.sha256 == binary.sha256


def test_a_file_url_is_verified_against_its_checksum(tmp_path, binary):
    bad = DatasetConfig(source=binary.path.as_uri(), sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected 0000"):
        fetch(bad, tmp_path / "data")


def test_a_missing_local_path_is_a_clear_not_found_error(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file"):
        fetch(DatasetConfig(source=str(tmp_path / "absent.tar.gz")), tmp_path / "data")


def test_redirects_are_followed_with_the_range(tmp_path, binary, file_server):
    file_server.add("c.tar.gz", binary.path)
    file_server.script("old.tar.gz", redirect("/c.tar.gz"), redirect("/c.tar.gz"))
    file_server.script("c.tar.gz", cut(1000))
    rec = fetch(url_cfg(binary, file_server.url("old.tar.gz")), tmp_path / "data")
    assert [(r.path, r.status, r.range) for r in file_server.hits()] == [
        ("/old.tar.gz", 302, None), ("/c.tar.gz", 200, None),
        ("/old.tar.gz", 302, "bytes=1000-"), ("/c.tar.gz", 206, "bytes=1000-")]
    assert rec.sha256 == binary.sha256 and rec.source == file_server.url("old.tar.gz")


def test_a_redirect_loop_is_refused(tmp_path, binary, file_server):
    file_server.default["loop"] = redirect("/loop")
    with pytest.raises(SourceNotFoundError, match=r"loop: more than 5 redirects"):
        fetch(url_cfg(binary, file_server.url("loop")), tmp_path / "data2")
    assert len(file_server.hits("loop")) == 6


def test_a_resume_names_the_etag(tmp_path, binary, file_server):
    url = file_server.add("c.tar.gz", binary.path)
    file_server.etags["c.tar.gz"] = '"v1"'
    file_server.script("c.tar.gz", cut(1000))
    assert fetch(url_cfg(binary, url), tmp_path / "data").sha256 == binary.sha256
    assert [(r.status, r.range, r.if_range) for r in file_server.hits()] == [
        (200, None, None), (206, "bytes=1000-", '"v1"')]


def test_a_file_changed_before_the_resume_is_fetched_whole(tmp_path, binary, file_server):
    # the file changes between the drop and the resume: If-Range gets the new file whole,
    # instead of its tail spliced onto the old file's head
    old = bytearray(binary.path.read_bytes())
    old[100] ^= 0xFF
    url2 = file_server.add("d.tar.gz", bytes(old))
    file_server.etags["d.tar.gz"] = '"old"'
    file_server.script("d.tar.gz", Fault(cut=1000, swap=(binary.path.read_bytes(), '"new"')))
    rec = fetch(url_cfg(binary, url2), tmp_path / "data2")
    assert rec.sha256 == binary.sha256
    assert [(r.status, r.range, r.if_range) for r in file_server.hits("d.tar.gz")] == [
        (200, None, None), (200, "bytes=1000-", '"old"')]


def test_a_stalled_body_times_out_and_resumes_where_it_stopped(tmp_path, file_server):
    payload = np.random.default_rng(2).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    url = file_server.add("stall.bin", payload)
    file_server.script("stall.bin", slow(3.0))  # the first 64 KiB, then nothing for 3 s
    cfg = DatasetConfig(source=url, sha256=hashlib.sha256(payload).hexdigest(),
                        connect_timeout=2, read_timeout=1)
    t0 = time.monotonic()
    rec = fetch(cfg, tmp_path / "data")
    assert time.monotonic() - t0 < 2.9  # the read timeout, not the server, ended the stall
    assert [(r.status, r.range) for r in file_server.hits()] == [(200, None), (206, "bytes=65536-")]
    assert Path(rec.path).read_bytes() == payload


class ForwardingProxy:
    """A plain HTTP proxy on 127.0.0.1: takes absolute-URI GETs (what a client sends a proxy),
    forwards each to its server and relays the answer. ``seen`` lists the URIs it was asked for."""

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                            "te", "trailer", "transfer-encoding", "upgrade", "content-length"})

    def __init__(self):
        self.seen: list[str] = []

    def __enter__(self) -> ForwardingProxy:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.seen.append(self.path)
                target = urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in owner.HOP_BY_HOP}
                upstream.request("GET", target.path or "/", headers=headers)
                resp = upstream.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in owner.HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                upstream.close()

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def test_the_environments_http_proxy_carries_the_download_and_no_proxy_bypasses_it(
        tmp_path, binary, file_server, monkeypatch):
    url = file_server.add("c.tar.gz", binary.path)
    with ForwardingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        rec = fetch(url_cfg(binary, url), tmp_path / "data")
    assert rec.sha256 == binary.sha256 and Path(rec.path).read_bytes() == binary.path.read_bytes()
    assert proxy.seen == [url]  # the proxy was asked for the archive by its absolute URI ...
    assert [(r.path, r.status) for r in file_server.hits()] == [("/c.tar.gz", 200)]  # ... and fetched it
    # the proxy is gone now: with HTTP_PROXY still naming it the download fails, with NO_PROXY
    # naming the server it goes straight there
    with pytest.raises(TransientDownloadError, match="network error"):
        fetch(url_cfg(binary, url), tmp_path / "data2")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch(url_cfg(binary, url), tmp_path / "data3").sha256 == binary.sha256
    assert proxy.seen == [url] and len(file_server.hits()) == 2


# --------------------------------------------------------------------------- decode
def test_golden_binary_channel_order(tmp_path):
    rng = np.random.default_rng(1)
    records = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
    records[:, 0] = [0, 9, 4]
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = [("cifar-10-batches-bin/batches.meta.txt", "\n".join(CIFAR10_CLASSES).encode())] + [
        (f"cifar-10-batches-bin/{b}.bin", records.tobytes() if b == "data_batch_1" else b"") for b in batches]
    path = write_tar(tmp_path / "golden.tar.gz", members)
    x, y = decode_archive(path, "cifar10-binary", 100 * MB)[:2]
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [0, 9, 4]
    for i, r, c, ch in [(0, 0, 0, 0), (1, 31, 31, 2), (2, 5, 17, 1), (0, 0, 1, 2), (1, 1, 0, 0)]:
        assert x[i, r, c, ch] == records[i, 1 + ch * 1024 + r * 32 + c]
    i, r, c, ch = np.meshgrid(range(3), range(32), range(32), range(3), indexing="ij")
    assert np.array_equal(x, records[i, 1 + ch * 1024 + r * 32 + c])


def test_binary_archive_round_trip_into_the_cache(tmp_path, binary):
    cfg = DatasetConfig(source=str(binary.path))
    rec = decode_and_cache(fetch(cfg, tmp_path / "data"), cfg, tmp_path / "data")
    ds = load_dataset(rec.path)
    assert isinstance(ds.x_train, np.memmap)
    assert np.array_equal(ds.x_train, binary.x_train) and np.array_equal(ds.y_train, binary.y_train)
    assert np.array_equal(ds.x_test, binary.x_test) and np.array_equal(ds.y_test, binary.y_test)
    assert ds.classes == CIFAR10_CLASSES and rec.input_shape == (32, 32, 3)
    assert ds.manifest["archive_sha256"] == binary.sha256 and ds.manifest["format"] == "cifar10-binary"


def test_python_archive_decodes_to_the_same_arrays(tmp_path):
    arrays = random_split(30, 10, seed=3)
    py = build_python_archive(tmp_path / "py", arrays=arrays)
    bn = build_binary_archive(tmp_path / "bin", arrays=arrays)
    a = decode_archive(py.path, "cifar10-python", 100 * MB)
    b = decode_archive(bn.path, "cifar10-binary", 100 * MB)
    for got, want, other in zip(a[:4], arrays, b[:4]):
        assert np.array_equal(got, want) and np.array_equal(got, other)
    assert a[4] == b[4] == CIFAR10_CLASSES


@pytest.mark.parametrize("n_train", [25, 23])  # equal batches (5 x 5), then 5,5,5,4,4
def test_batches_in_any_order_and_of_uneven_size_assemble_in_batch_order(tmp_path, n_train):
    arrays = random_split(n_train, 6, seed=4)
    members = binary_members(*arrays)
    shuffled = [members[0], *reversed(members[1:])]  # test_batch first, data_batch_5 before 1
    path = write_tar(tmp_path / "r" / "cifar-10-binary.tar.gz", shuffled)
    got = decode_archive(path, "cifar10-binary", 100 * MB)
    for a, want in zip(got[:4], arrays, strict=True):
        assert np.array_equal(a, want) and a.flags.c_contiguous
    py = build_python_archive(tmp_path / "py", arrays=arrays)
    for a, want in zip(decode_archive(py.path, "cifar10-python", 100 * MB)[:4], arrays, strict=True):
        assert np.array_equal(a, want)


def test_malicious_pickle_is_refused_and_its_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_pickle(os.system, f"touch {marker}")
    built = build_python_archive(tmp_path / "py", replace={"data_batch_3": evil})
    with pytest.raises(UnsafeArchiveError, match=r"data_batch_3.*(posix|os)\.system"):
        decode_archive(built.path, "cifar10-python", 100 * MB)
    evil2 = evil_pickle(exec, f"open({str(marker)!r}, 'w').write('x')")
    built2 = build_python_archive(tmp_path / "py2", replace={"batches.meta": evil2})
    with pytest.raises(UnsafeArchiveError, match=r"(builtins|__builtin__)\.exec"):
        decode_archive(built2.path, "cifar10-python", 100 * MB)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, kind):
    x = random_split(10, 5)
    members = binary_members(*x)
    target = tmp_path / "outside.txt"

    def extra(tf):
        if kind == "dotdot":
            add_bytes(tf, "cifar-10-batches-bin/../../outside.txt", b"escaped")
        elif kind == "absolute":
            add_bytes(tf, str(target), b"escaped")
        elif kind == "symlink":
            add_symlink(tf, "cifar-10-batches-bin/link", "/etc/passwd")
        else:
            import tarfile

            info = tarfile.TarInfo("cifar-10-batches-bin/hard")
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
            tf.addfile(info)

    path = write_tar(tmp_path / "a" / "evil.tar.gz", members, extra)
    data = tmp_path / "data"
    cfg = DatasetConfig(source=str(path))
    with pytest.raises(UnsafeArchiveError, match="refused"):
        decode_and_cache(fetch(cfg, data), cfg, data)
    assert not target.exists()
    assert not (data / "datasets").exists() or not [p for p in (data / "datasets").iterdir() if p.is_dir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "data"]


def test_archive_bomb_cap(tmp_path, binary):
    with pytest.raises(UnsafeArchiveError, match="archive bomb"):
        decode_archive(binary.path, "cifar10-binary", 20_000)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            add_bytes(tf, name, data)
    return buf.getvalue()


def test_a_truncated_gzip_stream_is_a_clear_error(tmp_path, binary):
    raw = binary.path.read_bytes()
    cut_short = tmp_path / "cut.tar.gz"
    cut_short.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DatasetFormatError, match=r"cut\.tar\.gz.*(truncated|corrupt)"):
        decode_archive(cut_short, "cifar10-binary", 100 * MB)


def test_a_corrupt_gzip_stream_is_a_clear_error(tmp_path, binary):
    raw = binary.path.read_bytes()
    bad = bytearray(raw)
    bad[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.tar.gz").write_bytes(bytes(bad))
    with pytest.raises(DatasetFormatError, match=r"bad\.tar\.gz.*(corrupt|truncated)"):
        decode_archive(tmp_path / "bad.tar.gz", "cifar10-binary", 100 * MB)


def test_multi_member_gzip_decodes_as_one_stream(tmp_path, binary):
    import gzip

    tar = gzip.decompress(binary.path.read_bytes())
    # two gzip members back to back (what `cat a.gz b.gz` makes) are one stream
    (tmp_path / "multi.tar.gz").write_bytes(gzip.compress(tar[:70_001]) + gzip.compress(tar[70_001:]))
    digest: list[str] = []
    got = decode_archive(tmp_path / "multi.tar.gz", "cifar10-binary", 100 * MB, digest=digest)
    assert np.array_equal(got[0], binary.x_train) and np.array_equal(got[3], binary.y_test)
    assert digest == [sha256_of(tmp_path / "multi.tar.gz")]


def test_inflated_size_is_capped_even_past_the_last_member(tmp_path, binary):
    import gzip

    # a valid archive followed by 64 MiB of zeros that gzip squeezes to ~64 KB: inflating stops
    # at the cap instead of filling memory, and the archive is refused
    tar = gzip.decompress(binary.path.read_bytes())
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(tar + bytes(64 * MB), compresslevel=9))
    assert bomb.stat().st_size < MB
    with pytest.raises(UnsafeArchiveError, match=r"bomb\.tar\.gz: inflates to more than 2 MiB"):
        decode_archive(bomb, "cifar10-binary", 2 * MB, digest=[])


def test_an_abandoned_threaded_read_stops_its_threads(tmp_path):
    import gzip

    path = tmp_path / "big.tar.gz"
    path.write_bytes(gzip.compress(_tar_bytes([(f"m{i}", bytes(8 * MB)) for i in range(24)]), 1))
    names = []
    with contextlib.closing(iter_tar_threaded(path, lambda n: True, 1024 * MB)) as members:
        names.append(next(members)[0])  # the producer is now blocked, 64 MiB ahead
    assert names == ["m0"]
    deadline = time.monotonic() + 5
    while any(t.name.startswith("cifar-archive") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the archive threads outlived the abandoned read"
        time.sleep(0.05)


def test_malformed_binary_inputs_name_the_member(tmp_path):
    x = random_split(10, 5)
    short = build_binary_archive(tmp_path / "a", arrays=x, replace={"data_batch_2.bin": b"\x00" * 3074})
    with pytest.raises(DatasetFormatError, match=r"data_batch_2\.bin: 3,074 bytes is not a multiple of 3073"):
        decode_archive(short.path, "cifar10-binary", 100 * MB)
    y_bad = x[1].copy()
    y_bad[3] = 12
    label = build_binary_archive(tmp_path / "b", arrays=(x[0], y_bad, x[2], x[3]))
    with pytest.raises(DatasetFormatError, match=r"record \d+ has label 12, outside 0\.\.9"):
        decode_archive(label.path, "cifar10-binary", 100 * MB)
    names = build_binary_archive(tmp_path / "c", arrays=x, replace={"batches.meta.txt": b"a\nb\n"})
    with pytest.raises(DatasetFormatError, match=r"class names \['a', 'b'\] are not CIFAR-10"):
        decode_archive(names.path, "cifar10-binary", 100 * MB)


def test_altered_cached_array_is_detected_and_rebuilt(tmp_path, binary):
    cfg = DatasetConfig(source=str(binary.path))
    archive = fetch(cfg, tmp_path / "data")
    rec = decode_and_cache(archive, cfg, tmp_path / "data")
    x_file = Path(rec.path) / "x_train.npy"
    raw = bytearray(x_file.read_bytes())
    raw[-1] ^= 0xFF
    x_file.write_bytes(bytes(raw))
    assert cache_problems(rec.path) and "altered" in cache_problems(rec.path)[0]
    again = decode_and_cache(archive, cfg, tmp_path / "data")
    assert again == rec and cache_problems(rec.path) == []
    assert np.array_equal(load_dataset(rec.path).x_train, binary.x_train)


def test_class_balanced_seeded_limit():
    y = np.repeat(np.arange(10, dtype=np.uint8), [50, 40, 30, 30, 30, 30, 30, 30, 30, 2])
    idx = balanced_subset(y, 35, 10, seed=0)
    counts = np.bincount(y[idx], minlength=10)
    assert len(idx) == 35 and np.all(np.diff(idx) > 0)
    assert counts.min() >= 2 and counts.max() <= 4 and counts[9] == 2  # the tiny class gives all it has
    assert np.array_equal(idx, balanced_subset(y, 35, 10, seed=0))
    assert not np.array_equal(idx, balanced_subset(y, 35, 10, seed=1))
    counts100 = np.bincount(y[balanced_subset(y, 100, 10, seed=0)], minlength=10)
    assert counts100[9] == 2 and counts100[:9].min() >= 10 and counts100.max() <= 11


def test_a_limited_dataset_is_the_balanced_subset_and_a_dataset_of_its_own(tmp_path):
    built = build_binary_archive(tmp_path / "src", n_train=100, n_test=40)
    cfg = DatasetConfig(source=str(built.path), limit_train=20, limit_test=10, subset_seed=5)
    rec = decode_and_cache(fetch(cfg, tmp_path / "data"), cfg, tmp_path / "data")
    ds = load_dataset(rec.path)
    assert np.bincount(ds.y_train, minlength=10).tolist() == [2] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1] * 10
    keep = balanced_subset(built.y_train, 20, 10, 5)
    assert np.array_equal(ds.x_train, built.x_train[keep])
    full = DatasetConfig(source=str(built.path))
    assert decode_and_cache(fetch(full, tmp_path / "data"), full, tmp_path / "data").fingerprint != rec.fingerprint


@pytest.mark.parametrize("kind,top", [("dir", ""), ("tar.gz", ""), ("zip", "myset")])
def test_image_folder_round_trip(tmp_path, kind, top):
    built = build_image_folder(tmp_path, kind, top=top)
    x_train, y_train, x_test, y_test, classes = decode_archive(built.path, "image-folder", 100 * MB)
    assert classes == ("cat", "dog", "frog")
    assert np.array_equal(x_train, built.x_train) and np.array_equal(y_train, built.y_train)
    assert np.array_equal(x_test, built.x_test) and np.array_equal(y_test, built.y_test)


def test_image_folder_grayscale_stays_one_channel(tmp_path):
    built = build_image_folder(tmp_path / "g", "dir", channels=1)
    x = decode_archive(built.path, "image-folder", 100 * MB)[0]
    assert x.shape == (9, 8, 6, 1) and np.array_equal(x, built.x_train)


def test_image_folder_jpeg_decodes_as_pillow_reads_it(tmp_path):
    jpg = build_image_folder(tmp_path / "j", "tar.gz", ext="jpg", size=(16, 16))
    xj = decode_archive(jpg.path, "image-folder", 100 * MB)[0]
    assert xj.shape == (9, 16, 16, 3)
    from PIL import (
        Image,  # JPEG is lossy: compare with Pillow's own reading of the first file
    )

    first = Image.open(io.BytesIO(encode_image(jpg.x_train[0], "jpg")))
    assert np.array_equal(xj[0], np.asarray(first.convert("RGB")))


@pytest.mark.parametrize("kind", ["dir", "tar.gz", "zip"])
def test_image_folder_errors_name_the_file_or_folder(tmp_path, kind):
    corrupt = build_image_folder(tmp_path / "c", kind, files={"train/dog/0001.png": b"\x89PNG\r\n\x1a\nbroken"})
    with pytest.raises(DatasetFormatError, match=r"train/dog/0001\.png: corrupt or unreadable image"):
        decode_archive(corrupt.path, "image-folder", 100 * MB)
    odd = np.zeros((9, 9, 3), np.uint8)
    mixed = build_image_folder(tmp_path / "m", kind, files={"test/frog/0000.png": encode_image(odd)})
    with pytest.raises(DatasetFormatError, match=r"test/frog/0000\.png is 9x9 pixels but .*train/cat/0000\.png is 6x8"):
        decode_archive(mixed.path, "image-folder", 100 * MB)
    empty = build_image_folder(tmp_path / "e", kind, files={"train/zebra": None, "test/zebra": None})
    with pytest.raises(DatasetFormatError, match=r"class folder train/zebra/ is empty"):
        decode_archive(empty.path, "image-folder", 100 * MB)


# --------------------------------------------------------------------------- Prefect slice
def _bound(task, data_dir: Path, **options):
    """Bind results and cache records under data_dir, as the flow does."""
    from tasks.core.caching import bind_local

    return bind_local(task, data_dir, **options)


@pytest.mark.engine
def test_engine_retries_503s_then_caches_and_rebuilds_an_altered_array(prefect_engine, tmp_path, binary, file_server):
    from prefect import flow

    from tasks.download.tasks import decode_dataset, fetch_archive, retry_options

    data = tmp_path / "data"
    cfg = url_cfg(binary, file_server.add("c.tar.gz", binary.path))
    file_server.script("c.tar.gz", status(503), status(503))
    fetch_t = _bound(fetch_archive, data, **retry_options(cfg, backoff_factor=0.05))  # as the flow binds it
    decode_t = _bound(decode_dataset, data)

    @flow
    def pipeline():
        a = fetch_t(cfg, str(data), return_state=True)
        d = decode_t(a.result(), cfg, str(data), return_state=True)
        return a.name, d.name, d.result()

    fetched, decoded, rec = pipeline()
    assert [r.status for r in file_server.hits()] == [503, 503, 200]
    assert (fetched, decoded) == ("Completed", "Completed")
    manifest_mtime = (Path(rec.path) / "manifest.json").stat().st_mtime_ns

    fetched, decoded, again = pipeline()  # second run: zero requests, no decode
    assert (fetched, decoded) == ("Cached", "Cached") and again == rec
    assert len(file_server.requests) == 3
    assert (Path(rec.path) / "manifest.json").stat().st_mtime_ns == manifest_mtime

    (Path(rec.path) / "y_test.npy").write_bytes(b"garbage")  # Prefect's record still says done
    fetched, decoded, rebuilt = pipeline()
    assert decoded == "Completed" and rebuilt == rec and cache_problems(rec.path) == []
    assert np.array_equal(load_dataset(rec.path).y_test, binary.y_test)
    assert len(file_server.requests) == 3


@pytest.mark.engine
def test_engine_does_not_retry_a_checksum_mismatch(prefect_engine, tmp_path, binary, file_server):
    from tasks.download.tasks import fetch_archive, retry_options

    cfg = url_cfg(binary, file_server.add("c.tar.gz", binary.path))
    file_server.default["c.tar.gz"] = flip(10)
    from prefect import flow

    fetch_t = _bound(fetch_archive, tmp_path / "data", **retry_options(cfg, backoff_factor=0.05))  # retries, but not this

    @flow
    def only_fetch():
        state = fetch_t(cfg, str(tmp_path / "data"), return_state=True)
        return state.is_failed(), state.result(raise_on_failure=False)

    failed, exc = only_fetch()
    assert failed and isinstance(exc, ChecksumError) and binary.sha256 in str(exc)
    assert len(file_server.requests) == 1
    assert downloads(tmp_path / "data") == []
