"""`deal-client export`: hand a selection to a labelling tool, in the tool's own import format.

    labelstudio  tasks.json (Label Studio's JSON tasks: `data.image`, every score and class share
                 as data fields; with `predictions`, the predicted segmentation as BrushLabels
                 pre-annotations in Label Studio's brush RLE) and labeling_config.xml to match
    cvat         manifest.jsonl (CVAT's dataset manifest 1.1, images: name, extension, width,
                 height) and images.txt (one path or URL a line, for a share or remote task)
    fiftyone     samples.json and metadata.json (FiftyOne's JSON dataset layout, read by
                 `fo.Dataset.from_dir(DIR, dataset_type=fo.types.FiftyOneDataset)`): the scores
                 and class shares as sample fields; with `predictions`, a `prediction`
                 Segmentation per sample (masks/ holds the class-id PNGs)
    csv          selection.csv: rank, path, every score and one column per class

`PathMap` rewrites where the images live (`/data/pool` -> `s3://bucket/pool`). Every selected
path must be UTF-8: these formats hold text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from dealseg.core.classes import class_columns
from dealseg.core.decode import DecodeError
from dealseg.core.files import atomic_write
from dealseg.core.pool import is_uri
from dealseg.core.ranking import SCORE_COLUMNS

from .logs import image_source
from .maps import layer_names, map_name
from .outdir import MAPS, load_table, read_selection
from .records import Table, record_path, spec_of
from .regions import REGION_MASKS, buys_regions, read_region_mask

PREDICTION_FORMATS = ("labelstudio", "fiftyone")  # the formats that carry pre-annotations
_RLE_SIZES = (3, 4, 8, 16)  # the four run-length widths (bits) of Label Studio's brush RLE


class ExportError(ValueError):
    """The selection cannot be exported as asked; the message says what to do."""


# ---------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class PathMap:
    """LOCAL=REMOTE prefix rules: a path under LOCAL (a folder) is rewritten under REMOTE.

    The longest LOCAL that holds a path wins. Under a REMOTE that is an http(s) URL or holds a
    query (`/data/local-files/?d=pool`), the rest of the path is percent-encoded.
    """

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, items: Sequence[str]) -> PathMap:
        rules = []
        for item in items:
            local, sep, remote = item.partition("=")
            if not sep or not local or not remote:
                raise ValueError(f"{item!r} is not LOCAL=REMOTE")
            local = local.rstrip("/") if is_uri(local) else os.path.abspath(local).rstrip("/")
            rules.append((local or "/", remote.rstrip("/")))
        locals_ = [local for local, _ in rules]
        twice = sorted({local for local in locals_ if locals_.count(local) > 1})
        if twice:
            raise ValueError(f"two rules for {', '.join(twice)}: give each LOCAL one REMOTE")
        return cls(tuple(sorted(rules, key=lambda r: -len(r[0]))))

    def root(self, path: str) -> tuple[str, str] | None:
        """(LOCAL, REMOTE) of the rule for `path`, or None."""
        for local, remote in self.rules:
            if path == local or path.startswith(local.rstrip("/") + "/"):
                return local, remote
        return None

    def apply(self, path: str) -> str:
        rule = self.root(path)
        if rule is None:
            return path
        local, remote = rule
        rest = path[len(local) :].lstrip("/")
        if re.match(r"https?://", remote) or "?" in remote:
            rest = quote(rest, safe="/")
        return f"{remote}/{rest}" if rest else remote


@dataclass(frozen=True)
class Item:
    """One selected image to export."""

    rank: int
    path: str  # where it is here (a log's frame: its address)
    remote: str  # where the labelling tool finds it, a log's frame as its extracted image
    relative: str  # its path under its storage root (CVAT's manifest name)
    scores: dict[str, float | None]  # "score" (the strategy's) and every score
    fractions: dict[str, float]  # class name -> predicted share


@dataclass(frozen=True)
class Handoff:
    """What every writer may need beside the items: the selection being handed off."""

    folder: Path  # the selection's folder (its maps/)
    table: Table
    selection: dict[str, Any]
    predictions: bool
    regions: bool = False  # a selection of regions: their masks are in region_masks/


def _text(path: str) -> str:
    try:
        return os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise ExportError(f"{shown}: not a UTF-8 name, which these formats cannot hold") from None


def _items(table: Table, selection: dict[str, Any], path_map: PathMap) -> list[Item]:
    index = {p: i for i, p in enumerate(table.paths)}
    paths = [_text(record_path(r)) for r in selection["rows"]]
    # a log's frame is handed off as its image extracted beside the selection (OUT/frames/)
    files = [_text(r.get("image") or p) for r, p in zip(selection["rows"], paths, strict=True)]
    unmapped = [f for f in files if path_map.rules and path_map.root(f) is None]
    if unmapped:
        raise ExportError(
            f"{len(unmapped)} selected paths are under no --path-map LOCAL, e.g. {unmapped[0]}"
        )
    base = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    items = []
    for row, path, file in zip(selection["rows"], paths, files, strict=True):
        rule = path_map.root(file)
        root = rule[0] if rule else base
        shares = _shares(table, index.get(path))
        items.append(
            Item(
                row["rank"],
                path,
                path_map.apply(file),
                os.path.relpath(file, root),
                {name: row.get(name) for name in ("score", *SCORE_COLUMNS)},
                dict(zip(table.class_names, shares, strict=True)),
            )
        )
    return items


def _share_fields(item: Item) -> dict[str, float]:
    """An item's class shares as fields, each class under its column (`class_columns`)."""
    columns = class_columns(list(item.fractions))
    return {columns[name]: share for name, share in item.fractions.items()}


