"""TF Serving's request shapes read by tasks/predict/protocol.py without a server: the pixel fast
path gives exactly what the full JSON path gives, and leaves every doubtful body to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.predict.errors import RequestError
from tasks.predict.protocol import Limits, fast_pixels, parse_predict, parse_request

SHAPE = (4, 3, 3)
LIMITS = Limits(max_instances=8)


def full_path(body: bytes):
    return parse_predict(json.loads(body), SHAPE, LIMITS)


@pytest.mark.parametrize("n,key,indent", [(1, "instances", None), (5, "inputs", None), (8, "instances", 2)])
def test_fast_path_reads_what_the_full_path_reads(n, key, indent):
    x = np.random.default_rng(n).integers(0, 256, (n, *SHAPE))
    x[0, 0, 0] = [0, 255, 10]
    body = json.dumps({key: x.tolist()}, indent=indent).encode()
    fast, full = fast_pixels(body, SHAPE, LIMITS), full_path(body)
    assert fast is not None
    assert fast.columnar == full.columnar == (key == "inputs")
    assert fast.images.dtype == np.uint8 and np.array_equal(fast.images, full.images)
    assert np.array_equal(fast.images, x)


ONE = np.zeros(SHAPE, int).tolist()


@pytest.mark.parametrize("body,error", [
    (json.dumps({"instances": [ONE] * 9}), "9 images; at most 8"),
    (json.dumps({"instances": [np.full(SHAPE, 256).tolist()]}), "0-255 (uint8); got 256..256"),
    (json.dumps({"instances": [np.zeros((4, 3, 2), int).tolist()]}), "shape [4, 3, 2], expected [4, 3, 3]"),
    (json.dumps({"instances": [ONE, np.zeros((4, 3, 2), int).tolist()]}), "instances[1]: shape [4, 3, 2]"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, 00, 0]", 1), "malformed JSON"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, 99999999999999999999999, 0]", 1), "got mixed values"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, , 0]", 1), "malformed JSON"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, 0, 0,]", 1), "malformed JSON"),
    # as many numbers and brackets as the shape's, but not where they belong: one slot holds two
    # numbers split by whitespace and another none, or a number stands outside its list
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0 0, 0,]", 1), "malformed JSON"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, 0, 0] 7", 1).replace("[0, 0, 0]]", "[0, 0, ]]", 1),
     "malformed JSON"),
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0,\n0 ,0 ]", 1), None),
    (json.dumps({"instances": [ONE]}).replace('"instances":', '"instances"\f:', 1), "malformed JSON"),  # not JSON space
    (json.dumps({"instances": [ONE]}).replace("[0, 0, 0]", "[0, 1e0, 0]", 1), "got numbers with a fraction"),
])
def test_doubtful_bodies_go_to_the_full_path_which_names_the_error(body, error):
    if error is None:  # valid JSON, only oddly spaced: both paths read the same images
        assert np.array_equal(fast_pixels(body.encode(), SHAPE, LIMITS).images, full_path(body.encode()).images)
        return
    assert fast_pixels(body.encode(), SHAPE, LIMITS) is None
    with pytest.raises(RequestError) as info:
        parse_request(body.encode(), SHAPE, LIMITS)
    assert error in str(info.value)
    assert 400 <= info.value.status < 500


def test_other_keys_take_the_full_path():
    body = json.dumps({"signature_name": "serving_default", "instances": [ONE]}).encode()
    assert fast_pixels(body, SHAPE, LIMITS) is None
    assert parse_request(body, SHAPE, LIMITS).images.shape == (1, *SHAPE)
