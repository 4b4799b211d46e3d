"""TF Serving's REST protocol for the online endpoint, as pure functions: a request body in, the
images it carries out (or a ``RequestError`` naming what is wrong); probabilities in, the response
body out. The HTTP layer (``flows/endpoint.py``) only moves bytes.

Requests (https://www.tensorflow.org/tfx/serving/api_rest), one input named ``images``:

- row: ``{"instances": [IMAGE, ...]}`` or ``{"instances": [{"images": IMAGE}, ...]}``
  -> ``{"predictions": [{"probabilities": [...], "class_index": i, "class_name": "cat"}, ...]}``
- columnar: ``{"inputs": [IMAGE, ...]}`` or ``{"inputs": {"images": [IMAGE, ...]}}``
  -> ``{"outputs": {"probabilities": [[...]], "class_index": [...], "class_name": [...]}}``
- ``IMAGE``: uint8 pixels as nested lists ``[H][W][C]`` of the model's input shape (integers
  0-255), or ``{"b64": "..."}``: PNG or JPEG bytes of any size, decoded by
  ``tasks.core.images`` and resized as ``cifar predict`` resizes (``tasks.predict.imaging``).
- ``signature_name``, when given, must be ``serving_default``.

Every response also carries ``model_version``: the run id that answered. The bounds on untrusted
input are ``Limits`` (docs/endpoint.md names each).
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.jsonbound import JSONLimitError, loads_bounded
from tasks.predict.engine import INPUT, SIGNATURE
from tasks.predict.errors import RequestError

OUTPUTS = ("probabilities", "class_index", "class_name")


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, checked in this order, each before the work it protects."""

    max_body_bytes: int = 16 * 1024 * 1024  # read with a byte cap: 413 past it
    max_depth: int = 8  # JSON nesting, measured before parsing (an image list needs 5)
    max_instances: int = 256  # images per request
    max_side: int = 12_000  # a b64 photo's header, before its pixels are decoded
    max_pixels: int = 64_000_000


@dataclass(frozen=True)
class PredictRequest:
    """A parsed request: row or columnar, and its images (arrays of the model's shape, or the
    bytes of a PNG/JPEG still to decode)."""

    columnar: bool
    images: np.ndarray | list[np.ndarray | bytes]  # an array (N, H, W, C) when all are pixels

    def __len__(self) -> int:
        return len(self.images)


def parse_body(body: bytes, limits: Limits) -> Any:
    """The JSON document, within the size and depth bounds (``tasks.core.jsonbound``)."""
    try:
        return loads_bounded(body, limits.max_body_bytes, limits.max_depth)
    except JSONLimitError as exc:
        status = 413 if len(body) > limits.max_body_bytes else 400
        raise RequestError(str(exc), status) from None