def _shares(table: Table, index: int | None) -> list[float]:
    if table.fractions is None or index is None:
        return [0.0] * len(table.class_names)
    return [round(float(v), 6) for v in np.nan_to_num(table.fractions[index])]


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF orientation applied), from its header."""
    from PIL import Image

    try:
        with Image.open(image_source(path)) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, DecodeError) as exc:
        raise ExportError(f"{path}: cannot read the image's size: {exc}") from None
    return (h, w) if rotated else (w, h)


def _segmentation(ctx: Handoff, item: Item) -> np.ndarray:
    """The predicted class ids of an item at its image's size (from the maps' raw layer)."""
    from PIL import Image

    layer = ctx.folder / MAPS / layer_names(item.rank, item.path)[1]
    if not layer.is_file():
        raise ExportError(
            f"no predicted segmentation for #{item.rank} ({layer.name}): draw the maps first "
            "(`deal-client select SCORES --out DIR --maps`, or `score --maps`)"
        )
    with Image.open(layer) as im:
        seg = im.convert("L").resize(_image_size(item.path), Image.Resampling.NEAREST)
    return np.asarray(seg)


# ------------------------------------------------------------------------------ label studio
def brush_rle(mask: np.ndarray) -> list[int]:
    """A binary mask [H, W] in Label Studio's brush RLE: the RGBA bytes of the mask (255 where
    set, else 0) as runs, after a header of the value count, the word size (8) and the four
    run-length widths; bits most significant first, zero-padded to whole bytes."""
    flat = np.repeat(np.where(np.asarray(mask).ravel(), 255, 0), 4)
    fields = [(len(flat), 32), (8 - 1, 5), *((s - 1, 4) for s in _RLE_SIZES)]
    starts = np.flatnonzero(np.diff(flat, prepend=-1))
    lengths = np.diff(np.append(starts, len(flat)))
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        while length:
            n = min(length, 1 << 16)
            width = next(i for i, bits in enumerate(_RLE_SIZES) if n - 1 < 1 << bits)
            fields += [(1, 1), (width, 2), (n - 1, _RLE_SIZES[width]), (int(flat[start]), 8)]
            length -= n
    bits = "".join(format(value, f"0{n}b") for value, n in fields)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def read_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE (as a task or an annotation holds it) -> a bool mask [H, W]
    (set where the brush's alpha is): runs and literal blocks, as Label Studio writes them."""
    bits = "".join(format(b, "08b") for b in rle)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        pos += n
        return int(bits[pos - n : pos], 2)

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    values = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        run = read(1)
        end = i + 1 + read(sizes[read(2)])
        if run:
            values[i:end] = read(word)
            i = end
        else:
            while i < end:
                values[i] = read(word)
                i += 1
    return values.reshape(height, width, 4)[..., 3] > 127


