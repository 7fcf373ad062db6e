"""Selection at scale: top-k over 10M scores, core-set over 100k embeddings, client memory.

    .venv/bin/python bench/selection.py [--quick]

1. `dealseg.core.ranking.pick_ranked(..., "de", k)` on pools of 1M and 10M random scores with real
   path strings (time vs pool size; target: 10M in <= 2 s).
2. `pick_ranked(..., "coreset", 100)` (greedy k-center, cosine) on 100k random unit
   embeddings, D=144.
3. Peak RSS of `deal-client score` (in-process ONNX Runtime, shipped model) on a pool of 1k and
   of 20k images (target: flat within 50 MB). The pool is a text file of distinct symlink names
   that point at a few real 960x720 JPEGs, so every image is really decoded and scored while
   the files stay few.
4. Peak RSS of `deal-client select --strategy de` on out dirs of 100k and 1M records (realistic
   scores.jsonl lines, 11 class fractions each): the memory a record costs when a pool's scores
   are read back for selection.
`--quick`: 1M scores, 10k embeddings, 200 vs 1000 images, 20k vs 200k records.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from common import CACHE, PYTHON, ROOT, markdown_table, write_result

CLIENT = str(Path(PYTHON).parent / "deal-client")


def synthetic_paths(n: int) -> list[str]:
    """`n` distinct, realistic-looking absolute paths."""
    return [f"/data/pool/cam{i % 8}/2024-06-{1 + i % 28:02d}/frame_{i:09d}.jpg" for i in range(n)]


def time_topk(n: int, ks: tuple[int, ...]) -> list[list[object]]:
    """Rows: pool size, k, seconds of pick_ranked(strategy "de")."""
    from dealseg.core.ranking import Pool, pick_ranked

    paths = synthetic_paths(n)
    de = np.random.default_rng(0).random(n, dtype=np.float32).astype(np.float64) * 2.0
    pool = Pool(paths, {"de": de})
    rows = []
    for k in ks:
        start = time.perf_counter()
        picks = pick_ranked(pool, "de", k)
        seconds = time.perf_counter() - start
        assert len(picks) == k and picks[0].score == de.max()
        rows.append([f"top-k (de), {n:,} scores", f"k={k:,}", f"{seconds:.2f}"])
    return rows


def time_coreset(n: int, d: int, k: int) -> list[object]:
    from dealseg.core.ranking import Pool, pick_ranked

    emb = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = Pool(synthetic_paths(n), {}, emb)
    start = time.perf_counter()
    picks = pick_ranked(pool, "coreset", k)
    seconds = time.perf_counter() - start
    assert len(picks) == k
    return [f"core-set, {n:,} embeddings (D={d})", f"k={k}", f"{seconds:.2f}"]


def symlink_pool(n: int, sources: list[Path]) -> Path:
    """A POOL text file of `n` distinct symlinks cycling over `sources`."""
    folder = CACHE / "selection" / "links"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = folder / f"img_{i:06d}.jpg"
        if not link.is_symlink():
            link.symlink_to(sources[i % len(sources)])
    listing = CACHE / "selection" / f"pool_{n}.txt"
    listing.write_text("".join(f"links/img_{i:06d}.jpg\n" for i in range(n)))
    return listing


# `deal-client` in a Python that writes its own peak RSS (VmHWM) to a file when it exits. Not
# ru_maxrss from wait4: a forked child is charged the parent's RSS at fork time.
CLIENT_WITH_PEAK = """
import atexit, os, re, sys
def _peak():
    status = open("/proc/self/status").read()
    with open(os.environ["DEAL_BENCH_PEAK"], "w") as f:
        f.write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(_peak)
from dealseg.client.cli import main
main(prog_name="deal-client")
"""


def run_client(args: list[str], peak_file: Path) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of one `deal-client ARGS` process."""
    peak_file.unlink(missing_ok=True)
    command = [PYTHON, "-c", CLIENT_WITH_PEAK, *args]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "DEAL_BENCH_PEAK": str(peak_file)},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"deal-client exited {done.returncode}: {done.stderr[-2000:]!r}")
    return int(peak_file.read_text()) / 1024, seconds


def client_peak(pool: Path, n: int) -> tuple[float, float]:
    """(peak RSS MiB, img/s) of one `deal-client score` process on `pool`."""
    out = CACHE / "selection" / f"out_{n}"
    shutil.rmtree(out, ignore_errors=True)
    peak, seconds = run_client(
        ["score", str(pool), "--top-k", "100", "--out", str(out), "--no-progress", "--json"],
        CACHE / "selection" / f"peak_{n}.txt",
    )
    return peak, n / seconds


