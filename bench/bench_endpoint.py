"""How fast `cifar endpoint` answers (issue 31): throughput and p50/p99 latency at 1, 8 and 32
concurrent clients, one image and 64 images per request, against a baseline in the same run.

    .venv/bin/python -m bench.bench_endpoint [--seconds 3] [--out bench/out/endpoint.json]

The model: the ``train`` pipeline's ``seed_cnn`` (the course notebook's CNN, 624,106 parameters,
32x32x3), saved by the store stage into bench/out/endpoint/ (git-ignored) with its serving export,
untrained (scoring costs the same). Each server is its own process, started by this script
(``serve`` below) on 127.0.0.1; the clients are asyncio streams in this process, sending
pre-built HTTP/1.1 keep-alive requests (``{"instances": [...]}``, uint8 nested lists) so that the
client costs as little CPU as possible on the same cores. Servers, all the same app on uvicorn
(``flows/endpoint.py``: predict requests on the bare ASGI messages, other routes through FastAPI):

- ``keras``: the baseline: the run's model.keras in TensorFlow (``predict_on_batch``, the input
  scaled as the model was trained), one request per scoring call (no batching);
- ``litert-unbatched``: the endpoint's LiteRT model, one request per scoring call;
- ``litert``: the endpoint as shipped (batching: 2 ms bound, 256 images);
- ``keras-first``: the second baseline, the Keras server a user writes first
  (``bench/endpoint_first.py``: a FastAPI route, the body parsed into a dict, ``model.predict``).

Each cell runs 0.5 s of warm-up, then ``--seconds`` measured; every response's status is checked.
Memory: the server's resident set after its cells (VmRSS) and its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "out" / "endpoint"
PIPELINE = "bench"
SERVERS = {"keras": {"load": "keras", "max_batch": 1}, "litert-unbatched": {"load": "litert", "max_batch": 1},
           "litert": {"load": "litert", "max_batch": 256}, "keras-first": {"load": "keras-first", "max_batch": 1}}
CLIENTS = (1, 8, 32)
IMAGES = (1, 64)


# --------------------------------------------------------------------------- the model
def saved_run() -> Path:
    """bench/out/endpoint/artifacts: one run of ``seed_cnn`` with its serving export."""
    artifacts = WORK / "artifacts"
    if (artifacts / PIPELINE / "registry.json").is_file():
        return artifacts
    import keras

    from flows.config import PipelineConfig
    from tasks.core.datacache import write_dataset_cache
    from tasks.core.hashing import hash_file
    from tasks.core.records import TrainRecord, ValidationRecord
    from tasks.store.config import PromoteConfig
    from tasks.store.saving import store_run
    from tasks.train.config import TrainingConfig
    from tasks.train.models import build_model

    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(40) % 10).astype(np.uint8)
    ds = write_dataset_cache(WORK / "data" / "datasets" / "fp", x, y, x, y, classes,
                             {"source": "bench", "archive_sha256": "ab" * 32, "format": "bench"})
    keras.utils.set_random_seed(0)
    model = build_model("seed_cnn", (32, 32, 3), 10)
    tdir = WORK / "data" / "models" / "seed"
    tdir.mkdir(parents=True, exist_ok=True)
    model.save(tdir / "model.keras")
    (tdir / "history.json").write_text(json.dumps({"epochs": [{"epoch": 1, "loss": 2.3, "seconds": 1.0}]}))
    (tdir / "train.json").write_text(json.dumps({
        "key": "seed", "model": "seed_cnn", "model_sha256": hash_file(tdir / "model.keras").sha256, "epochs": 1,
        "seconds": 1.0, "preprocess": {"mean": None, "std": None}, "config": {"epochs": 1}}))
    # an untrained model scores at chance: under the default floor it would never be champion
    store_run(PipelineConfig(name=PIPELINE, training=TrainingConfig(epochs=1), promote=PromoteConfig(min_value=0)), ds,
              ValidationRecord(ds.fingerprint, {"checks": []}), TrainRecord(key="seed", path=str(tdir)), {}, None,
              str(artifacts))
    return artifacts


class KerasScorer:
    """The baseline: the run's model.keras (sha256-checked as the endpoint checks its files) in
    TensorFlow, fed scaled pixels as it was trained (``x / 255``, then the run's mean/std)."""

    def __init__(self, ref):
        import keras

        from tasks.core.files import read_json
        from tasks.core.hashing import hash_file
        from tasks.predict.engine import verified_file

        self.ref = ref
        self.classes = read_json(verified_file(ref, "classes.json"))
        meta = read_json(Path(ref.path) / "metadata.json")
        path = Path(ref.path) / "model.keras"
        if meta["files"].get("model.keras") != hash_file(path).sha256:
            raise RuntimeError(f"{path}: sha256 differs from metadata.json")
        pre = meta["training"]["preprocess"]
        self.mean, self.std = pre.get("mean"), pre.get("std")
        self.model = keras.models.load_model(path)
        self.input_shape = tuple(int(d) for d in self.model.input_shape[1:])
        self.probabilities(np.zeros((1, *self.input_shape), np.uint8))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = x.astype(np.float32) / 255
        if self.mean is not None:
            z = (z - np.float32(self.mean)) / np.float32(self.std)
        return np.asarray(self.model.predict_on_batch(z), np.float32)


def serve(load: str, port: int, max_batch: int) -> None:
    """One benchmark server (a process of its own)."""
    import logging

    import uvicorn

    from flows.endpoint import EndpointConfig, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if load == "keras-first":  # the second baseline: the FastAPI + model.predict app a user writes first
        from bench.endpoint_first import first_app
        from tasks.predict.resolve import resolve_model

        app = first_app(KerasScorer(resolve_model(WORK / "artifacts", PIPELINE)))
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    loader = KerasScorer if load == "keras" else None
    threads = int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else None
    app = create_app(WORK / "artifacts", [PIPELINE], loader, EndpointConfig(max_batch=max_batch, threads=threads))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- the clients
def _request(images: int) -> bytes:
    rng = np.random.default_rng(images)
    body = json.dumps({"instances": rng.integers(0, 256, (images, 32, 32, 3)).tolist()},
                      separators=(",", ":")).encode()
    head = (f"POST /v1/models/{PIPELINE}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _client(port: int, request: bytes, until: float, measure_from: float, latencies: list,
                  failures: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (start := time.perf_counter()) < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = await reader.readexactly(length)
            end = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200") or b'"model_version"' not in body:
                failures.append(head.split(b"\r\n")[0].decode() + body[:200].decode(errors="replace"))
            elif start >= measure_from:
                latencies.append(end - start)
    finally:
        writer.close()


def cell(port: int, clients: int, images: int, seconds: float) -> dict:
    request = _request(images)
    latencies: list[float] = []
    failures: list[str] = []

    async def main() -> None:
        now = time.perf_counter()
        await asyncio.gather(*(_client(port, request, now + 0.5 + seconds, now + 0.5, latencies, failures)
                               for _ in range(clients)))

    asyncio.run(main())
    lat = np.sort(np.asarray(latencies)) * 1000
    n = len(lat)
    return {"clients": clients, "images": images, "requests": n, "failures": len(failures),
            "first_failure": failures[0] if failures else None,
            "requests_per_s": n / seconds, "images_per_s": n * images / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if n else None,
            "p99_ms": float(np.percentile(lat, 99)) if n else None}


def _ms(value: float | None) -> str:
    return "   none" if value is None else f"{value:7.2f}"  # no request finished inside the cell


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines()) if k in ("VmRSS", "VmHWM")}
    return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


