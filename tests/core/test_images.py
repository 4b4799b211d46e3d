"""Decoding one image (tasks/core/images.py), for datasets and predictions alike: a decompression
bomb's header is our error naming the file, 16-bit images scale by their high byte, and every
image mode decodes as documented. PNGs written by hand (tests/archives.py)."""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np
import pytest
from archives import encode_image, png

from tasks.core.images import ImageDecodeError, ImageTooLargeError, decode_image, probe_image


@pytest.mark.parametrize("side", [10_000, 20_000])
@pytest.mark.parametrize("warnings_are", ["shown", "errors"])
def test_a_decompression_bomb_header_is_a_clear_error_naming_the_file(side, warnings_are):
    """A 60-byte PNG declaring 10000^2 (Pillow warns) or 20000^2 (Pillow raises its own
    DecompressionBombError, without the file's name): our error, for datasets and predictions,
    also when warnings are errors (``-W error``)."""
    bomb = png(side, side, idat=zlib.compress(b"\0" * 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error" if warnings_are == "errors" else "ignore")
        for read in (probe_image, decode_image):
            with pytest.raises(ImageTooLargeError, match=rf"photo\.png(:| is) .*({side}x{side} pixels|Image size "
                                                         rf"\({side**2} pixels\)).*not decoded\. Resize it"):
                read("photo.png", bomb)
    assert issubclass(ImageTooLargeError, ImageDecodeError)


def test_16_bit_greyscale_is_scaled_by_its_high_byte_like_16_bit_colour():
    v = np.array([[0, 255, 256, 32768, 65280, 65535]], dtype=np.uint16)
    grey = decode_image("g16.png", png(6, 1, 16, 0, v))
    colour = decode_image("rgb16.png", png(6, 1, 16, 2, np.stack([v, v, v], -1)))
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 0, 1, 128, 255, 255]]
    assert np.array_equal(colour[..., 0], grey)  # the rule Pillow applies to 16-bit colour


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(buf, "JPEG", quality=100)  # pure red
    return buf.getvalue()


def _pil_png(mode: str, color, **save) -> bytes:
    from PIL import Image

    im = Image.new("RGBA" if mode == "P" else mode, (8, 6), color)
    if mode == "P":
        im = im.convert("RGB").quantize(4)
        save = {"transparency": 0}
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("case,data,want", [
    ("cmyk-jpeg", _cmyk_jpeg(), (255, 0, 0)),
    ("rgba-alpha-dropped", _pil_png("RGBA", (10, 20, 30, 0)), (10, 20, 30)),
    ("palette-with-transparency", _pil_png("P", (200, 100, 50, 255)), (200, 100, 50)),
    ("grey-with-alpha", _pil_png("LA", (77, 0)), (77,)),
    ("1-bit", _pil_png("1", 1), (255,)),
    ("jpeg-named-png", encode_image(np.full((6, 8, 3), 128, np.uint8), "jpg"), (128, 128, 128)),
])
def test_image_modes_decode_as_documented(case, data, want):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's palette-transparency warning included
        img = decode_image(f"{case}.png", data)
    assert img.shape == ((6, 8, 3) if len(want) == 3 else (6, 8))
    assert np.abs(img.reshape(-1, len(want)).astype(int) - want).max() <= 2, img.reshape(-1, len(want))[0]
