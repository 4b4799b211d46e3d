"""Each route of `cifar endpoint` over real HTTP, in TF Serving's request and response shapes
(flows/endpoint.py, tasks/predict/protocol.py). The served runs answer constant classes
(tests/servingfolders.py): ``tiny``'s champion says cat, its other run dog, ``other``'s frog,
each with probability 0.98670."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from endpointserver import serving
from servingfolders import CLASSES, CONSTANT_P

SHAPE = (32, 32, 3)
IMG = np.arange(32 * 32 * 3, dtype=np.int64).reshape(SHAPE) % 256
REST = (1 - CONSTANT_P) / 2


def encoded(img: np.ndarray, fmt: str) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format=fmt)
    return {"b64": base64.b64encode(buf.getvalue()).decode("ascii")}


def probs(winner: int) -> list[float]:
    return [CONSTANT_P if i == winner else REST for i in range(3)]


@pytest.fixture(scope="module")
def endpoint(saved_runs):
    with serving(saved_runs["artifacts"], ["tiny", "other"]) as (client, _app):
        yield client


def test_health_and_readiness(endpoint, saved_runs):
    assert endpoint.get("/healthz").json() == {"status": "alive"}
    ready = endpoint.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"tiny": saved_runs["tiny"][0], "other": saved_runs["other"][0]}}


def test_model_status_is_tf_servings_model_version_status(endpoint, saved_runs):
    champion = saved_runs["tiny"][0]
    r = endpoint.get("/v1/models/tiny")
    assert r.json() == {"model_version_status": [{"version": champion, "state": "AVAILABLE",
                                                  "status": {"error_code": "OK", "error_message": ""}}]}
    assert r.headers["X-Model-Version"] == champion
    pinned = saved_runs["tiny"][1]
    assert endpoint.get(f"/v1/models/tiny/versions/{pinned}").json()["model_version_status"][0]["version"] == pinned


def test_metadata_is_the_signature(endpoint, saved_runs):
    doc = endpoint.get("/v1/models/tiny/metadata").json()
    assert doc["model_spec"] == {"name": "tiny", "signature_name": "", "version": saved_runs["tiny"][0]}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    images = sig["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "32", "32", "3"]
    assert {k: v["dtype"] for k, v in sig["outputs"].items()} == {
        "probabilities": "DT_FLOAT", "class_index": "DT_INT64", "class_name": "DT_STRING"}
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "3"]
    assert doc["metadata"]["classes"] == list(CLASSES)


def test_row_format_predictions(endpoint, saved_runs):
    r = endpoint.post("/v1/models/tiny:predict", json={"instances": [IMG.tolist(), (255 - IMG).tolist()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == r.headers["X-Model-Version"] == saved_runs["tiny"][0]
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["class_index"] == 0 and p["class_name"] == "cat"
        assert p["probabilities"] == pytest.approx(probs(0), abs=1e-5)


def test_row_format_with_named_inputs_and_signature_name(endpoint):
    r = endpoint.post("/v1/models/tiny:predict", json={"signature_name": "serving_default",
                                                        "instances": [{"images": IMG.tolist()}]})
    assert r.status_code == 200, r.text
    assert [p["class_name"] for p in r.json()["predictions"]] == ["cat"]


def test_columnar_format_outputs(endpoint, saved_runs):
    for inputs in ([IMG.tolist()] * 3, {"images": [IMG.tolist()] * 3}):
        r = endpoint.post("/v1/models/tiny:predict", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"outputs", "model_version"}
        assert out["outputs"]["class_index"] == [0, 0, 0]
        assert out["outputs"]["class_name"] == ["cat"] * 3
        assert np.allclose(out["outputs"]["probabilities"], [probs(0)] * 3, atol=1e-5)


def test_b64_png_and_jpeg_of_any_size(endpoint):
    rng = np.random.default_rng(0)
    images = [encoded(rng.integers(0, 256, (32, 32, 3)), "PNG"), encoded(rng.integers(0, 256, (300, 451, 3)), "JPEG"),
              encoded(rng.integers(0, 256, (20, 20)), "PNG")]  # CIFAR-sized, a photo, greyscale
    r = endpoint.post("/v1/models/tiny:predict", json={"instances": images})
    assert r.status_code == 200, r.text
    assert [p["class_name"] for p in r.json()["predictions"]] == ["cat"] * 3
    mixed = endpoint.post("/v1/models/tiny:predict", json={"inputs": [images[0], IMG.tolist()]})
    assert mixed.json()["outputs"]["class_name"] == ["cat", "cat"]


def test_pinned_versions_answer_with_their_run(endpoint, saved_runs):
    for run_id, winner in zip(saved_runs["tiny"], (0, 1)):
        r = endpoint.post(f"/v1/models/tiny/versions/{run_id}:predict", json={"instances": [IMG.tolist()]})
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Version"] == r.json()["model_version"] == run_id
        assert r.json()["predictions"][0]["class_name"] == CLASSES[winner]
        meta = endpoint.get(f"/v1/models/tiny/versions/{run_id}/metadata").json()
        assert meta["model_spec"]["version"] == run_id


def test_each_pipeline_serves_its_own_champion(endpoint, saved_runs):
    r = endpoint.post("/v1/models/other:predict", json={"instances": [IMG.tolist()]})
    assert r.json()["predictions"][0]["class_name"] == "frog"
    assert r.json()["model_version"] == saved_runs["other"][0]


def test_metrics_count_requests_errors_batches_and_versions(endpoint, saved_runs):
    endpoint.post("/v1/models/tiny:predict", json={"instances": [IMG.tolist()]})
    endpoint.post("/v1/models/tiny:predict", content=b"{")
    text = endpoint.get("/metrics").text
    assert 'cifar_endpoint_requests_total{code="200",pipeline="tiny",route="predict"}' in text
    assert 'cifar_endpoint_errors_total{code="400",pipeline="tiny",route="predict"}' in text
    assert 'cifar_endpoint_request_seconds_bucket{le="0.005",route="predict"}' in text
    assert "cifar_endpoint_batch_images_count" in text
    assert f'cifar_endpoint_model_version{{pipeline="tiny",version="{saved_runs["tiny"][0]}"}} 1.0' in text
    assert 'code="500"' not in text
