"""Regions: what `score --regions` costs over frame scoring, one run.

    .venv/bin/python bench/regions.py [--quick] [--count N] [--reps R]

Renders N street frames at the shipped model's input size (the street generator, a seed the
model never saw; cached under /tmp/dealseg-bench), then scores the same pool in-process with the
shipped model, in alternation, into fresh out dirs:

    frames    `score POOL -k 10` (scores, selection)
    regions   `score POOL --regions 2%` (also each frame's 12x12 cells, their mean
              difficulty and entropy and the class predicted on most of each, and the region
              selection with its masks)

Each run's rate is the scorer's own img/s (no process start or model load), and the wall time
of the whole call (selection and masks included). Target: regions <= 1.3x the time of frames.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import CACHE, PYTHON, SHIPPED_MODEL, markdown_table, median, write_result

SEED = 23  # a street seed the shipped model never saw
CLIENT = str(Path(PYTHON).parent / "deal-client")
_RATE = re.compile(r"scored, .* ([0-9.]+) s \(([0-9.]+) img/s\)")


def make_pool(count: int) -> Path:
    from PIL import Image

    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.training.streets.render import render_scene

    size = read_onnx_spec(SHIPPED_MODEL).input_size
    folder = CACHE / f"regions-{count}-{size[0]}x{size[1]}"
    if len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = render_scene(np.random.default_rng([SEED, i]), tuple(size))
        Image.fromarray(image).save(folder / f"f{i:05d}.png")
    return folder


def run(pool: Path, *args: str) -> tuple[float, float]:
    """(scorer img/s, wall seconds) of one `deal-client score` into a fresh out dir."""
    import time

    out = Path(tempfile.mkdtemp(prefix="dealseg-bench-regions-"))
    try:
        start = time.perf_counter()
        done = subprocess.run(
            [CLIENT, "score", str(pool), "--out", str(out), "--no-progress", *args],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode not in (0, 3):
            raise SystemExit(done.stderr)
        match = _RATE.search(done.stderr)
        if match is None:
            raise SystemExit(f"no rate in: {done.stderr}")
        return float(match.group(2)), wall
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 frames, 2 reps")
    args = parser.parse_args()
    count, reps = (100, 2) if args.quick else (args.count, args.reps)
    pool = make_pool(count)
    cases = {"frames": ("-k", "10"), "regions": ("--regions", "2%")}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    walls: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, extra in cases.items():
            rate, wall = run(pool, *extra)
            rates[name].append(rate)
            walls[name].append(wall)
    base_rate, base_wall = median(rates["frames"]), median(walls["frames"])
    rows = [
        [
            name,
            f"{median(rates[name]):.1f}",
            f"{base_rate / median(rates[name]):.2f}x",
            f"{median(walls[name]):.1f}",
            f"{median(walls[name]) / base_wall:.2f}x",
        ]
        for name in cases
    ]
    body = markdown_table(
        ["run", "scorer img/s", "scoring time ÷ frames", "wall s (with selection)", "÷ frames"],
        rows,
    )
    notes = [
        f"{count} street frames at the shipped model's input size, {reps} alternated runs "
        "each, medians; in-process ONNX Runtime, the CLI's defaults (batch 8, 4 decode "
        "threads, 2 requests in flight)",
        "regions: the difficulty and entropy maps and the segmentation are asked of the "
        "graph beside the scores; each frame's 300 cells are averaged over both maps and "
        "given their most-predicted class on the inference threads; the selection draws a "
        "16-bit mask per frame with bought regions",
        "target: regions <= 1.3x the time of frame scoring",
    ]
    write_result("regions", "Scoring with regions vs frames", body, notes)


if __name__ == "__main__":
    main()