def synthetic_out_dir(n: int, embedding_dim: int = 144) -> Path:
    """An out dir of `n` ok records as `deal-client score` writes them (embeddings sparse)."""
    from dealseg.client.outdir import FORMAT, META
    from dealseg.client.records import EMBEDDINGS, SCORES

    out = CACHE / "selection" / f"records_{n}"
    if (out / SCORES).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    with open(out / SCORES, "w") as f:
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            ds, de, ent = rng.random((3, stop - start))
            frac = rng.dirichlet(np.ones(11), stop - start)
            for i, path in enumerate(synthetic_paths(stop)[start:], start):
                j = i - start
                fractions = ", ".join(f"{v:.6f}" for v in frac[j])
                f.write(
                    f'{{"path": "{path}", "status": "ok", "error": null, "ds": {ds[j]!r}, '
                    f'"de": {2 * de[j]!r}, "entropy": {ent[j]!r}, "class_fraction": '
                    f'[{fractions}], "row": {i}, "model": "deal:1:bench"}}\n'
                )
    with open(out / EMBEDDINGS, "wb") as f:
        f.truncate(n * embedding_dim * 4)  # sparse: `de` selection never reads it
    meta = {
        "format": FORMAT,
        "model": "deal:1:bench",
        "embedding_dim": embedding_dim,
        "metadata": {},
    }
    (out / META).write_text(json.dumps(meta))
    return out


def select_peak(out: Path) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of one `deal-client select --strategy de` over `out`."""
    args = [
        "select",
        str(out),
        "--strategy",
        "de",
        "--top-k",
        "100",
        "--out",
        str(out.parent / f"{out.name}.selection"),
    ]
    return run_client(args, out.parent / f"{out.name}.peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller pools (a smoke run)")
    parser.add_argument(
        "--images",
        default=None,
        metavar="SMALL,LARGE",
        help="client pool sizes (default 1000,20000; --quick 200,1000)",
    )
    args = parser.parse_args()
    from pipeline import make_jpegs

    small, large = (200, 1000) if args.quick else (1000, 20_000)
    if args.images:
        small, large = (int(v) for v in args.images.split(","))
    sources = make_jpegs(50)
    peaks = {n: client_peak(symlink_pool(n, sources), n) for n in (small, large)}
    growth = peaks[large][0] - peaks[small][0]
    record_counts = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    reads = {n: select_peak(synthetic_out_dir(n)) for n in record_counts}
    (few, few_peak), (many, many_peak) = ((n, reads[n][0]) for n in record_counts)
    per_record = (many_peak - few_peak) * 2**20 / (many - few)

    sizes = (1_000_000,) if args.quick else (1_000_000, 10_000_000)
    rows: list[list[object]] = []
    for n in sizes:
        rows += time_topk(n, (100, 10_000))
    rows.append(time_coreset(10_000 if args.quick else 100_000, 144, 100))
    timing = markdown_table(["selection", "k", "seconds"], rows)
    memory = markdown_table(
        ["`deal-client score` (in-process ORT)", "peak RSS MiB", "img/s (wall)"],
        [[f"{n:,} images", f"{peak:.0f}", f"{rate:.1f}"] for n, (peak, rate) in peaks.items()],
    )
    reading = markdown_table(
        ["`deal-client select --strategy de`", "peak RSS MiB", "seconds"],
        [[f"{n:,} records", f"{peak:.0f}", f"{sec:.1f}"] for n, (peak, sec) in reads.items()],
    )
    top = [r for r in rows if str(r[0]).startswith("top-k") and "10,000,000" in str(r[0])]
    worst = max((float(str(r[2])) for r in top), default=float("nan"))
    notes = [
        "times are single runs of `dealseg.core.ranking.pick_ranked` on in-memory arrays with real "
        "path strings (ties broken by path); scores uniform random float32",
        "target top-k over 10M scores <= 2 s: "
        + (
            "not run (--quick)"
            if not top
            else f"{'met' if worst <= 2 else 'not met'} (slowest k: {worst:.2f} s)"
        ),
        f"client pool: distinct symlink names over {len(sources)} real 960x720 JPEGs (each "
        "decoded every time); peak RSS = the client process's own VmHWM at exit",
        f"target peak memory flat within 50 MB from {small:,} to {large:,} images: "
        f"{'met' if growth * 1.048576 <= 50 else 'not met'} (+{growth:.0f} MiB)",
        f"reading scores back for selection costs {per_record:.0f} bytes per record "
        f"({few:,} -> {many:,} records; the path string itself is about 100 of them)",
    ]
    write_result(
        "selection",
        "Selection at scale and client memory",
        timing + "\n\n" + memory + "\n\n" + reading,
        notes,
    )


if __name__ == "__main__":
    main()
