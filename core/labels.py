"""Labels of `deal-client eval`: which mask belongs to an image, and reading one. Torch-free.

LABELS is a folder of mask PNGs matched to the images by file stem (searched recursively), or a
CamVid-layout dataset root (a folder with `*annot/` folders) whose `*annot/` folders are searched:
image `test/x.png` <-> `testannot/x.png`. When masks in several folders share the image's stem,
the one in a folder named after the image's folder + "annot" is the image's label.

A mask holds class ids: a uint8 PNG (mode L or P), at any resolution with the image's aspect
ratio (within 1%). Values that are no class are ignored (not evaluated): 255, and C, the number of
classes (CamVid's void, 11 for its 11 classes), and any the caller adds (`--ignore`). Every
problem with a label is a `LabelError` whose reason names the file and what is wrong.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from .decode import DecodeError
from .pool import walk_folder

ANNOT = "annot"  # CamVid: the labels of split/ are in split + "annot"/
VOID = 255  # never a class
ASPECT_TOLERANCE = 0.01  # a mask's aspect ratio may differ from its image's by 1%
MASK_MODES = ("L", "P")
_SHOWN_VALUES = 10  # unknown class ids named in an error at most


class LabelError(DecodeError):
    """An image whose label is missing or unusable; `reason` is the text of its error record."""


def ignored_values(num_classes: int, extra: Iterable[int] = ()) -> frozenset[int]:
    """The label values never evaluated: 255, C (the void of CamVid's layout) and `extra`."""
    return frozenset({VOID, num_classes, *extra})


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _shown(path: str) -> str:
    """A path as text for an error reason: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class LabelIndex:
    """The mask PNGs under LABELS by stem; `find` gives an image's mask or a LabelError."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        annot = sorted(e.path for e in os.scandir(self.root) if _is_annot_folder(e))
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for folder in annot or [self.root]:
            for path in walk_folder(folder):
                if path.lower().endswith(".png"):
                    self.by_stem[_stem(path)].append(path)

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.by_stem.values())

    def find(self, image: str) -> str:
        """The mask of `image` (see the module doc); LabelError if there is none or no one."""
        stem = _stem(image)
        found = self.by_stem.get(stem, [])
        if len(found) > 1:
            folder = os.path.basename(os.path.dirname(image)) + ANNOT
            found = [p for p in found if os.path.basename(os.path.dirname(p)) == folder] or found
        if not found:
            raise LabelError(f"no label: no {_shown(stem)}.png under {_shown(self.root)}")
        if len(found) > 1:
            names = ", ".join(_shown(os.path.relpath(p, self.root)) for p in found[:3])
            raise LabelError(
                f"ambiguous label: {len(found)} masks named {_shown(stem)}.png ({names}) and "
                f"none in a folder {_shown(folder)}/; keep one"
            )
        return found[0]


def _is_annot_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.name.endswith(ANNOT) and entry.is_dir()
    except OSError:
        return False


@dataclass(frozen=True)
class Mask:
    """A checked label: class ids [h, w] uint8 and the pixels to evaluate [h, w] bool."""

    label: np.ndarray
    valid: np.ndarray


def read_mask(
    path: str, image_size: tuple[int, int], num_classes: int, ignore: Collection[int]
) -> Mask:
    """Read and check the mask `path` of an image whose picture is (H, W) = `image_size`.

    LabelError, naming `path`, for a file that is not a single-channel uint8 image, an aspect
    ratio off the image's by more than 1%, values that are neither classes (0..C-1) nor ignored,
    or no pixel left to evaluate.
    """
    label = _read_ids(path)
    _check_aspect(path, label.shape, image_size)
    counts = np.bincount(label.ravel(), minlength=256)  # [256] pixels of each value
    present = np.flatnonzero(counts)
    unknown = [int(v) for v in present if v >= num_classes and v not in ignore]
    if unknown:
        raise LabelError(
            f"label {_shown(path)}: unknown class ids {unknown[:_SHOWN_VALUES]}"
            f"{' ...' if len(unknown) > _SHOWN_VALUES else ''}: the model's classes are "
            f"0..{num_classes - 1} and {sorted(ignore)} are ignored; fix the mask or pass "
            "--ignore V"
        )
    valid = ~np.isin(label, list(ignore))
    if not valid.any():
        raise LabelError(
            f"label {_shown(path)}: nothing to evaluate, every pixel is an ignored value "
            f"{sorted(ignore)}"
        )
    return Mask(label, valid)


def _read_ids(path: str) -> np.ndarray:
    """The class ids [h, w] uint8 of a mask file (mode L, or P: the palette indices)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise LabelError(
                    f"label {_shown(path)}: mode {im.mode}, but a mask holds class ids: a "
                    "single-channel uint8 PNG (mode L or P); convert colour-coded masks to ids"
                )
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise LabelError(f"label {_shown(path)}: unreadable: not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise LabelError(f"label {_shown(path)}: unreadable: {why}") from None


def _check_aspect(path: str, label_size: tuple[int, ...], image_size: tuple[int, int]) -> None:
    (lh, lw), (ih, iw) = label_size, image_size
    if abs(lw * ih - lh * iw) > ASPECT_TOLERANCE * lh * iw:
        raise LabelError(
            f"label {_shown(path)}: size {lw}x{lh} does not fit the image's {iw}x{ih}: aspect "
            f"ratio {lw / lh:.3f} vs {iw / ih:.3f} (a mask may have any resolution, but the "
            "image's aspect ratio within 1%)"
        )