def bench_server(name: str, seconds: float) -> dict:
    spec, port = SERVERS[name], _free_port()
    log = (WORK / f"{name}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_endpoint", "serve", spec["load"], str(port),
                             str(spec["max_batch"])], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        import httpx

        answer = None
        while True:
            assert proc.poll() is None, (WORK / f"{name}.log").read_text()[-3000:]
            assert time.perf_counter() - started < 120, f"{name} not ready after 120 s: {answer}"
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if answer.status_code == 200:
                    break
                answer = answer.text[:300]
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        ready_s = time.perf_counter() - started
        idle = _memory(proc.pid)
        cells = []
        for images in IMAGES:
            for clients in CLIENTS:
                cells.append(cell(port, clients, images, seconds))
                c = cells[-1]
                print(f"{name:>17} {images:>3} img x {clients:>2} clients: {c['requests_per_s']:8.1f} req/s "
                      f"{c['images_per_s']:8.1f} img/s p50 {_ms(c['p50_ms'])} ms p99 {_ms(c['p99_ms'])} ms"
                      f"{'  FAILURES ' + str(c['failures']) if c['failures'] else ''}", flush=True)
        return {"server": name, **spec, "ready_s": ready_s, "idle_rss_mb": idle["rss_mb"], **_memory(proc.pid),
                "cells": cells}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "serve":
        serve(argv[1], int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "endpoint.json")
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS),
                        help="which servers (default: all; the first is the ratios' baseline)")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "from bench.bench_endpoint import saved_run; saved_run()"], cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True,
                   capture_output=True)
    load_before = os.getloadavg()
    results = [bench_server(name, args.seconds) for name in args.servers]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": args.seconds,
           "cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load_before,
           "load_after": os.getloadavg(),
           "cpu_model": next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?"),
           "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
                         if f in next((l for l in cpu.splitlines() if l.startswith("Flags")), "").split()],
           "servers": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    # ratios against the first server, and against the user-first app when it ran
    baselines = [results[0]] + [r for r in results[1:] if r["server"] == "keras-first"]
    cells_of = [{(c["clients"], c["images"]): c for c in b["cells"]} for b in baselines]
    print("\n| server | images/request | clients | requests/s | images/s | p50 ms | p99 ms | "
          + " | ".join(f"vs {b['server']}" for b in baselines) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(baselines))
    for r in results:
        for c in r["cells"]:
            bases = [base[(c["clients"], c["images"])]["images_per_s"] for base in cells_of]
            # a baseline that answered nothing inside the cell's seconds gives no ratio, not a huge one
            ratios = [f"{c['images_per_s'] / b:.1f}x" if b else "n/a (baseline: no answer)" for b in bases]
            print(f"| {r['server']} | {c['images']} | {c['clients']} | {c['requests_per_s']:.0f} | "
                  f"{c['images_per_s']:.0f} | {_ms(c['p50_ms']).strip()} | {_ms(c['p99_ms']).strip()} | "
                  + " | ".join(ratios) + " |")
    print("\n| server | ready after | RSS idle | RSS after | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['ready_s']:.1f} s | {r['idle_rss_mb']:.0f} MB | {r['rss_mb']:.0f} MB | "
              f"{r['peak_rss_mb']:.0f} MB |")
    print(f"\nload average before {load_before}, after {doc['load_after']}; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
