"""Buying regions: the selection step of `score --regions` / `select --regions` and of
`dealseg.select(..., budget=)`.

A run scored with `--regions` keeps each frame's cells (`cell:N` at the model's input size) with
their picture pixels, the mean of each region map the model serves: difficulty (`ds`) and,
from contract 3 on, softmax entropy (`entropy`), and the class the model predicts on most of
the cell (`class`, from its segmentation) (`regions` in scores.jsonl, `region_pixels`,
`region_ds`, `region_entropy` and `region_class` columns in scores.parquet). Selection turns
them into a `core.regions.RegionPool`, lets the region strategy buy within the budget, and writes:

    regions.jsonl   one line per bought region, in the order taken: rank, path (path_b64),
                    region (the cell id), pixels, score (the region's mean of the map the
                    strategy reads: entropy for region-entropy*, else difficulty), frame_rank,
                    class (the name of the class the model predicts on most of the region;
                    the scores' cells keep its id)
    regions.json    the settings, the budget in pixels, pixels bought and their share of the
                    pool's, frames opened, the labelling cost, the partition, the pixels
                    bought per most-predicted class (bought_classes)
    region_masks/   one PNG per frame with bought regions, named like its map
                    (NNNN_<name>_<hash>.png, NNNN = the frame's rank): 16-bit, region id + 1 on
                    the bought regions' pixels, 0 on the pixels not to label, at the size of the
                    picture in its file (mapped back through --resize)
    selection.txt/json   the frames that hold bought regions, in the order their first region was
                    taken (score: the best region's); maps, report and exports read these

Masks of pictures that cannot be read back (moved since scoring, object storage) are left out
with a warning; their regions are still in regions.jsonl.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.decode import DecodeError, place
from dealseg.core.files import atomic_write
from dealseg.core.ranking import Choice, Pick, Pool, novel
from dealseg.core.regions import (
    Budget,
    RegionOptions,
    RegionPicks,
    RegionPool,
    choose_regions,
    parse_budget,
    parse_regions,
    region_mask,
)
from dealseg.core.strategies import DESCRIPTORS

from . import jsonl, parquet
from .logs import image_source
from .maps import map_name
from .objects import Location, location
from .outdir import recorded_settings, write_selection
from .records import SCORES, RegionCells, StoreError, Table, finite, path_fields, spec_of
from .settings import SelectSettings

REGIONS_JSONL = "regions.jsonl"
REGIONS_JSON = "regions.json"
REGION_MASKS = "region_masks"


def buys_regions(selection: dict[str, Any]) -> bool:
    """Whether a selection (selection.json's object) bought regions (a budget), not frames."""
    return selection.get("settings", {}).get("budget") is not None


def read_region_mask(folder: Path, rank: int, path: str) -> np.ndarray | None:
    """The bought regions of pick `rank` (`path`) of the selection in `folder`, at its
    picture's size (region id + 1; 0 elsewhere), from region_masks/; None when there is none."""
    from PIL import Image

    try:
        with Image.open(Path(folder) / REGION_MASKS / map_name(rank, path)) as im:
            return np.asarray(im)
    except OSError:
        return None


def region_vectors(table: Table) -> RegionCells:
    """The table's cells, row i the table's path i. StoreError when the scores hold no regions
    (scored without --regions)."""
    if table.regions is None and table.load_regions is not None:
        table.regions = table.load_regions()
    if table.regions is None:
        raise StoreError(
            f"{table.scores_file} holds no regions: score with --regions (e.g. --regions 5%) "
            "into a fresh --out"
        )
    return table.regions


def scored_without_class(out: Location) -> bool:
    """Whether the out dir `out` holds cells scored before cells carried their class (a resume
    of it would leave a class-balanced strategy nothing to read)."""
    out = location(out)
    if parquet.holds_scores(out):
        return bool(parquet.absent_cell_columns(out / parquet.SCORES_PARQUET, True))
    if isinstance(out, Path) and jsonl.holds_scores(out):
        for record in jsonl.iter_records(out / SCORES):
            if record.get("regions"):
                return "class" not in record["regions"]
    return False


def region_pool(table: Table, how: SelectSettings | None = None) -> RegionPool:
    """Every cell with picture pixels, of every frame scored OK and, unless `how` keeps them
    (`novel_share` None), not off-domain (novelty above `how.novel_threshold`), with each map's
    means."""
    cells = region_vectors(table)
    pixels = cells.pixels
    if how is not None and how.novel_share is not None:
        off = novel(Pool(table.paths, table.scores), how.novel_threshold)
        pixels = np.where(off[:, None], 0, pixels)
    frame, region = np.nonzero(pixels > 0)
    return RegionPool(
        table.paths,
        frame.astype(np.int64),
        region.astype(np.int32),
        cells.pixels[frame, region].astype(np.int64),
        {name: m[frame, region].astype(np.float64) for name, m in cells.means.items()},
        None if cells.classes is None else cells.classes[frame, region].astype(np.int64),
    )


def score_key(pool: RegionPool, strategy: str) -> np.ndarray:
    """What a bought region's `score` is: its mean of the map `strategy` reads (its
    descriptor's `region_map`; the difficulty map for region-random)."""
    return pool.scores[DESCRIPTORS[strategy].region_map or "ds"]


def predicted(pool: RegionPool, i: int, class_names: Sequence[str]) -> dict[str, str]:
    """A bought region's `class` field: the class its scoring model predicts on most of it
    (nothing when the scores carry none)."""
    if pool.classes is None or not 0 <= int(pool.classes[i]) < len(class_names):
        return {}
    return {"class": class_names[int(pool.classes[i])]}


def class_mix(
    pool: RegionPool, indices: np.ndarray, class_names: Sequence[str]
) -> dict[str, int] | None:
    """Bought pixels per most-predicted class, the most first (None: the scores carry no
    class)."""
    if pool.classes is None:
        return None
    classes = np.asarray(pool.classes)[indices]
    pixels = np.asarray(pool.pixels)[indices]
    mix = {
        class_names[c]: int(pixels[classes == c].sum())
        for c in np.unique(classes)
        if 0 <= c < len(class_names)
    }
    return dict(sorted(mix.items(), key=lambda kv: -kv[1]))


def buy(pool: RegionPool, how: SelectSettings) -> tuple[Budget, RegionPicks]:
    """The budget `how` names, in the pool's pixels, and the regions its strategy buys with it:
    the one buying step of the CLI and the API. StoreError when the strategy reads a map the
    scoring model did not serve (an entropy strategy on scores of a contract 1 or 2 model)."""
    wanted = DESCRIPTORS[how.strategy].region_map
    if wanted is not None and len(pool) and wanted not in pool.scores:
        raise StoreError(
            f"{how.strategy} reads each region's mean {wanted}, and these scores have none: "
            f"their model serves no {wanted} map (contract 1 or 2); re-export it with "
            "`deal-export reexport` and score again into a fresh --out, or use region-ds-sample"
        )
    if "classes" in DESCRIPTORS[how.strategy].needs and len(pool) and pool.classes is None:
        raise StoreError(
            f"{how.strategy} reads the class predicted on each region, and these scores were "
            "written before cells carried it: score again into a fresh --out, or use "
            "region-ds-sample"
        )
    budget = parse_budget(str(how.budget), pool.total_pixels)
    opts = RegionOptions(how.seed, how.temperature, how.max_per_frame, how.frame_cost)
    return budget, choose_regions(pool, how.strategy, budget, opts)


def run_region_selection(table: Table, out: Path, how: SelectSettings) -> dict[str, Any]:
    """Buy regions from a loaded table as `how` says; write the files above into `out` and
    return selection.json's object (with `regions`: regions.json's)."""
    partition = recorded_settings(table.meta).get("regions")
    if not partition:
        raise StoreError(
            f"{table.scores_file} was scored without --regions: score with --regions into a "
            "fresh --out"
        )
    pool = region_pool(table, how)
    budget, bought = buy(pool, how)
    keys = score_key(pool, how.strategy)
    frames: dict[int, list[int]] = {}  # frame index -> its bought regions, in order of first take
    for i in bought.indices:
        frames.setdefault(int(pool.frame[i]), []).append(int(i))
    picks = [Pick(f, float(max(keys[i] for i in taken))) for f, taken in frames.items()]
    summary = {
        **how.describe(),
        "partition": partition,
        "budget_pixels": budget.pixels,
        "budget_regions": budget.regions,
        "pool_pixels": pool.total_pixels,
        "bought_regions": len(bought.indices),
        "bought_pixels": bought.pixels,
        "bought_share": bought.pixels / max(pool.total_pixels, 1),
        "frames": bought.frames,
        "cost": bought.cost,
        "bought_classes": class_mix(pool, bought.indices, table.class_names),
    }
    shortfall = [] if len(bought.indices) else ["the budget buys no region"]
    closed = (
        0
        if how.novel_share is None
        else novel(Pool(table.paths, table.scores), how.novel_threshold)
    )
    chosen = Choice(picks, [], len(table), len(table), int(np.sum(closed)))
    doc = write_selection(out, table, chosen, how.describe(), shortfall, {"k": len(picks)})
    frame_rank = {f: n for n, f in enumerate(frames, 1)}
    lines = [
        json.dumps(
            {
                "rank": n,
                **path_fields(table.paths[pool.frame[i]]),
                "region": int(pool.region[i]),
                "pixels": int(pool.pixels[i]),
                "score": finite(round(float(keys[i]), 6)),
                "frame_rank": frame_rank[int(pool.frame[i])],
                **predicted(pool, i, table.class_names),
            },
            ensure_ascii=True,
        ).encode()
        + b"\n"
        for n, i in enumerate(bought.indices, 1)
    ]
    atomic_write(Path(out) / REGIONS_JSONL, b"".join(lines))
    failed = write_masks(table, out, pool, frames, partition)
    summary["masks_missing"] = failed
    atomic_write(Path(out) / REGIONS_JSON, json.dumps(summary, indent=1).encode())
    return {**doc, "regions": summary}


def write_masks(
    table: Table, out: Path, pool: RegionPool, frames: dict[int, list[int]], partition: str
) -> dict[str, str]:
    """region_masks/: one mask per frame with bought regions (see the module text); returns
    path -> why for the frames whose picture could not be read back."""
    from PIL import Image

    folder = Path(out) / REGION_MASKS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    spec = parse_regions(partition)
    shape = tuple(spec_of(table.meta).input_size)
    resize = recorded_settings(table.meta).get("resize") or "stretch"
    failed: dict[str, str] = {}
    for rank, (f, taken) in enumerate(frames.items(), 1):
        path = table.paths[f]
        try:
            with Image.open(image_source(path)) as im:
                shown = (im.height, im.width)
        except (OSError, DecodeError) as exc:
            failed[path] = str(exc)
            continue
        placement = place(shown, shape, resize)
        box = placement.box(shape)
        mask = region_mask(spec, shape, box, [int(pool.region[i]) for i in taken])
        picture = to_picture(mask, placement, shown)
        target = folder / map_name(rank, path)
        buf = _png16(picture)
        atomic_write(target, buf, durable=False)
    if failed:
        print(
            f"warning: {len(failed)} region masks not drawn (first: {next(iter(failed))}: "
            f"{next(iter(failed.values()))})",
            file=sys.stderr,
        )
    return failed


def to_picture(mask: np.ndarray, placement: Any, shown: tuple[int, int]) -> np.ndarray:
    """A frame-sized mask [H, W] back on the picture's own pixels [h, w] (nearest): the inverse
    of how --resize placed the picture in the frame; what was cropped off is 0."""
    from PIL import Image

    (top, left), (sh, sw) = placement.offset, placement.scaled
    h, w = mask.shape
    scaled = np.zeros((sh, sw), np.uint16)  # the picture at its scaled size
    y0, x0 = max(0, -top), max(0, -left)
    y1, x1 = min(sh, h - top), min(sw, w - left)
    scaled[y0:y1, x0:x1] = mask[top + y0 : top + y1, left + x0 : left + x1]
    image = Image.fromarray(scaled.astype(np.int32), mode="I")
    return np.asarray(image.resize((shown[1], shown[0]), Image.NEAREST), dtype=np.uint16)


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of `values` [h, w] uint16."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()
