"""Regions inside frames and how to choose them: label the hard parts of many frames, not whole
frames. Pure numpy (superpixels import scikit-image when asked for).

A frame at the model's input size is partitioned into regions (`partition`): grid cells
(`cell:N`, N x N pixels) or SLIC superpixels (`slic:N`, about N per frame). Pixels outside the
picture (letterbox padding, `box`) belong to no region (id -1), so padding is never picked and a
cell cut by the picture's edge costs only its picture pixels. A region's score is the mean of a
per-pixel map over it (`region_means`): the difficulty map (DEAL) or the softmax-entropy map.

The regions of a pool (`RegionPool`) are chosen under a budget of pixels or a count of regions
(`Budget`) by a named region strategy (`REGION_STRATEGIES`):

    region-random          uniform order (a seeded draw per frame: independent of pool order)
    region-ds              the highest mean difficulty first
    region-entropy         the highest mean softmax entropy first
    region-ds-sample       sampled without replacement with probability proportional to
                           ds ** (1 / temperature) (Gumbel top-k), seeded
    region-entropy-sample  the same over the entropy map
    region-ds-balanced     sampled as region-ds-sample with each region's probability divided by
                           the share of the pool's regions predicted as its class (the class
                           the model predicts on most of it): every predicted class draws in
                           proportion to its mean of ds ** (1 / temperature), however few its
                           regions (class-balanced quotas from the predicted classes)

Ties break by the frame's path bytes, then the region id. The budget is honoured exactly: the
regions are taken in the strategy's order, a region that would overrun what is left of the budget
is passed over (a smaller one after it may still fit), and a per-frame cap (`max_per_frame`)
passes over regions of a frame that is full. Opening a frame may cost extra (`frame_cost`, in
pixels of labelling: the time an annotator spends loading a frame and finding its regions;
0 counts labelled pixels only).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .ranking import path_hash
from .registry import Registry
from .strategies import DESCRIPTORS

REGION_KINDS = ("cell", "slic", "frame")
DEFAULT_REGIONS = "cell:12"
NO_REGION = -1  # the region id of a pixel outside the picture


@dataclass(frozen=True)
class RegionSpec:
    """How a frame is cut into regions: `cell` (N x N pixel cells), `slic` (about N
    superpixels per frame, SLIC on the picture at the model's input size) or `frame` (the whole
    picture is one region: buying whole frames, in the same units)."""

    kind: str = "cell"
    size: int = 12

    def __str__(self) -> str:
        return "frame" if self.kind == "frame" else f"{self.kind}:{self.size}"


def parse_regions(text: str) -> RegionSpec:
    """`cell:12`, `slic:300` or `frame` -> RegionSpec; anything else is a ValueError saying
    the forms."""
    if str(text).strip() == "frame":
        return RegionSpec("frame", 0)
    m = re.fullmatch(r"\s*(cell|slic):(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1:
        raise ValueError(
            f"regions {text!r}: expected cell:N (N x N pixel cells), slic:N (about N "
            "superpixels a frame), N >= 1, or frame (whole frames)"
        )
    return RegionSpec(m.group(1), int(m.group(2)))


def _box_mask(shape: tuple[int, int], box: Sequence[int] | None) -> np.ndarray:
    """[H, W] bool: inside the picture's box (top, left, bottom, right; exclusive)."""
    h, w = shape
    inside = np.zeros((h, w), dtype=bool)
    top, left, bottom, right = (0, 0, h, w) if box is None else (int(v) for v in box)
    inside[max(top, 0) : min(bottom, h), max(left, 0) : min(right, w)] = True
    return inside