# The common request, pixels only: {"instances": [[[[0,1,...]]]]} or {"inputs": ...}, no other key.
# The list between the two is checked character by character in ``fast_pixels``, not by a pattern.
_JSON_SPACE = b" \t\r\n"
_PIXELS_HEAD = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"(instances|inputs)"[ \t\r\n]*:[ \t\r\n]*(?=\[)')
_DIGITS = b"0123456789"
_SPACES = bytes.maketrans(b"[],", b"   ")
# '[' -> 1, ',' -> 3, ']' -> 2, digits -> 0: a pair (left & 1, right & 2) is an empty slot: "[,", ",,", ",]", "[]"
_SLOT_CODES = bytes.maketrans(b"[,]" + _DIGITS, bytes([1, 3, 2]) + bytes(10))


def _pixel_list(body: bytes) -> tuple[bool, bytes] | None:
    """(columnar, the list's text) of a body ``{"instances": [...]}`` or ``{"inputs": [...]}``
    with no other key; None for any other body."""
    head = _PIXELS_HEAD.match(body)
    if head is None:
        return None
    inner = body.rstrip(_JSON_SPACE)
    if not inner.endswith(b"}"):
        return None
    text = body[head.end():len(inner) - 1].rstrip(_JSON_SPACE)
    return (head.group(1) == b"inputs", text) if text.endswith(b"]") else None


@functools.lru_cache(maxsize=1024)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a rectangular nested list of ``shape`` (numbers left out)."""
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for n in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * n) + b"]"
    return text


def _has_empty_slot(compact: bytes) -> bool:
    """Whether a list without whitespace has a place for a number with none in it ("[,", ",,",
    ",]", "[]")."""
    codes = np.frombuffer(compact.translate(_SLOT_CODES), np.uint8)
    return np.count_nonzero(codes[:-1] & (codes[1:] >> 1)) > 0  # codes are 0-3: the AND is 0 or 1


def fast_pixels(body: bytes, shape: tuple[int, ...], limits: Limits) -> PredictRequest | None:
    """The request of a body that holds only uint8 pixel lists, read without building a Python
    object per number (10x faster than ``json.loads`` + ``np.asarray`` at 64 images); None for
    any other body, or any doubt (a shape, value or number format the full path must judge),
    so the full path gives the same answer or names the error.

    Why that is exact: without whitespace and digits, the list must be the brackets and commas
    of (n, *shape), nothing else (so it holds no other character), with as many places for a
    number as the shape has values; with whitespace removed, none of those places is empty; and
    NumPy finds exactly that many numbers in the text. So every place holds one number and no
    number stands elsewhere or is split by whitespace ("1 2"). The digits counted are those of
    the numbers written without leading zeros (so no number has more than 3), and none passes 255."""
    found = _pixel_list(body)
    if found is None:
        return None
    columnar, text = found
    compact = text.translate(None, _JSON_SPACE)
    skeleton = compact.translate(None, _DIGITS)
    n, rest = divmod(len(skeleton) - 1, len(_skeleton(tuple(shape))) + 1)
    if rest or not 1 <= n <= limits.max_instances or skeleton != _skeleton((n, *shape)):
        return None
    values = np.fromstring(text.translate(_SPACES), dtype=np.int64, sep=" ")
    size = n * math.prod(shape)
    if values.size != size or _has_empty_slot(compact):
        return None
    digits = len(compact) - len(skeleton)
    if digits != size + np.count_nonzero(values >= 10) + np.count_nonzero(values >= 100):
        return None  # a number with leading zeros ("007") is not JSON; a longer one not a pixel
    if values.max() > 255:
        return None
    return PredictRequest(columnar, values.astype(np.uint8).reshape(n, *shape))


def parse_request(body: bytes, shape: tuple[int, ...], limits: Limits) -> PredictRequest:
    """A predict request's body -> its images: its size bounded first; then the pixel fast path
    (whose pattern admits only the nesting of ``shape``: it builds nothing deeper), else the
    nesting bounded and the JSON document read in full (``parse_body``, ``parse_predict``)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(f"request body of {len(body):,} bytes is larger than the "
                           f"{limits.max_body_bytes:,} bytes allowed", 413)
    fast = fast_pixels(body, shape, limits)
    return fast if fast is not None else parse_predict(parse_body(body, limits), shape, limits)


def _b64(value: dict, where: str) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise RequestError(f"{where}: an object image must be {{\"b64\": \"<base64 PNG or JPEG>\"}}; "
                           f"got keys {sorted(value)}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{where}: \"b64\" is not valid base64 ({exc})") from None


def pixels(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Nested lists -> uint8 array of ``shape``; a RequestError naming the shape or type found."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{where}: not a rectangular array; expected uint8 pixels of shape "
                           f"{list(shape)}") from None
    if arr.shape != tuple(shape):
        raise RequestError(f"{where}: shape {list(arr.shape)}, expected {list(shape)} (uint8 pixels, "
                           "or {\"b64\": ...} PNG/JPEG bytes of any size)")
    if arr.dtype.kind not in "iu":
        kind = {"f": "numbers with a fraction", "b": "booleans", "U": "strings"}.get(arr.dtype.kind, "mixed values")
        raise RequestError(f"{where}: pixels must be integers 0-255 (uint8); got {kind}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise RequestError(f"{where}: pixel values must be 0-255 (uint8); got {int(arr.min())}..{int(arr.max())}")
    return arr.astype(np.uint8, copy=False)


def _image(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray | bytes:
    if isinstance(value, dict):
        return _b64(value, where)
    return pixels(value, shape, where)


def _batch(values: Any, shape: tuple[int, ...], where: str, limits: Limits,
           named: bool) -> np.ndarray | list[np.ndarray | bytes]:
    if not isinstance(values, list) or not values:
        raise RequestError(f"{where} must be a non-empty list of images (batch first)")
    if len(values) > limits.max_instances:
        raise RequestError(f"{where} holds {len(values):,} images; at most {limits.max_instances:,} "
                           "are allowed per request (split the batch)", 413)
    if named:
        bad = [i for i, v in enumerate(values) if not (isinstance(v, dict) and set(v) == {INPUT})]
        if bad:
            raise RequestError(f"{where}[{bad[0]}]: a named instance must be {{\"{INPUT}\": IMAGE}}, "
                               f"the model's one input")
        values = [v[INPUT] for v in values]
    if not any(isinstance(v, dict) for v in values):  # all pixel lists: one conversion for the batch
        try:
            return pixels(values, (len(values), *shape), where)
        except RequestError:
            pass  # find the image that is wrong, by index
    return [_image(v, shape, f"{where}[{i}]") for i, v in enumerate(values)]


def parse_predict(doc: Any, shape: tuple[int, ...], limits: Limits) -> PredictRequest:
    """A TF Serving predict request (see the module docstring) for a model of input ``shape``."""
    if not isinstance(doc, dict):
        raise RequestError("the request body must be a JSON object with \"instances\" (row format) or "
                           "\"inputs\" (columnar format)")
    unknown = sorted(set(doc) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; a predict request has \"instances\" or \"inputs\", "
                           "and optionally \"signature_name\"")
    signature = doc.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise RequestError(f"signature_name {signature!r}: this model has one signature, {SIGNATURE!r}", 404)
    if ("instances" in doc) == ("inputs" in doc):
        raise RequestError("give exactly one of \"instances\" (row format) and \"inputs\" (columnar format)")
    if "instances" in doc:
        values = doc["instances"]
        named = isinstance(values, list) and bool(values) and isinstance(values[0], dict) and INPUT in values[0]
        return PredictRequest(False, _batch(values, shape, "instances", limits, named))
    inputs = doc["inputs"]
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != {INPUT}:
            raise RequestError(f"inputs: named inputs must be {{\"{INPUT}\": [IMAGE, ...]}}; got keys {sorted(inputs)}")
        inputs = inputs[INPUT]
    return PredictRequest(True, _batch(inputs, shape, "inputs", limits, False))


def decode_images(request: PredictRequest, shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """The request's images as one uint8 batch (N, H, W, C): b64 PNG/JPEG decoded and resized."""
    if isinstance(request.images, np.ndarray):
        return request.images
    from tasks.core.errors import CifarError
    from tasks.core.images import decode_image
    from tasks.predict.imaging import to_model_input

    out = np.empty((len(request.images), *shape), np.uint8)
    for i, img in enumerate(request.images):
        if isinstance(img, bytes):
            name = f"{'inputs' if request.columnar else 'instances'}[{i}]"
            try:
                img = to_model_input(decode_image(name, img, limits.max_side, limits.max_pixels), shape)
            except CifarError as exc:  # ImageDecodeError / ImageTooLargeError name the instance
                raise RequestError(str(exc)) from None
        out[i] = img
    return out


def predict_response(probs: np.ndarray, classes: list[str], columnar: bool, version: str) -> dict[str, Any]:
    """TF Serving's response for ``probs`` (N, classes), plus ``model_version``."""
    index = probs.argmax(axis=1).tolist() if len(probs) else []
    names = [classes[i] for i in index]
    rows = probs.tolist()
    if columnar:
        return {"outputs": {"probabilities": rows, "class_index": index, "class_name": names},
                "model_version": version}
    return {"predictions": [{"probabilities": p, "class_index": i, "class_name": n}
                            for p, i, n in zip(rows, index, names)], "model_version": version}


def version_status(version: str, state: str = "AVAILABLE", error: str = "") -> dict[str, Any]:
    """GET /v1/models/NAME: TF Serving's ``model_version_status``."""
    code = "OK" if not error else "UNAVAILABLE"
    return {"model_version_status": [{"version": version, "state": state,
                                      "status": {"error_code": code, "error_message": error}}]}


def _tensor(dtype: str, dims: list[int], name: str) -> dict[str, Any]:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                             "unknown_rank": False}, "name": name}


def metadata(pipeline: str, version: str, shape: tuple[int, ...], classes: list[str]) -> dict[str, Any]:
    """GET /v1/models/NAME/metadata: the signature as TF Serving describes a SavedModel's."""
    outputs = {"probabilities": _tensor("DT_FLOAT", [-1, len(classes)], "StatefulPartitionedCall:2"),
               "class_index": _tensor("DT_INT64", [-1], "StatefulPartitionedCall:0"),
               "class_name": _tensor("DT_STRING", [-1], "StatefulPartitionedCall:1")}
    signature = {"inputs": {INPUT: _tensor("DT_UINT8", [-1, *shape], f"{SIGNATURE}_{INPUT}:0")},
                 "outputs": outputs, "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": pipeline, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}, "classes": list(classes)}}
