"""A decoded photo made into what the model takes: uint8 (H, W, C) of the model's input size.

- Decoding is ``tasks.core.images.decode_image``, the decoder that read the training images,
  with caps raised for photos (``PHOTO_MAX_SIDE``, ``PHOTO_MAX_PIXELS``).
- Channels as the dataset cache made them: a greyscale photo for a colour model is repeated into
  R, G and B (a greyscale training image in a colour dataset was stacked the same way); a colour
  photo for a greyscale model becomes Pillow's ``L`` (ITU-R 601-2 luma).
- Size: an image of the model's size (a CIFAR image, 32x32) is used as it is, pixel for pixel,
  as its training images were. Any other size is resized whole to the model's size, the aspect
  ratio not kept (CIFAR's 32x32 images were downsampled from whole photos), with Pillow's
  antialiased bicubic filter (``reducing_gap`` 3: a large photo is box-reduced to about 3x the
  target first, then resampled): every source pixel contributes, none is skipped.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from tasks.core.images import decode_image

PHOTO_MAX_SIDE = 12_000
PHOTO_MAX_PIXELS = 64_000_000  # a 48 MP phone photo fits; 192 MB as RGB while it is resized
REDUCING_GAP = 3.0


def decode_photo(name: str, data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 (H, W) or (H, W, 3); ImageDecodeError naming the file."""
    return decode_image(name, data, max_side=PHOTO_MAX_SIDE, max_pixels=PHOTO_MAX_PIXELS)


def to_model_input(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (h, w) or (h, w, 3) -> uint8 ``shape`` (H, W, C), as described above."""
    from PIL import Image

    height, width, channels = shape
    if channels == 1 and img.ndim == 3:
        img = np.asarray(Image.fromarray(img, "RGB").convert("L"))
    if img.shape[:2] != (height, width):
        im = Image.fromarray(img, "L" if img.ndim == 2 else "RGB")
        img = np.asarray(im.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP))
    if img.ndim == 2:
        img = img[..., None]
    if channels == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img, dtype=np.uint8)


def png_data_uri(img: np.ndarray) -> str:
    """A small uint8 image as a ``data:image/png;base64,...`` URI (for a self-contained page)."""
    from PIL import Image

    arr = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
