"""Reading one image file's bytes into pixels: the one decoder behind image-folder datasets and
predictions, so a photo given to the model is read exactly as its training images were."""

from __future__ import annotations

import io

import numpy as np

from tasks.core.errors import CifarError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ImageDecodeError(CifarError):
    """An image file that cannot be read as PNG or JPEG."""


def decode_image(name: str, data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 (H, W) for grayscale, (H, W, 3) otherwise; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
            target = "L" if im.mode in GRAY_MODES else "RGB"
            if im.mode != target:
                im = im.convert(target)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or unreadable image ({exc}); only PNG and JPEG "
                               "are read. Replace or remove the file.") from exc
