"""Bad input to `cifar endpoint` is a 4xx with ``{"error": ...}`` naming what is wrong, never a
500 or a traceback (tasks/core/jsonbound.py, tasks/predict/protocol.py, flows/endpoint.py); the
server answers normally afterwards."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from endpointserver import serving

IMG = np.zeros((32, 32, 3), np.uint8).tolist()
PREDICT = "/v1/models/tiny:predict"
LIMITS = {"max_body_bytes": 200_000, "max_instances": 8}


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def png_header_only(width: int, height: int) -> bytes:
    """A real PNG whose header declares ``width`` x ``height`` (its pixels never decoded)."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def endpoint(saved_runs):
    from tasks.predict.protocol import Limits

    with serving(saved_runs["artifacts"], ["tiny"], limits=Limits(**LIMITS)) as (client, _app):
        yield client


CASES = [
    # (body, status, words the error names)
    (b"{", 400, "malformed JSON"),
    (b"", 400, "malformed JSON"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "nested 50000 levels deep; at most 8"),
    (b'{"instances": [[[[[[[[[[1]]]]]]]]]]}', 400, "nested 11 levels"),
    (b'{"instances": "[[[["}', 400, "non-empty list of images"),  # brackets in strings do not count
    (b'{"instances": [NaN]}', 400, "NaN is not a JSON number"),
    (b'{"instances": [Infinity]}', 400, "Infinity is not a JSON number"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b'{"instances": [1' + b"0" * 5000 + b"]}", 400, "malformed JSON"),
    (b'{"instances": [1], "instances": [2]}', 400, "appears twice"),
    (json.dumps([IMG]).encode(), 400, "JSON object"),
    (json.dumps({"images": [IMG]}).encode(), 400, "unknown key(s) ['images']"),
    (json.dumps({"instances": [IMG], "inputs": [IMG]}).encode(), 400, "exactly one of"),
    (json.dumps({"instances": []}).encode(), 400, "non-empty list"),
    (json.dumps({"instances": [IMG] * 9}).encode(), 413, "9 images; at most 8"),
    (json.dumps({"instances": [np.zeros((32, 32)).astype(int).tolist()]}).encode(), 400, "shape [32, 32], expected [32, 32, 3]"),
    (json.dumps({"instances": [IMG, np.zeros((8, 8, 3), int).tolist()]}).encode(), 400, "instances[1]: shape [8, 8, 3]"),
    (json.dumps({"instances": [[[[0.5] * 3] * 32] * 32]}).encode(), 400, "integers 0-255"),
    (json.dumps({"instances": [[[[300] * 3] * 32] * 32]}).encode(), 400, "0-255 (uint8); got 300..300"),
    (json.dumps({"instances": [[[[-1] * 3] * 32] * 32]}).encode(), 400, "got -1..-1"),
    (json.dumps({"instances": [[[["a"] * 3] * 32] * 32]}).encode(), 400, "got strings"),
    (json.dumps({"instances": [[[[True] * 3] * 32] * 32]}).encode(), 400, "got booleans"),
    (json.dumps({"instances": [[[[None] * 3] * 32] * 32]}).encode(), 400, "got mixed values"),
    (json.dumps({"instances": [{"images": IMG}, IMG]}).encode(), 400, "instances[1]: a named instance"),
    (json.dumps({"inputs": {"pixels": [IMG]}}).encode(), 400, "named inputs must be"),
    (json.dumps({"inputs": {"b64": "AAAA"}}).encode(), 400, "list of images (batch first)"),
    (json.dumps({"instances": [{"b64": "not base64!"}]}).encode(), 400, "not valid base64"),
    (json.dumps({"instances": [{"b64": "AAAA", "x": 1}]}).encode(), 400, "must be {\"b64\""),
    (json.dumps({"instances": [b64(b"GIF89a not an image")]}).encode(), 400, "instances[0]: corrupt or unreadable"),
    (json.dumps({"instances": [b64(png_header_only(13_000, 1_000))]}).encode(), 400, "instances[0] is 13000x1000"),
    (json.dumps({"signature_name": "other", "instances": [IMG]}).encode(), 404, "one signature, 'serving_default'"),
]


