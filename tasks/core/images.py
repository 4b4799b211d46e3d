"""Reading one image file's bytes into pixels: the one decoder behind image-folder datasets and
predictions, so a photo given to the model is read exactly as its training images were.

What every caller gets:

- Only PNG and JPEG are read (by content, whatever the file is named); anything else, or a
  truncated or corrupt file, is an ``ImageDecodeError`` naming the file.
- The size comes from the file's header and is capped (``max_side``, ``max_pixels``) before a
  single pixel is decoded: a 2 KB PNG that declares 20000x20000 is refused by name and size.
  Pillow's own ``DecompressionBombError`` (above 179 MP) never escapes: it becomes the same
  error. Pillow's settings are left alone: between 89 and 179 MP it still prints its
  ``DecompressionBombWarning`` (or raises it, under ``-W error``: caught too) before our refusal;
  silencing it per call with ``warnings.catch_warnings`` tripled the cost of an open (41 -> 130 us).
- The output is 8-bit. 16-bit greyscale is scaled by its high byte (``v >> 8``: 65535 -> 255,
  32768 -> 128), which is how Pillow itself reads 16-bit colour PNGs, so grey and colour 16-bit
  files, and their 8-bit exports, decode alike.
- Greyscale (1, L, LA, 16-bit) stays one channel, (H, W); everything else (RGB, RGBA, palette,
  CMYK) becomes RGB, (H, W, 3). Alpha is dropped, not composited, as ``keras.utils.load_img``
  does. EXIF orientation is not applied (neither Keras nor ``tf.io.decode_jpeg`` applies it).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.core.errors import CifarError

WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit greyscale as Pillow opens it
GRAY_MODES = ("1", "L", "LA", *WIDE_MODES)
MAX_SIDE = 4096  # pixels a side; a bigger image is refused before it is decoded
MAX_PIXELS = 4096 * 4096  # 16.8 MP: 48 MiB as RGB
_REMEDY = "Resize it (the models train on small images such as 32x32) or remove it."


class ImageDecodeError(CifarError):
    """An image file that cannot be read as PNG or JPEG, or is too large to decode."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than the caps allow (never decoded)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: enough to size the array before decoding it."""

    width: int
    height: int
    mode: str

    @property
    def channels(self) -> int:
        return 1 if self.mode in GRAY_MODES else 3

    @property
    def nbytes(self) -> int:
        """Bytes of its decoded uint8 pixels."""
        return self.width * self.height * self.channels


def _unreadable(name: str, exc: BaseException) -> ImageDecodeError:
    # Pillow names the in-memory buffer ("cannot identify image file <_io.BytesIO object at
    # 0x...>"): say what it means instead
    why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip() or type(exc).__name__
    if why == "cannot identify image file":
        why = "not a PNG or JPEG file"
    return ImageDecodeError(f"{name}: corrupt or unreadable image ({why}); only PNG and JPEG "
                            "are read. Replace or remove the file.")


def _open(name: str, data: bytes):
    """The opened image (its header read, no pixels decoded yet)."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: {exc} Its pixels were not decoded. {_REMEDY}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _unreadable(name, exc) from exc


def check_size(name: str, width: int, height: int, max_side: int = MAX_SIDE,
               max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image larger than ``max_side`` pixels a side or ``max_pixels`` in all."""
    if max(width, height) > max_side or width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:,.1f} MP): more than the "
            f"{max_side} pixels a side and {max_pixels / 1e6:,.1f} MP an image may have; its "
            f"pixels were not decoded. {_REMEDY}")


def probe_image(name: str, data: bytes, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Size and mode from the file's header, no pixels decoded; refuses a file that is not PNG
    or JPEG and one above the caps."""
    with _open(name, data) as im:
        info = ImageInfo(im.size[0], im.size[1], im.mode)
    check_size(name, info.width, info.height, max_side, max_pixels)
    return info


def _pixels(im) -> np.ndarray:
    if im.mode in WIDE_MODES:  # 16-bit grey: the high byte (see the module docstring)
        wide = np.asarray(im).astype(np.int64)
        return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    target = "L" if im.mode in GRAY_MODES else "RGB"
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow warns on P -> RGB with transparency; alpha goes next
    if im.mode != target:
        im = im.convert(target)
    return np.asarray(im, dtype=np.uint8)


def decode_image(name: str, data: bytes, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
                 before: Callable[[ImageInfo], None] | None = None) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 (H, W) for greyscale, (H, W, 3) otherwise; the size checked
    from the header first, then ``before(info)`` called (it may refuse the image, or make room
    for it) while still no pixel is decoded. Errors name the file."""
    with _open(name, data) as im:
        check_size(name, im.size[0], im.size[1], max_side, max_pixels)
        if before is not None:
            before(ImageInfo(im.size[0], im.size[1], im.mode))
        try:
            return _pixels(im)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _unreadable(name, exc) from exc
