"""Pipeline: `deal-client score` through Triton and in-process vs the bare engine, one run.

    .venv/bin/python bench/pipeline.py [--quick] [--count N] [--reps R]

Makes N street-scene JPEGs at 960x720 (rendered by the synthetic street generator at that size,
cached under /tmp/dealseg-bench), then times, in alternation:

    bare      EmbeddedEngine.infer on pre-decoded arrays, batches of 8, score outputs only
    embedded  `deal-client score POOL` (decode threads + in-process ONNX Runtime + writing)
    triton    `deal-client score POOL --url ...` against the real bundled tritonserver
              (python-cpu repository, 2 ORT threads, loopback ports; started once, stopped at
              the end)

The clients' rates are their own "img/s" (scoring only: no process start or model load); the
wall-clock rates including those are shown beside them. Target: triton >= 85% of bare.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CACHE,
    PYTHON,
    ROOT,
    SHIPPED_MODEL,
    markdown_table,
    median,
    python_cpu_server,
    write_result,
)

JPEG_SIZE = (720, 960)  # (H, W) of the generated camera frames
JPEG_SEED = 11  # a seed the shipped model never saw
BATCH = 8
CLIENT = str(Path(PYTHON).parent / "deal-client")
_RATE = re.compile(r"scored, .* ([0-9.]+) s \(([0-9.]+) img/s\)")


def _render_jpeg(job: tuple[Path, int]) -> None:
    from PIL import Image

    from dealseg.training.streets.render import render_scene

    path, index = job
    image, _ = render_scene(np.random.default_rng([JPEG_SEED, index]), JPEG_SIZE)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(image).save(tmp, "JPEG", quality=90)
    tmp.replace(path)


def make_jpegs(count: int, workers: int = 2) -> list[Path]:
    """`count` street JPEGs at 960x720, rendered once and cached."""
    folder = CACHE / f"streets_{JPEG_SIZE[1]}x{JPEG_SIZE[0]}_seed{JPEG_SEED}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"street_{i:05d}.jpg" for i in range(count)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        print(f"rendering {len(todo)} JPEGs at {JPEG_SIZE[1]}x{JPEG_SIZE[0]} into {folder} ...")
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_render_jpeg, todo, chunksize=8)
    return paths


def pool_file(paths: list[Path], name: str) -> Path:
    """A text-file POOL listing `paths` (absolute)."""
    out = CACHE / "pipeline" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{p}\n" for p in paths))
    return out


def decoded(paths: list[Path]) -> tuple[Any, np.ndarray]:
    """The in-process engine and `paths` decoded to its input size (done once, not timed)."""
    from dealseg.client.engines import EmbeddedEngine
    from dealseg.core.decode import decode_image

    engine = EmbeddedEngine(SHIPPED_MODEL)
    return engine, np.stack([decode_image(str(p), engine.spec.input_size) for p in paths])


def bare_engine(engine: Any, images: np.ndarray) -> float:
    """img/s of the engine alone on images decoded beforehand, batches of 8."""
    from dealseg.core.contract import SCORE_OUTPUTS

    engine.infer(images[:BATCH], SCORE_OUTPUTS)  # warm-up
    start = time.perf_counter()
    for s in range(0, len(images), BATCH):
        engine.infer(images[s : s + BATCH], SCORE_OUTPUTS)
    return len(images) / (time.perf_counter() - start)


def client_run(pool: Path, n: int, out: Path, extra: list[str]) -> tuple[float, float]:
    """(scoring img/s as the client reports it, wall-clock img/s) of one `deal-client score`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        CLIENT,
        "score",
        str(pool),
        "--top-k",
        "10",
        "--out",
        str(out),
        "--no-progress",
        "--json",
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    match = _RATE.search(done.stderr)
    if not match:
        raise RuntimeError(f"no rate in the client's summary:\n{done.stderr[-2000:]}")
    return float(match.group(2)), n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 images, one repetition")
    parser.add_argument("--count", type=int, default=None, help="JPEGs (default 1000)")
    parser.add_argument("--reps", type=int, default=None, help="alternations (default 2)")
    args = parser.parse_args()
    count = args.count or (100 if args.quick else 1000)
    reps = args.reps or (1 if args.quick else 2)

    paths = make_jpegs(count)
    pool = pool_file(paths, f"pool_{count}")
    engine, images = decoded(paths)
    server = python_cpu_server("pipeline").start()
    rates: dict[str, list[tuple[float, float]]] = {"bare": [], "embedded": [], "triton": []}
    try:
        url = server.url_grpc
        for rep in range(reps):
            bare = bare_engine(engine, images)
            rates["bare"].append((bare, bare))
            out = CACHE / "pipeline" / "out"
            rates["embedded"].append(client_run(pool, count, out, []))
            rates["triton"].append(client_run(pool, count, out, ["--url", url]))
            print(
                f"rep {rep + 1}/{reps}: "
                + ", ".join(f"{k} {v[-1][0]:.1f} img/s" for k, v in rates.items())
            )
    finally:
        server.stop()
    bare = median([r[0] for r in rates["bare"]])
    labels = {
        "bare": "bare engine (ORT, pre-decoded arrays, batch 8)",
        "embedded": "`deal-client score` in-process (ORT)",
        "triton": "`deal-client score --url` via Triton (gRPC, python-cpu)",
    }
    rows = []
    for name, values in rates.items():
        scoring, wall = median([v[0] for v in values]), median([v[1] for v in values])
        rows.append(
            [
                labels[name],
                f"{scoring:.1f}",
                "" if name == "bare" else f"{wall:.1f}",
                f"{100 * scoring / bare:.0f}%",
            ]
        )
    triton = median([v[0] for v in rates["triton"]])
    ratio = triton / bare
    notes = [
        f"{count} JPEGs {JPEG_SIZE[1]}x{JPEG_SIZE[0]} (street scenes, seed {JPEG_SEED}, quality "
        f"90), scored at the model's 180x240; client defaults (batch 8, concurrency 2, 4 decode "
        f"workers); medians of {reps} alternated repetition(s)",
        "scoring img/s: the client's own summary (pool scan, model load and process start "
        "excluded); wall img/s: the whole command",
        f"target client-through-Triton >= 85% of the bare engine: "
        f"{'met' if ratio >= 0.85 else 'not met'} ({100 * ratio:.0f}%)",
    ]
    table = markdown_table(["path", "scoring img/s", "wall img/s", "vs bare engine"], rows)
    write_result("pipeline", "Pipeline: deal-client vs the bare engine", table, notes)


if __name__ == "__main__":
    main()