def partition(
    spec: RegionSpec,
    shape: tuple[int, int],
    box: Sequence[int] | None = None,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Region id of every pixel of a frame [H, W] int32; -1 outside the picture's `box`.

    Cells are numbered row-major over the whole frame (cell (r, c) = r * ceil(W / N) + c), so a
    cell's id does not depend on the box. Superpixels need the frame `image` [H, W, 3] uint8 and
    are numbered from 0 within the picture.
    """
    h, w = shape
    inside = _box_mask(shape, box)
    if spec.kind == "frame":
        return np.where(inside, 0, NO_REGION).astype(np.int32)
    if spec.kind == "cell":
        n = spec.size
        cols = -(-w // n)
        ids = (np.arange(h)[:, None] // n) * cols + (np.arange(w)[None, :] // n)
        return np.where(inside, ids, NO_REGION).astype(np.int32)
    if spec.kind == "slic":
        if image is None:
            raise ValueError("slic regions need the frame's pixels")
        try:
            from skimage.segmentation import slic
        except ImportError as e:  # pragma: no cover - scikit-image is in the export extra
            raise RuntimeError(
                "slic regions need scikit-image (pip install scikit-image); cell:N needs nothing"
            ) from e
        ids = np.full((h, w), NO_REGION, dtype=np.int32)
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if len(rows) == 0:
            return ids
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = np.ascontiguousarray(image[r0:r1, c0:c1, :3])
        share = crop.shape[0] * crop.shape[1] / (h * w)  # fewer segments in a smaller picture
        segments = slic(
            crop, n_segments=max(1, round(spec.size * share)), compactness=10.0, start_label=0
        )
        ids[r0:r1, c0:c1] = segments.astype(np.int32)
        return ids
    raise ValueError(f"unknown region kind {spec.kind!r}; choose one of: {', '.join(REGION_KINDS)}")


def upsample(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse per-pixel map [h, w] (the attention grid, the stride-4 grid) at the frame's
    size [H, W] float32, bilinear with half-pixel centres (as the graph upsamples)."""
    from PIL import Image

    values = np.asarray(values, dtype=np.float32)
    if values.shape == tuple(shape):
        return values
    h, w = shape
    return np.asarray(Image.fromarray(values, mode="F").resize((w, h), Image.BILINEAR))


def region_means(
    ids: np.ndarray, maps: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per region of a partition `ids` [H, W]: (region ids [R], pixels [R], map name -> mean
    over the region [R]); each map [H, W] at the partition's size. Regions with no pixel (a
    cell entirely in padding) are left out."""
    flat = ids.ravel()
    inside = flat >= 0
    labels = flat[inside]
    size = int(labels.max()) + 1 if len(labels) else 0
    pixels = np.bincount(labels, minlength=size)
    present = np.flatnonzero(pixels)
    means = {}
    for name, values in maps.items():
        sums = np.bincount(
            labels, weights=np.asarray(values, np.float64).ravel()[inside], minlength=size
        )
        means[name] = sums[present] / pixels[present]
    return present.astype(np.int32), pixels[present].astype(np.int64), means


@dataclass(frozen=True)
class RegionPool:
    """The scored regions of a pool, aligned by index: `frame` [N] indexes `paths` (one per
    frame), `region` [N] the region id within its frame, `pixels` [N] what labelling it costs,
    `scores` map name ("ds", "entropy") -> [N] mean of that map over the region, `classes`
    [N] the class the model predicts most over the region (-1: none; None: not known)."""

    paths: Sequence[str]
    frame: np.ndarray
    region: np.ndarray
    pixels: np.ndarray
    scores: dict[str, np.ndarray]
    classes: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> RegionPool:
        """The regions `rows` (indices) of this pool, over the same frames."""
        return RegionPool(
            self.paths,
            np.asarray(self.frame)[rows],
            np.asarray(self.region)[rows],
            np.asarray(self.pixels)[rows],
            {k: np.asarray(v)[rows] for k, v in self.scores.items()},
            None if self.classes is None else np.asarray(self.classes)[rows],
        )

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def total_pixels(self) -> int:
        return int(np.asarray(self.pixels, np.int64).sum())


@dataclass(frozen=True)
class Budget:
    """How much to label: `pixels` (a pixel count) or `regions` (a region count)."""

    pixels: int | None = None
    regions: int | None = None

    def __str__(self) -> str:
        return f"{self.pixels} pixels" if self.pixels is not None else f"{self.regions} regions"


def parse_budget(text: str, total_pixels: int) -> Budget:
    """`5%` (a share of the pool's pixels, rounded down) or `300` (regions) -> Budget."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            share = float(s[:-1]) / 100
            if not 0 < share <= 1:
                raise ValueError
            return Budget(pixels=math.floor(share * total_pixels + 1e-9))
        count = int(s)
        if count < 1:
            raise ValueError
        return Budget(regions=count)
    except ValueError:
        raise ValueError(
            f"budget {text!r}: expected a share of the pool's pixels (5%, in (0, 100]) or a "
            "count of regions (300)"
        ) from None


@dataclass(frozen=True)
class RegionOptions:
    seed: int = 0  # region-random and the sampling strategies
    temperature: float = 1.0  # sampling: probability proportional to score ** (1 / temperature)
    max_per_frame: int | None = None  # at most this many regions of one frame
    frame_cost: int = 0  # pixels of labelling charged for opening a frame


@dataclass(frozen=True)
class RegionPicks:
    """Indices into the RegionPool, in the order taken, with what they cost."""

    indices: np.ndarray
    pixels: int  # labelled pixels
    cost: int  # pixels plus frame_cost per frame opened
    frames: int  # frames opened


def region_uniforms(pool: RegionPool, seed: int) -> np.ndarray:
    """[N] uniform (0, 1) draws, one per region, from a generator seeded by its frame's path
    and `seed` and indexed by region id: the same region gets the same draw whatever else is
    in the pool, its order or its shard."""
    frame_keys = path_hash(pool.paths, seed)  # [F] in [0, 1)
    out = np.empty(len(pool), dtype=np.float64)
    frame = np.asarray(pool.frame)
    order = np.argsort(frame, kind="stable")
    bounds = np.flatnonzero(np.diff(frame[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) == 0:
            continue
        f = int(frame[rows[0]])
        rng = np.random.default_rng(int(frame_keys[f] * 2**53))
        ids = np.asarray(pool.region)[rows]
        out[rows] = rng.random(int(ids.max()) + 1)[ids]
    return np.clip(out, 1e-12, 1 - 1e-12)


def tie_order(pool: RegionPool, keys: np.ndarray) -> np.ndarray:
    """Indices by `keys` descending, ties by the frame's path bytes, then region id."""
    names = np.array([os.fsencode(p) for p in pool.paths], dtype=bytes)
    rank_of_frame = np.empty(len(names), dtype=np.int64)
    rank_of_frame[np.argsort(names, kind="stable")] = np.arange(len(names))
    by_path = rank_of_frame[np.asarray(pool.frame)]
    return np.lexsort((np.asarray(pool.region), by_path, -np.asarray(keys, np.float64)))


def _column(pool: RegionPool, name: str) -> np.ndarray:
    if name not in pool.scores:
        raise ValueError(f"the regions have no {name!r} map scores")
    return np.asarray(pool.scores[name], np.float64)


def _by_map(name: str) -> Callable[[RegionPool, RegionOptions], np.ndarray]:
    def order(pool: RegionPool, opts: RegionOptions) -> np.ndarray:
        return tie_order(pool, _column(pool, name))

    return order


def class_weights(pool: RegionPool) -> np.ndarray:
    """[N] 1 / (share of the pool's regions whose predicted class is each region's): a class of
    few regions weighs as much in all as a class of many. Regions without a predicted class
    (-1) form one group of their own."""
    if pool.classes is None:
        raise ValueError("class-balanced strategies need each region's predicted class")
    classes = np.asarray(pool.classes, np.int64)
    _, group, counts = np.unique(classes, return_inverse=True, return_counts=True)
    return len(classes) / counts[group].astype(np.float64)


def _sampled(
    name: str, balanced: bool = False
) -> Callable[[RegionPool, RegionOptions], np.ndarray]:
    """Gumbel top-k: keys log(score) / T + Gumbel noise; taking keys in descending order samples
    without replacement with probability proportional to score ** (1 / T). `balanced`: times
    the region's class weight (`class_weights`, not tempered), so each predicted class's share
    of the draws follows its regions' mean of score ** (1 / T), whatever their number."""

    def order(pool: RegionPool, opts: RegionOptions) -> np.ndarray:
        if not opts.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {opts.temperature}")
        score = np.log(np.clip(_column(pool, name), 1e-12, None)) / opts.temperature
        weight = np.log(class_weights(pool)) if balanced else 0.0
        gumbel = -np.log(-np.log(region_uniforms(pool, opts.seed)))
        return tie_order(pool, score + weight + gumbel)

    return order


def _map_of(strategy: str) -> str:
    """The map a region strategy reads, as its descriptor says."""
    region_map = DESCRIPTORS[strategy].region_map
    if region_map is None:
        raise ValueError(f"{strategy} reads no map")
    return region_map


def _random(pool: RegionPool, opts: RegionOptions) -> np.ndarray:
    return tie_order(pool, region_uniforms(pool, opts.seed))


REGION_STRATEGIES: Registry[Callable[[RegionPool, RegionOptions], np.ndarray]] = Registry(
    "region strategy",
    **{
        "region-random": _random,
        "region-ds": _by_map(_map_of("region-ds")),
        "region-entropy": _by_map(_map_of("region-entropy")),
        "region-ds-sample": _sampled(_map_of("region-ds-sample")),
        "region-entropy-sample": _sampled(_map_of("region-entropy-sample")),
        "region-ds-balanced": _sampled(_map_of("region-ds-balanced"), balanced=True),
    },
)


def take_within(
    order: np.ndarray,
    pool: RegionPool,
    budget: Budget,
    max_per_frame: int | None = None,
    frame_cost: int = 0,
) -> RegionPicks:
    """The regions of `order` taken one by one while the budget allows (see the module text)."""
    pixels = np.asarray(pool.pixels, np.int64)
    frame = np.asarray(pool.frame)
    per_frame: dict[int, int] = {}
    taken: list[int] = []
    spent = labelled = 0
    limit = budget.pixels
    smallest = int(pixels.min()) if len(pixels) else 0
    for i in np.asarray(order):
        if budget.regions is not None and len(taken) >= budget.regions:
            break
        f = int(frame[i])
        opened = per_frame.get(f, 0)
        if max_per_frame is not None and opened >= max_per_frame:
            continue
        cost = int(pixels[i]) + (0 if opened else frame_cost)
        if limit is not None and spent + cost > limit:
            if limit - spent < smallest:
                break  # nothing left fits
            continue
        taken.append(int(i))
        per_frame[f] = opened + 1
        spent += cost
        labelled += int(pixels[i])
    return RegionPicks(np.asarray(taken, dtype=np.int64), labelled, spent, len(per_frame))


def choose_regions(
    pool: RegionPool, strategy: str, budget: Budget, opts: RegionOptions = RegionOptions()
) -> RegionPicks:
    """The regions `strategy` buys with `budget`, in the order taken."""
    order_fn = REGION_STRATEGIES[strategy]
    if len(pool) == 0:
        return RegionPicks(np.zeros(0, np.int64), 0, 0, 0)
    return take_within(order_fn(pool, opts), pool, budget, opts.max_per_frame, opts.frame_cost)


def cell_count(spec: RegionSpec, shape: tuple[int, int]) -> int:
    """How many cells a frame of `shape` has (the length of its region vectors)."""
    if spec.kind != "cell":
        raise ValueError(f"fixed region vectors need cell:N regions, not {spec}")
    h, w = shape
    return -(-h // spec.size) * -(-w // spec.size)


def class_counts(ids: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """[region id, class] pixels of each class (`classes` [H, W]; values outside 0..C-1 are
    not counted) in each region of `ids` [H, W] (-1: no region)."""
    valid = (ids >= 0) & (classes >= 0) & (classes < num_classes)
    size = int(ids.max()) + 1 if (ids >= 0).any() else 0
    flat = ids[valid].astype(np.int64) * num_classes + classes[valid].astype(np.int64)
    return np.bincount(flat, minlength=size * num_classes).reshape(-1, num_classes)


def majority(counts: np.ndarray) -> np.ndarray:
    """[regions] the class of most pixels in each row of `class_counts` (ties: the lower
    class; -1 for a region with no counted pixel)."""
    return np.where(counts.any(1), counts.argmax(1), -1)


def frame_region_vectors(
    spec: RegionSpec,
    shape: tuple[int, int],
    maps: dict[str, np.ndarray],
    boxes: np.ndarray,
    segmentation: tuple[np.ndarray, int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """The cells of a batch of frames as fixed-length vectors: pixels [B, R] int32 (a cell's
    picture pixels; 0 for a cell all padding); per map [B, h, w] (any grid; upsampled to the
    frame), its mean over each cell [B, R] float32 (0 where a cell has no pixel); and, given
    `segmentation` (the predicted classes [B, sh, sw] uint8 on any grid, nearest to the frame,
    and the number of classes), the class predicted on most of each cell's pixels [B, R]
    int16 (`majority`: -1 where a cell has no pixel), else None."""
    from PIL import Image

    r = cell_count(spec, shape)
    b = len(boxes)
    pixels = np.zeros((b, r), np.int32)
    means = {name: np.zeros((b, r), np.float32) for name in maps}
    classes = None
    if segmentation is not None:
        grid, num_classes = segmentation
        if grid.dtype != np.uint8:
            raise ValueError(f"the segmentation holds uint8 classes, not {grid.dtype}")
        classes = np.full((b, r), -1, np.int16)
    for i in range(b):
        ids = partition(spec, shape, box=boxes[i])
        full = {name: upsample(values[i], shape) for name, values in maps.items()}
        rid, npx, per = region_means(ids, full)
        pixels[i, rid] = npx
        for name in maps:
            means[name][i, rid] = per[name]
        if classes is not None:
            seg = np.asarray(Image.fromarray(grid[i]).resize((shape[1], shape[0]), Image.NEAREST))
            classes[i, rid] = majority(class_counts(ids, seg, num_classes))[rid]
    return pixels, means, classes


def region_mask(
    spec: RegionSpec, shape: tuple[int, int], box: Sequence[int], picked: Sequence[int]
) -> np.ndarray:
    """[H, W] uint16 of a frame: region id + 1 on the pixels of the `picked` regions, 0 on
    every other pixel (what is not to be labelled)."""
    ids = partition(spec, shape, box=box)
    chosen = np.isin(ids, np.asarray(picked, dtype=np.int64)) & (ids >= 0)
    return np.where(chosen, ids + 1, 0).astype(np.uint16)
