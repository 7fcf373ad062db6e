"""Decode one image file into the model's input: uint8 RGB [H, W, 3] at the model's input size.

How the picture becomes the model's H x W frame is `--resize`: `stretch` (resized to H x W, its
shape lost), `letterbox` (scaled to fit, centred on black bands; the frame's `box` says where
the picture is, and the graph leaves the bands out of every score) or `crop` (scaled to fill,
the middle cut out). Every way a file can fail becomes a `DecodeError` whose `reason` says what
is wrong with that file; the caller writes it as one error record and goes on. Pillow is
imported lazily.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
RESIZE_MODES = ("stretch", "letterbox", "crop")
ASPECT_TOLERANCE = 0.10  # a picture whose aspect ratio is off the model's by more: a warning
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


@dataclass(frozen=True)
class Placement:
    """Where a picture goes in the model's frame: resized to `scaled` (H, W), its top-left
    corner at `offset` (negative when cropped)."""

    scaled: tuple[int, int]
    offset: tuple[int, int]

    def box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the picture in a frame of `size`, exclusive."""
        (top, left), (h, w) = self.offset, self.scaled
        return max(top, 0), max(left, 0), min(top + h, size[0]), min(left + w, size[1])


def place(shown: tuple[int, int], size: tuple[int, int], resize: str) -> Placement:
    """How `--resize` puts a picture of (h, w) pixels into the model's (H, W) frame."""
    (h, w), (frame_h, frame_w) = shown, size
    if resize == "stretch":
        return Placement(size, (0, 0))
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    fit = min if resize == "letterbox" else max
    scale = fit(frame_h / h, frame_w / w)
    scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
    if resize == "letterbox":
        scaled = (min(scaled[0], frame_h), min(scaled[1], frame_w))
    else:
        scaled = (max(scaled[0], frame_h), max(scaled[1], frame_w))
    return Placement(scaled, ((frame_h - scaled[0]) // 2, (frame_w - scaled[1]) // 2))


def aspect_mismatch(shown: tuple[int, int], size: tuple[int, int]) -> float:
    """How far a picture's aspect ratio (W / H) is off the frame's, relative: 0.0 the same."""
    return abs((shown[1] / shown[0]) / (size[1] / size[0]) - 1.0)


@dataclass(frozen=True)
class Frame:
    """A decoded picture as the model's input."""

    image: np.ndarray  # uint8 [H, W, 3]
    box: tuple[int, int, int, int]  # the picture in it: top, left, bottom, right (exclusive)
    shown: tuple[int, int]  # (H, W) of the picture in the file, after EXIF orientation


def _framed(im: Image.Image, size: tuple[int, int], where: Placement) -> np.ndarray:
    """The RGB picture resized and placed in a black H x W frame."""
    Image = _pillow()
    (h, w), (top, left) = where.scaled, where.offset
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    picture = np.asarray(im, dtype=np.uint8)
    if (h, w) == size:
        return picture
    frame = np.zeros((*size, 3), dtype=np.uint8)
    box = where.box(size)
    frame[box[0] : box[2], box[1] : box[3]] = picture[
        box[0] - top : box[2] - top, box[1] - left : box[3] - left
    ]
    return frame


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
    """Decode `path` to uint8 RGB [H, W, 3] with (H, W) = `size`, stretched; raise DecodeError
    on failure. See `decode_frame`."""
    return decode_frame(path, size, max_pixels).image


def decode_frame(
    path: str, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS, resize: str = "stretch"
) -> Frame:
    """Decode `path` into the model's H x W frame as `resize` says; raise DecodeError on failure.

    JPEG files are decoded in draft mode near the target size, EXIF orientation is applied, any
    mode is converted to RGB, then the picture is resized (bilinear) and placed in the frame.
    """
    _check_file(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after Pillow is done with it
    except PermissionError:
        raise DecodeError("unreadable: permission denied") from None
    except OSError as exc:
        raise DecodeError(f"unreadable: {exc.strerror or exc}") from None
    with f:
        return decode_stream(f, size, max_pixels, resize)


def picture_frame(
    im: Image.Image,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: str = "stretch",
) -> Frame:
    """A decoded picture (a video frame, a raw image message) as the model's frame, placed as
    `resize` says: the same pixels as the picture saved losslessly and read by `decode_frame`."""
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(f"too many pixels: {w}x{h} = {w * h} > --max-pixels {max_pixels}")
    if w < 1 or h < 1:
        raise DecodeError(f"empty image: {w}x{h} pixels")
    where = place((h, w), size, resize)
    return Frame(_framed(to_rgb(im), size, where), where.box(size), (h, w))


def decode_stream(
    f: BinaryIO,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: str = "stretch",
) -> Frame:
    """`decode_frame` on an open binary file (a local file, or an object's bytes in memory)."""
    from PIL import ImageOps

    try:
        im = _open(f, max_pixels)
        shown = _shown_size(im)
        where = place(shown, size, resize)
        _draft(im, where.scaled)
        im.load()
        image = _framed(to_rgb(ImageOps.exif_transpose(im)), size, where)
        return Frame(image, where.box(size), shown)
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
