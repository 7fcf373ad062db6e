"""Decode one image file into the model's input: uint8 RGB [H, W, 3] at the model's input size.

Every way a file can fail becomes a `DecodeError` whose `reason` says what is wrong with that
file; the caller writes it as one error record and goes on. Pillow is imported lazily.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import warnings
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_EXIF_ORIENTATION = 0x0112
_ROTATED_90 = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DecodeError(Exception):
    """A file that cannot become a model input; `reason` is the text of its error record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.cache
def _pillow():  # -> module PIL.Image
    """Pillow, imported on first use; the warning filter is installed once, not per image."""
    from PIL import Image

    # We enforce --max-pixels ourselves, before decoding; silence Pillow's own bomb warning.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def _check_file(path: str) -> None:
    """Raise DecodeError for anything that is not a readable, non-empty regular file, and for a
    name with a line break (it would split the line-per-path lists dealseg writes and reads)."""
    if "\n" in path or "\r" in path:
        raise DecodeError(
            "file name contains a line break (\\n or \\r): it cannot be listed one path per "
            "line (selection.txt, --labeled lists); rename the file"
        )
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError("symlink loop: following the links never reaches a file") from None
        if exc.errno == errno.ENOENT:
            kind = "dangling symlink" if os.path.islink(path) else "file not found"
            raise DecodeError(f"{kind}: no file at the end of this path") from None
        if exc.errno == errno.EACCES:
            raise DecodeError("unreadable: permission denied") from None
        raise DecodeError(f"unreadable: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError("not a file: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError("not a regular file (device, socket or pipe)")
    if st.st_size == 0:
        raise DecodeError("empty file (0 bytes)")


def _open(f: BinaryIO, max_pixels: int) -> Image.Image:
    """Read the header only (Pillow is lazy) and apply the pixel-count guard."""
    Image = _pillow()
    try:
        im = Image.open(f)
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image: Pillow does not recognise the file format") from None
    except Image.DecompressionBombError:
        raise DecodeError(
            f"too many pixels: over Pillow's decompression-bomb limit "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt image header: {exc}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(
            f"too many pixels: {w}x{h} = {w * h} > --max-pixels {max_pixels} "
            "(decompression-bomb guard)"
        )
    if w < 1 or h < 1:
        raise DecodeError(f"empty image: {w}x{h} pixels")
    return im


def _sideways(im: Image.Image) -> bool:
    """Whether the file is stored sideways: its EXIF orientation rotates it by 90 degrees."""
    return im.getexif().get(_EXIF_ORIENTATION) in _ROTATED_90


def _draft(im: Image.Image, size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a DCT-scaled image no smaller than the target (H, W)."""
    if im.format != "JPEG":
        return
    target_h, target_w = size
    if _sideways(im):
        target_h, target_w = target_w, target_h
    im.draft(None, (target_w, target_h))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit and float images are scaled, not clipped."""
    Image = _pillow()
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float32) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if im.mode == "F" and top <= 1.0 else (1 / 257 if top > 255 else 1.0)
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    if im.mode in ("PA", "P") and "transparency" in im.info:
        im = im.convert("RGBA")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise DecodeError(f"unsupported colour mode {im.mode}: {exc}") from None


def _shown_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) of the picture as shown: the file's size, swapped when it is stored sideways."""
    w, h = im.size
    return (w, h) if _sideways(im) else (h, w)


def decode_image(
    path: str, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode `path` to uint8 RGB [H, W, 3] with (H, W) = `size`; raise DecodeError on failure.

    JPEG files are decoded in draft mode near the target size, EXIF orientation is applied, any
    mode is converted to RGB, then the image is resized (bilinear) to exactly H x W.
    """
    return decode_image_sized(path, size, max_pixels)[0]


def decode_image_sized(
    path: str, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`, and the (H, W) of the picture in the file (after EXIF orientation)."""
    from PIL import ImageOps

    Image = _pillow()
    _check_file(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after Pillow is done with it
    except PermissionError:
        raise DecodeError("unreadable: permission denied") from None
    except OSError as exc:
        raise DecodeError(f"unreadable: {exc.strerror or exc}") from None
    with f:
        try:
            im = _open(f, max_pixels)
            shown = _shown_size(im)
            _draft(im, size)
            im.load()
            im = to_rgb(ImageOps.exif_transpose(im))
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8), shown
        except DecodeError:
            raise
        except OSError as exc:
            text = str(exc)
            if "truncated" in text:
                raise DecodeError(f"truncated image: {text}") from None
            raise DecodeError(f"corrupt image data: {text}") from None
        except (SyntaxError, ValueError, TypeError, IndexError, EOFError) as exc:
            raise DecodeError(f"corrupt image data: {type(exc).__name__}: {exc}") from None
        except MemoryError:
            raise DecodeError("out of memory while decoding") from None