@pytest.mark.parametrize("body,status,words", CASES, ids=range(len(CASES)))
def test_bad_request_is_a_4xx_naming_the_problem(endpoint, body, status, words):
    r = endpoint.post(PREDICT, content=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert words in error, error
    assert "Traceback" not in r.text


def test_oversized_body_is_refused_by_its_declared_length_and_while_streaming(endpoint):
    too_big = b" " * (LIMITS["max_body_bytes"] + 1)
    r = endpoint.post(PREDICT, content=too_big)
    assert r.status_code == 413 and "larger than the 200,000 bytes allowed" in r.json()["error"]

    def chunks():  # no Content-Length: chunked transfer, refused once the bytes read pass the cap
        for _ in range(50):
            yield b" " * 10_000

    r = endpoint.post(PREDICT, content=chunks())
    assert r.status_code == 413 and "larger than the 200,000 bytes allowed" in r.json()["error"]


@pytest.mark.parametrize("method,path,status,words", [
    ("GET", "/v1/models/nope", 404, "no model named 'nope'; this endpoint serves: tiny"),
    ("POST", "/v1/models/nope:predict", 404, "no model named 'nope'"),
    ("GET", "/v1/models/tiny/versions/20990101-000000-abcdef", 404, "has no run '20990101-000000-abcdef'"),
    ("POST", "/v1/models/tiny/versions/..%2F..%2Fetc:predict", 404, "no route /v1/models/tiny/versions/../../etc"),
    ("POST", "/v1/models/tiny/versions/..:predict", 404, "a version is a run id"),
    ("GET", "/v1/models/tiny:predict", 405, "takes a POST"),
    ("POST", "/v1/models/tiny", 405, "only :predict takes a POST"),
    ("GET", "/v1/models/tiny/extra/parts", 404, "no route"),
    ("GET", "/nowhere", 404, "no such route"),
    ("DELETE", "/healthz", 405, "method not allowed"),
])
def test_unknown_models_versions_and_routes(endpoint, method, path, status, words):
    r = endpoint.request(method, path, content=json.dumps({"instances": [IMG]}) if method == "POST" else None)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()


def test_after_every_refusal_the_server_answers_and_counted_no_500(endpoint):
    r = endpoint.post(PREDICT, json={"instances": [IMG]})
    assert r.status_code == 200 and r.json()["predictions"][0]["class_name"] == "cat"
    metrics = endpoint.get("/metrics").text
    assert 'code="500"' not in metrics
    assert 'cifar_endpoint_errors_total{code="413",pipeline="tiny",route="predict"}' in metrics


def test_json_bounds_are_measured_before_parsing():
    from tasks.core.jsonbound import JSONLimitError, loads_bounded, nesting_depth

    assert nesting_depth(b'{"a": [[1], "]]]][[[["], "b": {"c": "\\"[["}}') == 3
    assert nesting_depth(b"1") == 0
    assert loads_bounded(b'{"a": [1, 2.5, "x"]}', 100, 2) == {"a": [1, 2.5, "x"]}
    with pytest.raises(JSONLimitError, match="101 bytes is larger than the 100 bytes"):
        loads_bounded(b" " * 101, 100, 2)
    with pytest.raises(JSONLimitError, match="string is not terminated"):
        loads_bounded(b'["abc', 100, 2)


def _receiving(*messages: dict):
    """An ASGI ``receive`` giving ``messages`` in turn."""
    pending = iter(messages)

    async def receive() -> dict:
        return next(pending)
    return receive


def test_a_body_is_read_whole_within_its_cap_from_the_asgi_messages():
    import asyncio

    from flows.endpoint import ClientGone, read_capped
    from tasks.predict.errors import RequestError

    def two_chunks():
        return _receiving({"type": "http.request", "body": b"ab", "more_body": True},
                          {"type": "http.request", "body": b"cd", "more_body": False})

    assert asyncio.run(read_capped(two_chunks(), b"4", 4)) == b"abcd"
    assert asyncio.run(read_capped(two_chunks(), None, 4)) == b"abcd"  # chunked: no Content-Length
    with pytest.raises(RequestError, match="request body is larger than the 3 bytes allowed") as info:
        asyncio.run(read_capped(two_chunks(), None, 3))
    assert info.value.status == 413
    with pytest.raises(RequestError, match="request body of 5 bytes is larger than the 4 bytes"):
        asyncio.run(read_capped(_receiving(), b"5", 4))  # refused before a byte is read
    with pytest.raises(ClientGone):
        asyncio.run(read_capped(_receiving({"type": "http.request", "body": b"a", "more_body": True},
                                           {"type": "http.disconnect"}), None, 10))


def test_a_client_that_leaves_before_its_body_arrives_is_counted_as_499_without_a_traceback(endpoint, caplog):
    import socket
    import time

    with socket.create_connection(("127.0.0.1", endpoint.base_url.port)) as raw:
        raw.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"instances\": [")
    deadline = time.monotonic() + 10
    while 'code="499"' not in (metrics := endpoint.get("/metrics").text):
        assert time.monotonic() < deadline, "no 499 counted"
        time.sleep(0.02)
    assert 'cifar_endpoint_errors_total{code="499",pipeline="tiny",route="predict"} 1.0' in metrics
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    assert endpoint.post(PREDICT, json={"instances": [IMG]}).status_code == 200
