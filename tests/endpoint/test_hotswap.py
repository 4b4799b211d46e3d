"""Readiness, hot swap and batching of `cifar endpoint` (tasks/predict/live.py, batching.py),
on private copies of the saved runs: run 0 of ``tiny`` answers cat, run 1 dog."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from endpointserver import copy_artifacts, serving
from servingfolders import promote

IMG = np.zeros((32, 32, 3), np.uint8).tolist()
PREDICT = "/v1/models/tiny:predict"


def _corrupt(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    return original


def _wait(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def test_not_ready_until_the_champions_files_verify(saved_runs, tmp_path):
    artifacts = copy_artifacts(saved_runs, tmp_path / "artifacts")
    champion = saved_runs["tiny"][0]
    model = artifacts / "tiny" / "runs" / champion / "model.tflite"
    original = _corrupt(model)
    with serving(artifacts, ["tiny"], ready=False, poll=0.05, retry=0.2) as (client, _app):
        assert client.get("/healthz").status_code == 200  # alive, not ready
        not_ready = _wait(lambda: (r := client.get("/readyz")).status_code == 503 and "sha256" in r.text and r)
        assert "model.tflite: sha256" in not_ready.json()["error"]
        status = client.get("/v1/models/tiny").json()["model_version_status"][0]
        assert status["state"] == "END" and "sha256" in status["status"]["error_message"]
        r = client.post(PREDICT, json={"instances": [IMG]})
        assert r.status_code == 503 and "not available yet" in r.json()["error"]
        model.write_bytes(original)  # restored: the retry loads it
        assert _wait(lambda: client.get("/readyz").status_code == 200)
        assert client.post(PREDICT, json={"instances": [IMG]}).json()["model_version"] == champion


def _client_loop(base_url: str, stop: threading.Event, results: list, n_images: int) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        body = {"instances": [IMG] * n_images}
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = client.post(PREDICT, json=body)
                doc = r.json()
                results.append((started, time.monotonic(), r.status_code, r.headers.get("X-Model-Version"),
                                doc.get("model_version"), {p["class_name"] for p in doc.get("predictions", [])}))
            except httpx.HTTPError as exc:  # a dropped connection is a failure too
                results.append((started, time.monotonic(), repr(exc), None, None, set()))


def test_hot_swap_under_load_fails_no_request_and_mixes_no_models(saved_runs, tmp_path):
    artifacts = copy_artifacts(saved_runs, tmp_path / "artifacts")
    cat, dog = saved_runs["tiny"]
    with serving(artifacts, ["tiny"], poll=0.05) as (client, app):
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_client_loop, args=(str(client.base_url), stop, results, 1 + i % 3))
                   for i in range(6)]
        for t in threads:
            t.start()
        answered = lambda run: sum(r[4] == run for r in results)  # noqa: E731
        _wait(lambda: answered(cat) >= 30, 60)  # under load before the swap, however slow the host
        promote(artifacts, "tiny", dog)
        _wait(lambda: app.state.service.live["tiny"].version == dog)
        _wait(lambda: answered(dog) >= 30, 60)  # and after it
        stop.set()
        for t in threads:
            t.join(timeout=30)
        metrics = client.get("/metrics").text

    failed = [r for r in results if r[2] != 200]
    assert not failed, failed[:5]
    expected = {cat: {"cat"}, dog: {"dog"}}
    assert all(r[3] == r[4] and r[5] == expected[r[4]] for r in results), "a response mixed models"
    versions = [r[4] for r in results]
    assert versions.count(cat) >= 30 and versions.count(dog) >= 30, (versions.count(cat), versions.count(dog))
    first_dog_answered = min(r[1] for r in results if r[4] == dog)
    assert all(r[4] == dog for r in results if r[0] > first_dog_answered), "the old model answered after the swap"
    assert 'cifar_endpoint_swaps_total{pipeline="tiny"} 1.0' in metrics
    assert f'cifar_endpoint_model_version{{pipeline="tiny",version="{dog}"}} 1.0' in metrics
    assert f'version="{cat}"' not in metrics


def test_a_champion_that_fails_verification_is_not_swapped_in(saved_runs, tmp_path, caplog):
    artifacts = copy_artifacts(saved_runs, tmp_path / "artifacts")
    cat, dog = saved_runs["tiny"]
    _corrupt(artifacts / "tiny" / "runs" / dog / "classes.json")
    with serving(artifacts, ["tiny"], poll=0.05) as (client, app):
        live = app.state.service.live["tiny"]
        promote(artifacts, "tiny", dog)
        assert _wait(lambda: live.error)
        assert "classes.json: sha256" in live.error
        assert client.get("/readyz").status_code == 200
        r = client.post(PREDICT, json={"instances": [IMG]})
        assert r.json()["model_version"] == cat and r.json()["predictions"][0]["class_name"] == "cat"
    assert any(f"champion {dog} not loaded (still serving {cat})" in m for m in caplog.messages)


def _histogram(metrics: str, name: str) -> dict[str, float]:
    return {le: float(v) for le, v in re.findall(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', metrics)} | {
        "count": float(re.search(rf"{name}_count (\S+)", metrics).group(1)),
        "sum": float(re.search(rf"{name}_sum (\S+)", metrics).group(1))}


@pytest.mark.parametrize("max_batch", [256, 4])
def test_requests_arriving_together_are_scored_in_bounded_batches(saved_runs, max_batch, caplog):
    caplog.set_level("INFO", logger="cifar.endpoint")
    with serving(saved_runs["artifacts"], ["tiny"], max_wait=0.05, max_batch=max_batch) as (client, _app):
        barrier, codes = threading.Barrier(8), []

        def one():
            with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
                c.get("/healthz")  # connected before the barrier: the requests arrive together
                barrier.wait()
                codes.append(c.post(PREDICT, json={"instances": [IMG]}).status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        batches = _histogram(client.get("/metrics").text, "cifar_endpoint_batch_images")
    assert codes == [200] * 8
    assert batches["sum"] == 8
    assert batches["count"] < 8, batches  # not 8 batches of one
    assert batches["count"] >= (1 if max_batch == 256 else 2), batches
    assert batches[str(float(max_batch))] == batches["count"]  # none larger than max_batch
    lines = [m for m in caplog.messages if m.startswith("batch: ")]
    assert len(lines) == batches["count"] and "image(s) from" in lines[0] and " ms by " in lines[0]


def test_batcher_waits_only_for_requests_on_their_way_and_scores_each_with_its_model(saved_runs):
    from tasks.predict.batching import Batcher
    from tasks.predict.engine import Scorer
    from tasks.predict.resolve import resolve_model

    cat, dog = (Scorer(resolve_model(saved_runs["artifacts"], "tiny", run)) for run in saved_runs["tiny"])
    x = np.zeros((2, 32, 32, 3), np.uint8)
    batches = []
    batcher = Batcher(max_batch=256, max_wait=0.5, on_batch=lambda *b: batches.append(b[:2]))
    try:
        started = time.perf_counter()
        model, probs = batcher.submit(cat, x).result(timeout=10)
        assert time.perf_counter() - started < 0.25  # nothing on its way: no wait for the 0.5 s bound
        assert model is cat and probs.argmax(axis=1).tolist() == [0, 0]
        with batcher.arriving() as first, batcher.arriving() as second:
            a = batcher.submit(cat, x, first)   # the batch waits for `second`, still arriving
            b = batcher.submit(dog, x[:1], second)
        (model_a, probs_a), (model_b, probs_b) = a.result(timeout=10), b.result(timeout=10)
        assert (model_a, model_b) == (cat, dog)
        assert probs_a.argmax(axis=1).tolist() == [0, 0] and probs_b.argmax(axis=1).tolist() == [1]
        assert batches == [(2, 1), (3, 2)]  # (images, requests): one batch, two models
    finally:
        batcher.close()


def test_a_batch_reaches_the_event_loop_in_one_call(saved_runs):
    import asyncio

    from tasks.predict.batching import Batcher
    from tasks.predict.engine import Scorer
    from tasks.predict.resolve import resolve_model

    cat = Scorer(resolve_model(saved_runs["artifacts"], "tiny", saved_runs["tiny"][0]))
    x = np.zeros((2, 32, 32, 3), np.uint8)
    batches = []
    batcher = Batcher(max_batch=256, max_wait=0.5, on_batch=lambda *b: batches.append(b[:2]))

    async def three_requests():
        loop, calls = asyncio.get_running_loop(), []
        threadsafe = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: calls.append(args[0]) or threadsafe(*args)
        with batcher.arriving() as a, batcher.arriving() as b, batcher.arriving() as c:
            futures = [batcher.submit(cat, x, ticket, loop) for ticket in (a, b, c)]
        assert all(isinstance(f, asyncio.Future) for f in futures)
        return await asyncio.gather(*futures), calls

    try:
        results, calls = asyncio.run(three_requests())
    finally:
        batcher.close()
    assert batches == [(6, 3)] and len(calls) == 1  # one batch, one hand-off to the loop
    assert all(model is cat and probs.argmax(axis=1).tolist() == [0, 0] for model, probs in results)
