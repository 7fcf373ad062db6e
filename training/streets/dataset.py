"""A data set of drives in CamVid layout: conditions per drive at long-tail rates, splits that
no drive straddles, frames written in parallel, tags.jsonl and summary.json (`write_streets`)."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from dealseg.core.classes import IGNORE_INDEX, ClassTable

from ..camvid import CAMVID_CLASSES, CAMVID_PALETTE
from ..tags import FrameTag, write_tags
from .canvas import NUM_LABELS, VOID
from .conditions import CLEAR, CONDITIONS
from .render import Shot, render_scene

# ---------------------------------------------------------------- writing a dataset


SPLITS = ("train", "val", "test")


def condition_rates(rare_scale: float = 1.0) -> dict[str, float]:
    """Share of drives filmed in each condition: rare ones at rate x rare_scale, clear the rest."""
    rare = {name: c.rate * rare_scale for name, c in CONDITIONS.items() if name != CLEAR}
    if rare_scale < 0 or sum(rare.values()) > 1:
        limit = 1 / sum(c.rate for c in CONDITIONS.values())
        raise ValueError(
            f"rare_scale must be in 0..{limit:.2f} (at {limit:.2f} no drive is "
            f"clear), got {rare_scale}"
        )
    return {CLEAR: 1 - sum(rare.values()), **rare}


def _assign_conditions(count: int, rates: dict[str, float], rng: np.random.Generator) -> list[str]:
    """A condition per drive, each on count x rate drives (rounded down or up), in random order."""
    rare = [name for name in rates if name != CLEAR]
    edges = np.cumsum([rates[name] for name in rare])
    spots = (np.arange(count) + rng.random()) / count  # evenly spaced quantiles, shifted at random
    names = [*rare, CLEAR]
    return [names[k] for k in rng.permutation(np.searchsorted(edges, spots, side="right"))]


def _split_counts(n: int, split: tuple[float, float, float]) -> dict[str, int]:
    total = float(sum(split))
    if len(split) != 3 or total <= 0 or min(split) < 0:
        raise ValueError(f"split must be three fractions (train, val, test) >= 0, got {split}")
    n_train, n_val = int(round(n * split[0] / total)), int(round(n * split[1] / total))
    n_val = min(n_val, n - n_train)
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def plan_streets(
    n: int,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    sequence_length: int = 5,
    seed: int = 0,
    rare_scale: float = 1.0,
) -> list[FrameTag]:
    """Tags of the `n` frames of a street set: each split is cut into drives of `sequence_length`
    frames (a split's last drive may be shorter), and each drive gets one condition."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
    counts = _split_counts(n, split)
    drives = [
        (name, min(sequence_length, counts[name] - start))
        for name in SPLITS
        for start in range(0, counts[name], sequence_length)
    ]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))  # not a drive's
    conditions = _assign_conditions(len(drives), condition_rates(rare_scale), rng)
    s_digits, f_digits = max(4, len(str(len(drives) - 1))), max(2, len(str(sequence_length - 1)))
    tags = []
    for sequence, ((name, length), condition) in enumerate(zip(drives, conditions, strict=True)):
        for frame in range(length):
            stem = f"s{sequence:0{s_digits}d}_f{frame:0{f_digits}d}"
            tags.append(
                FrameTag(
                    f"{name}/{stem}.png", name, stem, sequence, frame, condition, condition != CLEAR
                )
            )
    return tags


def _write_one(job: tuple[Path, int, tuple[int, int], FrameTag, int]) -> np.ndarray:
    """Render one frame of a drive (`frames` long), save it; return its label histogram [12]."""
    out_dir, seed, size, tag, frames = job
    shot = Shot(tag.frame, frames, tag.condition)
    image, label = render_scene(np.random.default_rng([seed, tag.sequence]), size, shot)
    Image.fromarray(image).save(out_dir / tag.image)
    Image.fromarray(label).save(out_dir / f"{tag.split}annot" / f"{tag.stem}.png")
    return np.bincount(label.ravel(), minlength=NUM_LABELS)


def write_streets(
    out_dir: Path,
    n: int,
    size: tuple[int, int] = (180, 240),
    seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    workers: int = 1,
    sequence_length: int = 5,
    rare_scale: float = 1.0,
) -> dict:
    """Write `n` frames of street drives in SegNet's CamVid layout, with `tags.jsonl` and
    `summary.json`; same arguments -> byte-identical files, whatever the number of workers.

    Returns the summary: images per split, drives, per-class pixel share, images containing each
    class, and per condition its configured rate and the frames it got.
    """
    tags = plan_streets(n, split, sequence_length, seed, rare_scale)
    out_dir = Path(out_dir)
    for name in SPLITS:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}annot").mkdir(parents=True, exist_ok=True)
    frames = Counter(tag.sequence for tag in tags)
    jobs = [(out_dir, seed, tuple(size), tag, frames[tag.sequence]) for tag in tags]
    if workers > 1:
        # spawn, not fork: a fork of a process whose torch/ONNX Runtime thread pools already run
        # can deadlock in the child (seen in the test suite).
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            hists = pool.map(_write_one, jobs, chunksize=max(1, n // (workers * 8)))
    else:
        hists = [_write_one(job) for job in jobs]
    for name in SPLITS:
        lines = [f"{t.image} {name}annot/{t.stem}.png\n" for t in tags if t.split == name]
        (out_dir / f"{name}.txt").write_text("".join(lines))
    write_tags(out_dir, tags)
    values = tuple(range(len(CAMVID_CLASSES)))
    classes = ClassTable(CAMVID_CLASSES, CAMVID_PALETTE, values, (VOID, IGNORE_INDEX))
    (out_dir / "classes.json").write_text(json.dumps(classes.to_dict(), indent=2) + "\n")
    summary = _summary(np.stack(hists), tags, size, seed, condition_rates(rare_scale))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(
    hists: np.ndarray, tags: list[FrameTag], size, seed: int, rates: dict[str, float]
) -> dict:
    """hists: [N, 12] pixel counts per image, in the order of `tags`."""
    total = hists.sum(0)
    share = total / total.sum()
    present = (hists > 0).sum(0)
    per_split = Counter(tag.split for tag in tags)
    per_condition = Counter(tag.condition for tag in tags)
    return {
        "n": len(tags),
        "size": list(size),
        "seed": seed,
        "splits": {name: per_split[name] for name in SPLITS},
        "sequences": len({tag.sequence for tag in tags}),
        "conditions": {
            name: {
                "rate": rate,
                "frames": per_condition[name],
                "share": per_condition[name] / len(tags),
            }
            for name, rate in rates.items()
        },
        "class_share": {name: float(share[k]) for k, name in enumerate(CAMVID_CLASSES)},
        "void_share": float(share[VOID]),
        "images_with": {name: int(present[k]) for k, name in enumerate(CAMVID_CLASSES)},
    }