REGION_LABEL = "Label here"  # the region layer's one label: the pixels bought


def labeling_config(
    class_names: Sequence[str], palette: Sequence[Sequence[int]], regions: bool = False
) -> str:
    """A Label Studio labeling config for the tasks: the image and a brush label per class;
    for region tasks, a second brush layer `regions` that shows what to label."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background="
        f"{quoteattr('#{:02x}{:02x}{:02x}'.format(*rgb))}/>"
        for name, rgb in zip(class_names, palette, strict=True)
    )
    layer = (
        '  <BrushLabels name="regions" toName="image">\n'
        f'    <Label value="{REGION_LABEL}" background="#ffff00"/>\n  </BrushLabels>\n'
        if regions
        else ""
    )
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="label" toName="image">\n{labels}\n  </BrushLabels>\n'
        f"{layer}</View>\n"
    )


def _region_mask(ctx: Handoff, item: Item) -> np.ndarray | None:
    """The item's bought regions at its picture's size (region id + 1; 0 elsewhere), or None
    when the selection bought no regions of it (or bought whole frames)."""
    if not ctx.regions:
        return None
    mask = read_region_mask(ctx.folder, item.rank, item.path)
    if mask is None:
        name = map_name(item.rank, item.path)
        raise ExportError(f"no region mask for #{item.rank} ({name}): select again")
    return mask


def _brush(key: str, layer: str, mask: np.ndarray, label: str) -> dict[str, Any]:
    """One Label Studio brush result: a bool `mask` [H, W] as `label` of the `layer`."""
    return {
        "id": key,
        "from_name": layer,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": int(mask.shape[1]),
        "original_height": int(mask.shape[0]),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label]},
    }


def _ls_prediction(ctx: Handoff, item: Item) -> dict[str, Any]:
    seg = _segmentation(ctx, item)
    names = ctx.table.class_names
    result = [
        _brush(f"r{item.rank}c{c}", "label", seg == c, names[c])
        for c in np.unique(seg).tolist()
        if c < len(names)
    ]
    # no "score": Label Studio's is a confidence in 0..1; the scores are the task's data fields
    return {"model_version": ctx.selection["model"], "result": result}


def _labelstudio(dest: Path, items: list[Item], ctx: Handoff) -> list[Path]:
    tasks = []
    for item in items:
        data = {
            "image": item.remote,
            "path": item.path,
            "rank": item.rank,
            "strategy": ctx.selection["strategy"],
            "model": ctx.selection["model"],
            **item.scores,
            **_share_fields(item),
        }
        task: dict[str, Any] = {"data": data}
        prediction = _ls_prediction(ctx, item) if ctx.predictions else None
        regions = _region_mask(ctx, item)
        if regions is not None:  # what to label: its own layer beside the predicted classes
            prediction = prediction or {"model_version": ctx.selection["model"], "result": []}
            layer = _brush(f"r{item.rank}regions", "regions", regions > 0, REGION_LABEL)
            prediction["result"].append(layer)
            data["region_pixels"] = int((regions > 0).sum())
        if prediction is not None:
            task["predictions"] = [prediction]
        tasks.append(task)
    spec = spec_of(ctx.table.meta)
    config = labeling_config(spec.class_names, spec.palette, ctx.regions)
    return [
        _write(dest / "tasks.json", json.dumps(tasks, indent=1, allow_nan=False)),
        _write(dest / "labeling_config.xml", config),
    ]


# ------------------------------------------------------------------------------------ cvat
def _cvat(dest: Path, items: list[Item], ctx: Handoff) -> list[Path]:
    lines = [{"version": "1.1"}, {"type": "images"}]
    for item in items:
        name, extension = os.path.splitext(item.relative)
        width, height = _image_size(item.path)
        lines.append({"name": name, "extension": extension, "width": width, "height": height})
    manifest = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
    listing = "".join(item.remote + "\n" for item in items)
    written = [_write(dest / "manifest.jsonl", manifest), _write(dest / "images.txt", listing)]
    for item in items:  # region selections: a mask per image, named like it in the manifest
        mask = _region_mask(ctx, item)
        if mask is not None:
            name = os.path.splitext(item.relative)[0] + ".png"
            written.append(_png(dest / REGION_MASKS / name, mask))
    return written


# -------------------------------------------------------------------------------- fiftyone
def _fiftyone(dest: Path, items: list[Item], ctx: Handoff) -> list[Path]:
    samples = []
    for item in items:
        sample: dict[str, Any] = {
            "filepath": item.remote,
            "tags": ["dealseg"],
            "metadata": None,
            "local_path": item.path,
            "rank": item.rank,
            **item.scores,
            **_share_fields(item),
        }
        if ctx.predictions:
            sample["prediction"] = {"_cls": "Segmentation", "mask_path": _mask(dest, ctx, item)}
        regions = _region_mask(ctx, item)
        if regions is not None:  # what to label: 0 outside the bought regions
            path = _png(dest / REGION_MASKS / f"{item.rank:04d}.png", regions).absolute()
            sample["regions"] = {"_cls": "Segmentation", "mask_path": str(path)}
        samples.append(sample)
    names = ctx.table.class_names
    info = {
        "dealseg": {k: ctx.selection.get(k) for k in ("model", "strategy", "k", "scores")},
        "default_mask_targets": {str(c): name for c, name in enumerate(names)},
    }
    meta = {"name": f"dealseg-{ctx.selection['strategy']}", "media_type": "image", "info": info}
    return [
        _write(dest / "samples.json", json.dumps({"samples": samples}, indent=1, allow_nan=False)),
        _write(dest / "metadata.json", json.dumps(meta, indent=1)),
    ]


def _png(path: Path, values: np.ndarray) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue(), durable=False)
    return path


def _mask(dest: Path, ctx: Handoff, item: Item) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_segmentation(ctx, item)).save(buf, format="PNG")
    path = (dest / "masks" / f"{item.rank:04d}.png").absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue(), durable=False)
    return str(path)


# ------------------------------------------------------------------------------------- csv
def _csv(dest: Path, items: list[Item], ctx: Handoff) -> list[Path]:
    names = ctx.table.class_names
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["rank", "path", "local_path", "score", *SCORE_COLUMNS, *class_columns(names).values()]
    )
    for item in items:
        scores = [
            "" if item.scores[k] is None else item.scores[k] for k in ("score", *SCORE_COLUMNS)
        ]
        shares = [item.fractions[name] for name in names]
        writer.writerow([item.rank, item.remote, item.path, *scores, *shares])
    return [_write(dest / "selection.csv", buf.getvalue())]


# ---------------------------------------------------------------------------------- export
def _write(path: Path, text: str) -> Path:
    atomic_write(path, text.encode("utf-8"))
    return path


WRITERS: dict[str, Callable[[Path, list[Item], Handoff], list[Path]]] = {
    "labelstudio": _labelstudio,
    "cvat": _cvat,
    "fiftyone": _fiftyone,
    "csv": _csv,
}


def check_format(fmt: str, predictions: bool) -> None:
    """An ExportError for a format that takes no predictions, asked for them."""
    if predictions and fmt not in PREDICTION_FORMATS:
        raise ExportError(f"{fmt} takes no predictions; {' and '.join(PREDICTION_FORMATS)} do")


def export_selection(
    folder: Path, fmt: str, dest: Path, path_map: PathMap, predictions: bool = False
) -> list[Path]:
    """Write the selection in `folder` (of `score` or `select --out`) as `fmt` into `dest`;
    return the files written. Raises ExportError (and StoreError for a folder without scores)."""
    selection = read_selection(folder)
    if selection is None:
        raise ExportError(f"{folder} holds no selection.json: run `deal-client score` or select")
    check_format(fmt, predictions)
    table = load_table(selection.get("scores") or folder)
    items = _items(table, selection, path_map)
    Path(dest).mkdir(parents=True, exist_ok=True)
    ctx = Handoff(Path(folder), table, selection, predictions, buys_regions(selection))
    return WRITERS[fmt](Path(dest), items, ctx)
