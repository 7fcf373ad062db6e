"""`--maps`: what the model saw in each selected image, for a person and for the report.

The maps come from the graph's `difficulty` and `segmentation` outputs, requested in a second
pass for the selected images only. Per image, in `OUT/maps/`:

    NNNN_<stem>_<hash>.png       the panel: a caption (rank, file, every score), image |
                                 difficulty overlay | segmentation, the colour bar labelled
                                 "difficulty 0..1" and the legend of the classes present
    NNNN_<stem>_<hash>.dif.png   the raw difficulty x 255 (mode L, attention grid)
    NNNN_<stem>_<hash>.seg.png   the raw class ids (mode L, stride 4)

The raw layers are what the report and the Label Studio pre-annotations read. File names cannot
leave `OUT/maps/` and stay unique for equal basenames. Colours are `core.colors`'.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.colors import DIFFICULTY_LABEL, class_colors, colour_bar, difficulty_rgb
from dealseg.core.contract import MAP_OUTPUTS, ModelSpec
from dealseg.core.decode import DecodeError, Frame
from dealseg.core.files import atomic_write

from .engines import Engine
from .logs import decode_any
from .outdir import MAPS

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_OUR_NAME = re.compile(r"^\d{4,}_[A-Za-z0-9_-]+_[0-9a-f]{10}(\.dif|\.seg)?\.png$")
_GAP = 4  # pixels of white between the panels
_SCORE_NAMES = ("score", "ds", "de", "entropy")


@dataclass(frozen=True)
class MapOf:
    """A selected image to draw: its rank, path and scores (name -> value or None)."""

    rank: int
    path: str
    scores: Mapping[str, float | None]


def map_name(rank: int, path: str) -> str:
    """A file name for the map of `path` that is safe and unique: no separators, no dot-files."""
    stem = os.path.splitext(os.path.basename(path))[0]
    safe = _UNSAFE.sub("_", stem.encode("ascii", "replace").decode()).strip("_")[:48] or "image"
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
    return f"{rank:04d}_{safe}_{digest}.png"


def layer_names(rank: int, path: str) -> tuple[str, str]:
    """The file names of the raw difficulty and segmentation layers of `path`."""
    stem = map_name(rank, path)[: -len(".png")]
    return f"{stem}.dif.png", f"{stem}.seg.png"


def overlay(image: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """[H, W, 3] image, [h, w] difficulty x 255 -> the image under the difficulty's colours."""
    from PIL import Image

    h, w = image.shape[:2]
    diff = np.asarray(Image.fromarray(difficulty).resize((w, h), Image.Resampling.BILINEAR))
    return (0.45 * image + 0.55 * difficulty_rgb(diff)).round().astype(np.uint8)


def segmentation_rgb(segmentation: np.ndarray, size: tuple[int, int], colors: np.ndarray) -> Any:
    """[sh, sw] class ids -> uint8 [H, W, 3] colours at `size` (H, W), nearest."""
    from PIL import Image

    h, w = size
    seg = Image.fromarray(segmentation).resize((w, h), Image.Resampling.NEAREST)
    return colors[np.asarray(seg)]


def render(
    image: np.ndarray, difficulty: np.ndarray, segmentation: np.ndarray, colors: np.ndarray
) -> np.ndarray:
    """[H, W, 3] image, [h, w] difficulty x 255, [sh, sw] classes -> [H, 3W + 2 gap, 3] strip.

    `colors` is `class_colors(palette)`.
    """
    h = image.shape[0]
    gap = np.full((h, _GAP, 3), 255, dtype=np.uint8)
    seg = segmentation_rgb(segmentation, image.shape[:2], colors)
    return np.concatenate([image, gap, overlay(image, difficulty), gap, seg], axis=1)


def classes_present(segmentation: np.ndarray, names: Sequence[str]) -> list[tuple[int, str]]:
    """(class id, name) of the classes in a segmentation, the most pixels first."""
    ids, counts = np.unique(segmentation, return_counts=True)
    order = np.lexsort((ids, -counts))
    return [(int(i), names[i] if i < len(names) else f"class {i}") for i in ids[order]]


