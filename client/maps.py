"""`--maps`: one PNG per selected image: image | difficulty heat-map overlay | segmentation.

The maps come from the graph's `difficulty` and `segmentation` outputs, requested in a second
pass for the selected images only. File names cannot leave `OUT/maps/` and stay unique for
equal basenames: `<rank>_<sanitised stem>_<hash of the full path>.png`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dealseg.core.contract import MAP_OUTPUTS
from dealseg.core.decode import DecodeError, Frame, decode_frame
from dealseg.core.files import atomic_write

from .engines import Engine
from .store import MAPS

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_OUR_NAME = re.compile(r"^\d{4,}_[A-Za-z0-9_-]+_[0-9a-f]{10}\.png$")
_HEAT_ANCHORS = np.array(  # an inferno-like ramp: dark purple -> red -> yellow
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)
_GAP = 4  # pixels of white between the panels


def map_name(rank: int, path: str) -> str:
    """A file name for the map of `path` that is safe and unique: no separators, no dot-files."""
    stem = os.path.splitext(os.path.basename(path))[0]
    safe = _UNSAFE.sub("_", stem.encode("ascii", "replace").decode()).strip("_")[:48] or "image"
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
    return f"{rank:04d}_{safe}_{digest}.png"


_HEAT_LUT = (
    np.stack(  # uint8 difficulty -> RGB
        [
            np.interp(np.arange(256), np.linspace(0, 255, len(_HEAT_ANCHORS)), _HEAT_ANCHORS[:, c])
            for c in range(3)
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)


def class_colors(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 [256, 3]: class id -> palette colour; ids beyond the palette are grey."""
    colors = np.full((256, 3), 128, dtype=np.uint8)
    colors[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return colors


def render(
    image: np.ndarray, difficulty: np.ndarray, segmentation: np.ndarray, colors: np.ndarray
) -> np.ndarray:
    """[H, W, 3] image, [h, w] difficulty x 255, [sh, sw] classes -> [H, 3W + 2 gap, 3] panel.

    `colors` is `class_colors(palette)`.
    """
    from PIL import Image

    h, w = image.shape[:2]
    diff = np.asarray(Image.fromarray(difficulty).resize((w, h), Image.Resampling.BILINEAR))
    overlay = (0.45 * image + 0.55 * _HEAT_LUT[diff]).round().astype(np.uint8)
    seg = np.asarray(Image.fromarray(segmentation).resize((w, h), Image.Resampling.NEAREST))
    gap = np.full((h, _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, overlay, gap, colors[seg]], axis=1)


def write_maps(
    engine: Engine,
    selected: Sequence[tuple[int, str]],
    out: Path,
    max_pixels: int,
    batch_size: int = 8,
    resize: str = "stretch",
) -> dict[str, str]:
    """Write the maps of (rank, path) pairs under out/maps/, each image framed as `resize`
    says (as it was scored); return path -> error for failures."""
    from PIL import Image

    folder = Path(out) / MAPS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # maps of an earlier selection would mislead
        if _OUR_NAME.match(old.name):
            old.unlink()
    spec = engine.spec
    colors = class_colors(spec.palette)
    failed: dict[str, str] = {}
    for start in range(0, len(selected), batch_size):
        batch, frames = [], []
        for rank, path in selected[start : start + batch_size]:
            try:
                frames.append(decode_frame(path, spec.input_size, max_pixels, resize))
                batch.append((rank, path))
            except DecodeError as exc:  # the file changed since it was scored
                failed[path] = exc.reason
        if not batch:
            continue
        maps = _maps(engine, frames)
        for i, (rank, path) in enumerate(batch):
            image = frames[i].image
            panel = render(image, maps["difficulty"][i], maps["segmentation"][i], colors)
            buf = io.BytesIO()
            Image.fromarray(panel).save(buf, format="PNG")
            atomic_write(folder / map_name(rank, path), buf.getvalue())
    return failed


def _maps(engine: Engine, frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    images = np.stack([f.image for f in frames])  # [B, H, W, 3]
    return engine.infer(images, MAP_OUTPUTS, np.array([f.box for f in frames], dtype=np.int32))
