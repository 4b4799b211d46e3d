"""Test helpers: tiny archives in the exact official layouts, PNGs written by hand, and a loopback
HTTP server with scriptable faults. Any test may import these (``from archives import ...``:
tests/ is on sys.path, the folder of the rootdir's conftest.py).

Builders return a :class:`Built` with ``path``, ``sha256`` and the arrays they wrote, so a test
can compare what the decoder read with what went in, byte for byte.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass
class Built:
    path: Path
    sha256: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def random_split(n_train: int, n_test: int, seed: int = 0, shape=(32, 32, 3), num_classes: int = 10):
    """Random uint8 images and labels that cover every class (label i % k, then shuffled)."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, *shape), dtype=np.uint8)
    y_train = rng.permutation(np.arange(n_train) % num_classes).astype(np.uint8)
    y_test = rng.permutation(np.arange(n_test) % num_classes).astype(np.uint8)
    return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------- tar helpers
def add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    tf.addfile(info, io.BytesIO(data))


def add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    tf.addfile(info)


def add_symlink(tf: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_700_000_000
    tf.addfile(info)


def write_tar(path: Path, members: list[tuple[str, bytes | None]], extra=None) -> Path:
    """A .tar.gz of (name, bytes) members (bytes None = a directory). ``extra(tf)`` may add
    hostile members (links, ``..`` names) after them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            add_dir(tf, name) if data is None else add_bytes(tf, name, data)
        if extra is not None:
            extra(tf)
    return path


# --------------------------------------------------------------------------- cifar10-binary
def binary_records(x: np.ndarray, y: np.ndarray) -> bytes:
    """CIFAR-10 binary records: 1 label byte + 1024 R + 1024 G + 1024 B (row-major) each."""
    planar = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
    return np.concatenate([y.reshape(-1, 1).astype(np.uint8), planar], axis=1).tobytes()


def binary_members(x_train, y_train, x_test, y_test, classes=CIFAR10_CLASSES) -> list[tuple[str, bytes | None]]:
    d = "cifar-10-batches-bin"
    parts = np.array_split(np.arange(len(x_train)), 5)
    members: list[tuple[str, bytes | None]] = [(d, None)]
    members.append((f"{d}/batches.meta.txt", ("\n".join(classes) + "\n\n").encode()))
    for i, idx in enumerate(parts, 1):
        members.append((f"{d}/data_batch_{i}.bin", binary_records(x_train[idx], y_train[idx])))
    members.append((f"{d}/test_batch.bin", binary_records(x_test, y_test)))
    members.append((f"{d}/readme.html", b"<html>the official archive has one too</html>"))
    return members


def build_binary_archive(dest: Path, n_train: int = 20, n_test: int = 10, seed: int = 0, *,
                         name: str = "cifar-10-binary.tar.gz", arrays=None,
                         replace: dict[str, bytes] | None = None, extra=None) -> Built:
    """The official cifar-10-binary.tar.gz layout with ``n_train`` random images spread over
    data_batch_1..5. ``replace`` swaps member bytes (by base name); ``extra`` adds members."""
    x_train, y_train, x_test, y_test = arrays or random_split(n_train, n_test, seed)
    members = binary_members(x_train, y_train, x_test, y_test)
    if replace:
        members = [(n, replace.get(n.rsplit("/", 1)[-1], b)) for n, b in members]
    path = write_tar(Path(dest) / name, members, extra)
    return Built(path, sha256_of(path), x_train, y_train, x_test, y_test, CIFAR10_CLASSES)


# --------------------------------------------------------------------------- cifar10-python
def python_batch(x: np.ndarray, y: np.ndarray, label: str = "batch", protocol: int = 4) -> bytes:
    """One pickled batch as in the official archive: {b'batch_label', b'labels', b'data'
    (N, 3072) uint8 channel-planar, b'filenames'}."""
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
    d = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": data,
         b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))]}
    return pickle.dumps(d, protocol=protocol)


def python_meta(classes=CIFAR10_CLASSES, protocol: int = 4) -> bytes:
    return pickle.dumps({b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in classes],
                         b"num_vis": 3072}, protocol=protocol)


def build_python_archive(dest: Path, n_train: int = 20, n_test: int = 10, seed: int = 0, *,
                         name: str = "cifar-10-python.tar.gz", arrays=None,
                         replace: dict[str, bytes] | None = None, protocol: int = 4) -> Built:
    """The official cifar-10-python.tar.gz layout (pickled batches)."""
    x_train, y_train, x_test, y_test = arrays or random_split(n_train, n_test, seed)
    d = "cifar-10-batches-py"
    members: list[tuple[str, bytes | None]] = [(d, None), (f"{d}/batches.meta", python_meta(protocol=protocol))]
    for i, idx in enumerate(np.array_split(np.arange(len(x_train)), 5), 1):
        members.append((f"{d}/data_batch_{i}", python_batch(x_train[idx], y_train[idx], f"training batch {i} of 5", protocol)))
    members.append((f"{d}/test_batch", python_batch(x_test, y_test, "testing batch 1 of 1", protocol)))
    members.append((f"{d}/readme.html", b"<html></html>"))
    if replace:
        members = [(n, replace.get(n.rsplit("/", 1)[-1], b)) for n, b in members]
    path = write_tar(Path(dest) / name, members)
    return Built(path, sha256_of(path), x_train, y_train, x_test, y_test, CIFAR10_CLASSES)


class _RunsCode:
    """Pickles to a call of ``func(*args)``: what a doctored batch would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def evil_pickle(func, *args) -> bytes:
    """A pickle that calls ``func(*args)`` when loaded by a plain ``pickle.load``."""
    return pickle.dumps({b"data": _RunsCode(func, *args), b"labels": []}, protocol=4)


# --------------------------------------------------------------------------- image-folder
def encode_image(img: np.ndarray, ext: str = "png") -> bytes:
    from PIL import Image

    arr = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG" if ext == "png" else "JPEG", quality=95)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int = 8, color_type: int = 2, pixels=None,
        idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """A PNG written by hand: any bit depth and colour type, or a header with ``idat`` given
    (a file whose header declares what its data is not)."""
    if idat is None:
        arr = np.ascontiguousarray(pixels, dtype=">u2" if depth == 16 else np.uint8)
        rows = arr.reshape(height, -1).view(np.uint8).reshape(height, -1)
        idat = zlib.compress(b"".join(b"\0" + r.tobytes() for r in rows))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def zeros_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of any size, a few KB however large it decodes."""
    row, c = b"\0" * (1 + 3 * width), zlib.compressobj(9)
    idat = b"".join(c.compress(row) for _ in range(height)) + c.flush()
    return png(width, height, idat=idat)


def image_folder_files(classes=("cat", "dog", "frog"), per_class_train: int = 3, per_class_test: int = 2,
                       size=(8, 6), channels: int = 3, seed: int = 0, ext: str = "png"):
    """{relative name: bytes} in train/<class>/*, test/<class>/* plus the arrays in decode
    order (classes sorted, files sorted within a class)."""
    rng = np.random.default_rng(seed)
    h, w = size
    files: dict[str, bytes] = {}
    out = {}
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            for i in range(per):
                img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
                files[f"{split}/{cls}/{i:04d}.{ext}"] = encode_image(img, ext)
                xs.append(img)
                ys.append(label)
        out[split] = (np.stack(xs), np.asarray(ys, dtype=np.uint8))
    return files, out["train"][0], out["train"][1], out["test"][0], out["test"][1], tuple(sorted(classes))


def build_image_folder(dest: Path, kind: str = "dir", *, files: dict[str, bytes | None] | None = None,
                       top: str = "", **kwargs) -> Built:
    """An image-folder dataset as a folder (``kind='dir'``), ``'tar.gz'`` or ``'zip'``.
    ``files`` overrides/extends the generated files (value None = an empty folder)."""
    gen, x_train, y_train, x_test, y_test, classes = image_folder_files(**kwargs)
    if files:
        gen.update(files)
    dest = Path(dest)
    pre = f"{top}/" if top else ""
    if kind == "dir":
        root = dest / "images"
        for name, data in gen.items():
            p = root / pre / name
            if data is None:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        return Built(root, "", x_train, y_train, x_test, y_test, classes)
    if kind == "tar.gz":
        dirs = sorted({pre + n.rsplit("/", 1)[0] for n, d in gen.items() if d is not None})
        members = [(d, None) for d in dirs] + [(pre + n, d) for n, d in sorted(gen.items())]
        path = write_tar(dest / "images.tar.gz", members)
    elif kind == "zip":
        path = dest / "images.zip"
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in sorted(gen.items()):
                if data is None:
                    zf.writestr(pre + name.rstrip("/") + "/", b"")
                else:
                    zf.writestr(pre + name, data)
    else:
        raise ValueError(kind)
    return Built(path, sha256_of(path), x_train, y_train, x_test, y_test, classes)


# --------------------------------------------------------------------------- loopback server
@dataclass(frozen=True)
class Fault:
    """One scripted answer: ``status`` (e.g. 503, 404), ``cut`` (send this many body bytes then
    drop the connection), ``offset`` (a 206 whose range starts this many bytes off),
    ``ignore_range`` (answer 200 with the whole body), ``flip`` (flip the byte at this index),
    ``delay`` (seconds to sleep per 64 KiB chunk), ``location`` (answer 302 to this path),
    ``swap`` ((bytes, etag): the file changes to these once this answer is under way)."""

    status: int | None = None
    cut: int | None = None
    offset: int | None = None
    ignore_range: bool = False
    flip: int | None = None
    delay: float = 0.0
    location: str | None = None
    swap: tuple[bytes, str] | None = None


def status(code: int) -> Fault:
    return Fault(status=code)


def cut(after: int) -> Fault:
    return Fault(cut=after)


def wrong_offset(delta: int = 7) -> Fault:
    return Fault(offset=delta)


def ignore_range() -> Fault:
    return Fault(ignore_range=True)


def flip(at: int) -> Fault:
    return Fault(flip=at)


def slow(delay: float) -> Fault:
    return Fault(delay=delay)


def redirect(to: str) -> Fault:
    return Fault(status=302, location=to)


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    sent: int  # body bytes sent
    if_range: str | None = None


@dataclass
class FileServer:
    """``with FileServer() as srv: srv.add('a.tar.gz', data); srv.url('a.tar.gz')``.

    ``srv.script('a.tar.gz', status(503), status(503))`` queues faults, one per request, in
    order; after the queue, ``srv.default[name]`` (if set) applies to every request, else
    the file is served normally (Range honoured; with ``srv.etags[name]`` set, an ETag is sent
    and a Range whose If-Range names another one gets the whole file). ``srv.requests`` logs
    every request.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    default: dict[str, Fault] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes | Path) -> str:
        self.files[name] = Path(data).read_bytes() if isinstance(data, Path) else data
        return self.url(name)

    def script(self, name: str, *faults: Fault) -> None:
        self.faults.setdefault(name, []).extend(faults)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def hits(self, name: str | None = None) -> list[Request]:
        return [r for r in self.requests if name is None or r.path == f"/{name}"]

    # ---- plumbing
    def __enter__(self) -> FileServer:
        owner = self
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                owner._serve(self)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_fault(self, name: str) -> Fault:
        with self._lock:
            queue = self.faults.get(name) or []
            if queue:
                return queue.pop(0)
            return self.default.get(name, Fault())

    def _log(self, h, code: int, sent: int) -> Request:
        """Logged before the body goes out (so a client that has its bytes sees its request);
        ``sent`` is updated as the body is written."""
        req = Request(h.path, h.headers.get("Range"), code, sent, h.headers.get("If-Range"))
        with self._lock:
            self.requests.append(req)
        return req

    def _serve(self, h) -> None:
        name = h.path.lstrip("/")
        fault = self._next_fault(name)
        data, etag = self.files.get(name), self.etags.get(name)
        if fault.swap is not None:
            self.files[name], self.etags[name] = fault.swap
        code = fault.status or (404 if data is None else 200)
        if fault.location is not None:
            self._log(h, code, 0)
            h.send_response(code)
            h.send_header("Location", fault.location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if code >= 400:
            body = f"{code}\n".encode()
            self._log(h, code, 0)
            h.send_response(code)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if fault.flip is not None:
            data = bytearray(data)
            data[fault.flip % len(data)] ^= 0xFF
            data = bytes(data)
        start, rng = 0, h.headers.get("Range")
        stale = h.headers.get("If-Range") is not None and h.headers.get("If-Range") != etag
        if rng and not fault.ignore_range and not stale and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(data):
                self._log(h, 416, 0)
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            code = 206
        claimed = start + (fault.offset or 0) if code == 206 else 0
        body = data[claimed if code == 206 else 0:]
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if etag:
            h.send_header("ETag", etag)
        if code == 206:
            h.send_header("Content-Range", f"bytes {claimed}-{len(data) - 1}/{len(data)}")
        req = self._log(h, code, 0)
        h.end_headers()
        limit = len(body) if fault.cut is None else min(fault.cut, len(body))
        sent = 0
        try:
            while sent < limit:
                chunk = body[sent:min(limit, sent + 65536)]
                h.wfile.write(chunk)
                sent += len(chunk)
                req.sent = sent
                if fault.delay:
                    h.wfile.flush()
                    time.sleep(fault.delay)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if fault.cut is not None:
            h.close_connection = True
            try:  # drop the connection with the body unfinished
                import socket

                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