def caption(rank: int, path: str, scores: Mapping[str, float | None]) -> str:
    values = "  ".join(
        f"{name} {'nan' if scores.get(name) is None else format(scores[name], '.4f')}"
        for name in _SCORE_NAMES
    )
    return f"#{rank}  {values}  {os.path.basename(path)}"


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def annotate(strip: np.ndarray, width: int, text: str, legend: Sequence[tuple[str, Any]]) -> Any:
    """The strip of `render` (image width `width`) with `text` above it and below it the colour
    bar (under the overlay) and the legend (name, RGB) of the classes (under the segmentation)."""
    from PIL import Image, ImageDraw

    font = _font()
    line = font.getbbox("Ag")[3] + 4
    rows = _legend_rows(legend, width, font)
    top, h = line + 4, strip.shape[0]
    footer = max(2 * line + 14, len(rows) * line + 8)
    canvas = Image.new("RGB", (strip.shape[1], top + h + footer), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), _fit(text, strip.shape[1] - 4, font), fill="black", font=font)
    canvas.paste(Image.fromarray(strip), (0, top))
    x, y = width + _GAP, top + h + 4
    canvas.paste(Image.fromarray(colour_bar(width, 10)), (x, y))
    draw.text((x, y + 12), "0", fill="black", font=font)
    draw.text((x + width, y + 12), "1", fill="black", font=font, anchor="ra")
    draw.text((x + width // 2, y + 12), DIFFICULTY_LABEL, fill="black", font=font, anchor="ma")
    x0 = 2 * (width + _GAP)
    for n, row in enumerate(rows):
        for dx, name, rgb in row:
            yy = top + h + 4 + n * line
            draw.rectangle((x0 + dx, yy + 2, x0 + dx + 9, yy + 11), fill=tuple(int(v) for v in rgb))
            draw.text((x0 + dx + 12, yy), name, fill="black", font=font)
    return canvas


def _legend_rows(legend: Sequence[tuple[str, Any]], width: int, font: Any) -> list[list]:
    """Legend entries (x offset, name, RGB) wrapped into rows of `width` pixels."""
    rows: list[list] = [[]]
    x = 0
    for name, rgb in legend:
        w = 12 + int(font.getlength(name)) + 10
        if x and x + w > width:
            rows.append([])
            x = 0
        rows[-1].append((x, name, rgb))
        x += w
    return rows


def _fit(text: str, width: int, font: Any) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with the ellipsis: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if font.getlength(text[:mid] + "...") <= width else (lo, mid - 1)
    return text[:lo] + "..."


def _png(array: np.ndarray | Any) -> bytes:
    from PIL import Image

    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def clear_maps(out: Path) -> Path:
    """OUT/maps/, made, without the files of an earlier selection (they would mislead)."""
    folder = Path(out) / MAPS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if _OUR_NAME.match(old.name):
            old.unlink()
    return folder


def write_maps(
    engine: Engine,
    selected: Sequence[MapOf],
    out: Path,
    max_pixels: int,
    batch_size: int = 8,
    resize: str = "stretch",
) -> dict[str, str]:
    """Write the maps of the selected images under out/maps/, each framed as `resize` says (as
    it was scored); return path -> error for those that could not be drawn."""
    folder = clear_maps(out)
    spec = engine.spec
    failed: dict[str, str] = {}
    for start in range(0, len(selected), batch_size):
        batch, frames = [], []
        for item in selected[start : start + batch_size]:
            try:
                frames.append(decode_any(item.path, spec.input_size, max_pixels, resize))
                batch.append(item)
            except DecodeError as exc:  # the file changed since it was scored
                failed[item.path] = exc.reason
        if not batch:
            continue
        maps = _maps(engine, frames)
        for i, item in enumerate(batch):
            image = frames[i].image
            _write_one(folder, spec, item, image, maps["difficulty"][i], maps["segmentation"][i])
    return failed


def _maps(engine: Engine, frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    images = np.stack([f.image for f in frames])  # [B, H, W, 3]
    return engine.infer(images, MAP_OUTPUTS, np.array([f.box for f in frames], dtype=np.int32))


def _write_one(
    folder: Path,
    spec: ModelSpec,
    item: MapOf,
    image: np.ndarray,
    difficulty: np.ndarray,
    segmentation: np.ndarray,
) -> None:
    colors = class_colors(spec.palette)
    legend = [(name, colors[c]) for c, name in classes_present(segmentation, spec.class_names)]
    strip = render(image, difficulty, segmentation, colors)
    panel = annotate(strip, image.shape[1], caption(item.rank, item.path, item.scores), legend)
    dif_name, seg_name = layer_names(item.rank, item.path)
    atomic_write(folder / dif_name, _png(np.ascontiguousarray(difficulty)), durable=False)
    atomic_write(folder / seg_name, _png(np.ascontiguousarray(segmentation)), durable=False)
    atomic_write(folder / map_name(item.rank, item.path), _png(panel), durable=False)
