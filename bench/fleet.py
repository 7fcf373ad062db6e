"""Fleet: `deal-client score --ray` vs the single-process client on one machine; selection over
many Parquet rows vs the JSONL reader.

    .venv/bin/python bench/fleet.py [--quick] [--count N] [--rows N] [--sweep]

1. N street JPEGs at 960x720 (bench/pipeline.py's, cached), scored with the shipped model and
   the embedded engine, in alternation: `deal-client score POOL --format parquet` (one process,
   ONNX Runtime on every core) and `deal-client score POOL --ray` on a local Ray cluster with 1
   actor (2 CPUs: 2 ONNX Runtime threads) and with 2 actors (1 CPU: 1 thread each), each actor
   decoding its own paths (client/fleet.py). Rates are the clients' own img/s (scoring,
   without start-up: process, model, Ray cluster) and wall-clock img/s; peak memory is the
   largest RSS of any one process of the run and the sum over its process tree (sampled every
   0.1 s from /proc). Target: Ray >= 80% of the single process.
   Then the same through the bundled Triton server (python-cpu, 2 ONNX Runtime threads, started
   once): the client over gRPC, over gRPC with the tensors in shared memory (`--shm`), and the
   Ray path with 2 actors holding Triton clients.
2. Out dirs of N synthetic records (realistic paths, 11 class shares, 64-d embeddings) as
   scores.jsonl and scores.parquet; seconds and peak RSS of `load_table` + top-100 by DE in a
   fresh process for each.
`--quick`: 60 images, 100k rows. `--sweep`: part 1's Ray path over block sizes and calls per
actor (1 actor x 2 CPUs) against the single process, to bench/results/fleet-blocks.md.
`--s3-out`: the single process, the Ray path (1 actor x 2 CPUs) into a local out dir and the
same into `--out s3://` on moto's S3 server started on loopback (the dev extra), in alternation,
to bench/results/fleet-s3.md; the server shares the machine's cores, where a real store would
not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import (
    CACHE,
    PYTHON,
    markdown_table,
    mib,
    process_tree,
    run_probe,
    status_kib,
    write_result,
)
from pipeline import CLIENT, make_jpegs, pool_file

_RATE = re.compile(r"scored, .* ([0-9.]+) s \(([0-9.]+) img/s\)")
TRITON_CASES = {  # URL filled in once the server is up
    "triton, gRPC": ["--url", "{url}"],
    "triton, gRPC + --shm": ["--url", "{url}", "--shm"],
    "ray, 2 actors x 0.5 CPU -> triton": [
        "--url",
        "{url}",
        "--ray",
        "--actors",
        "2",
        "--cpus-per-actor",
        "0.5",
    ],
}
CASES = {
    "single process": [],
    "ray, 1 actor x 2 CPU": ["--ray", "--actors", "1", "--cpus-per-actor", "2"],
    "ray, 2 actors x 1 CPU": ["--ray", "--actors", "2", "--cpus-per-actor", "1"],
}
# `--sweep`: the Ray path's block size (paths per actor call) and calls per actor, 1 actor x 2
# CPUs, against the single process, in alternation (client/fleet.py takes the best).
SWEEP = [(256, 2), (512, 2), (1024, 1), (1024, 2)]
RAY_ONE = CASES["ray, 1 actor x 2 CPU"]
RAY_TWO = CASES["ray, 2 actors x 1 CPU"]


def _tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) RSS in KiB of `root` and its descendants, from /proc."""
    sizes = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            sizes.append(status_kib(pid, "VmRSS"))
    return sum(sizes), max(sizes, default=0)


def scored(
    pool: Path, n: int, out: Path, extra: list[str], blocks: tuple[int, int] | None = None
) -> dict[str, float]:
    """One `deal-client score` run: its img/s, wall-clock img/s and peak memory. `blocks`:
    the Ray path's (BLOCK_PATHS, CALLS_PER_ACTOR) instead of client/fleet.py's."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["score", str(pool), "-k", "10", "-o", str(out), "--no-progress"]
    args += ["--format", "parquet", *extra]
    command = [CLIENT, *args]
    if blocks is not None:
        command = [
            PYTHON,
            "-c",
            "import sys, dealseg.client.fleet as f; from dealseg.client.cli import main; "
            f"f.BLOCK_PATHS, f.CALLS_PER_ACTOR = {blocks}; sys.exit(main(sys.argv[1:]))",
            *args,
        ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"sum": 0, "max": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            total, largest = _tree_rss(proc.pid)
            peak["sum"], peak["max"] = max(peak["sum"], total), max(peak["max"], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    match = _RATE.search(err)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{err[-2000:]}")
    return {"rate": float(match.group(2)), "wall": n / wall, **peak}


def sweep(pool: Path, count: int, reps: int) -> None:
    """Ray img/s for each (block paths, calls per actor) of SWEEP, with the single process in
    the same alternation."""
    cases: dict[str, tuple[list[str], tuple[int, int] | None]] = {"single process": ([], None)}
    for block, calls in SWEEP:
        cases[f"ray, blocks of {block}, {calls} call(s) per actor"] = (RAY_ONE, (block, calls))
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, (extra, blocks) in cases.items():
            out = CACHE / "fleet" / "out" / re.sub(r"\W+", "_", name)
            rates[name].append(scored(pool, count, out, extra, blocks)["rate"])
    base = float(np.median(rates["single process"]))
    table = markdown_table(
        ["run", "img/s (scoring)", "vs single"],
        [[n, f"{np.median(r):.2f}", f"{np.median(r) / base:.0%}"] for n, r in rates.items()],
    )
    notes = [
        f"{count} JPEGs at 960x720, shipped model, batch 8, {reps} alternation(s); Ray: 1 actor "
        "x 2 CPUs, a local cluster started by each run"
    ]
    write_result("fleet", "Fleet: the Ray path's block size", table, notes, "fleet-blocks")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[None]:
    """moto's S3 server on a free loopback port with `bucket` made, its address and keys in
    this process's environment (the clients started from here inherit them)."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # a failure guard: we poll for the port
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start (pip install 'moto[server]')")
            time.sleep(0.1)
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
        os.environ.update(env)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def s3_out(pool: Path, count: int, reps: int) -> None:
    """The single process, the Ray path into a local out dir and into s3://, in alternation."""
    cases = {
        "single process, local out": [],
        "ray, 1 actor x 2 CPU, local out": RAY_ONE,
        "ray, 1 actor x 2 CPU, --out s3://": [*RAY_ONE, "--out", "s3://bench/fleet-{rep}"],
        "ray, 2 actors x 1 CPU, --out s3://": [*RAY_TWO, "--out", "s3://bench/fleet2-{rep}"],
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    picked: set[bytes] = set()  # every run's selection.txt
    with s3_server("bench"):
        import boto3

        bucket = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        for rep in range(reps):
            for name, extra in cases.items():
                out = CACHE / "fleet" / "out" / re.sub(r"\W+", "_", name)
                command = [a.format(rep=rep) for a in extra]  # the last --out counts
                results[name].append(scored(pool, count, out, command))
                if "s3://" in name:
                    prefix = command[-1].removeprefix("s3://bench/")
                    got = bucket.get_object(Bucket="bench", Key=f"{prefix}/selection.txt")
                    picked.add(got["Body"].read())
                else:
                    picked.add((out / "selection.txt").read_bytes())
    base = float(np.median([r["rate"] for r in results["single process, local out"]]))
    rows = []
    for name, runs in results.items():
        rate = float(np.median([r["rate"] for r in runs]))
        wall = float(np.median([r["wall"] for r in runs]))
        rows.append([name, f"{rate:.2f}", f"{rate / base:.0%}", f"{wall:.2f}"])
    table = markdown_table(["run", "img/s (scoring)", "vs single", "img/s (wall)"], rows)
    notes = [
        f"{count} JPEGs at 960x720, shipped model, batch 8, {reps} alternation(s); Ray: a local "
        "cluster started by each run; s3://: moto's server on loopback, on the same cores",
        "img/s (scoring): the client's own rate (Ray: from the actors' engines being up, to the "
        "parts written); wall: the whole command, selection from the bucket included",
        "top-10 selection.txt of every run: "
        + ("the same, byte for byte" if len(picked) == 1 else f"{len(picked)} different files"),
    ]
    write_result("fleet", "Fleet: the Ray path into object storage", table, notes, "fleet-s3")


def selection_rows(n: int) -> list[list[object]]:
    """Seconds and peak RSS of reading N records and selecting the top 100 by DE, per format."""
    folder = CACHE / "fleet" / f"records_{n}"
    stamp = folder / "complete"  # holds the Parquet columns of the records it was made with
    columns = ",".join(parquet_columns())
    if not stamp.exists() or stamp.read_text() != columns:
        shutil.rmtree(folder, ignore_errors=True)
        synthesize(folder, n)
        stamp.write_text(columns)
    rows = []
    for fmt in ("jsonl", "parquet"):
        code = f"""
import time
from pathlib import Path
from dealseg.client.selection import pick
from dealseg.client.settings import SelectSettings
from dealseg.client.outdir import load_table
reset_peak()
start = time.perf_counter()
table = load_table(Path({str(folder / fmt)!r}))
chosen, _ = pick(table, SelectSettings("de", 100))
print(time.perf_counter() - start, peak_kib(), len(table), len(chosen.picks))
"""
        seconds, peak, count, picked = run_probe(code, timeout=1800).split()
        assert int(count) == n and int(picked) == 100
        rows.append([f"{fmt}, {n:,} records", f"{float(seconds):.2f}", mib(float(peak))])
    return rows


def parquet_columns() -> list[str]:
    """The columns the client's Parquet rows have today (for the shipped model)."""
    from common import SHIPPED_MODEL

    from dealseg.client.engines import EmbeddedEngine
    from dealseg.client.parquet import rows_table

    spec = EmbeddedEngine(SHIPPED_MODEL).spec
    empty = np.zeros((0, spec.embedding_dim), np.float32)
    return rows_table([], empty, spec.class_names, spec.embedding_dim, "bench").column_names


def synthesize(folder: Path, n: int) -> None:
    """The same N random records as an out dir of each format (the shipped model's classes and
    embedding size)."""
    import pyarrow.parquet as pq
    from common import SHIPPED_MODEL

    from dealseg.client.engines import EmbeddedEngine
    from dealseg.client.jsonl import record_line
    from dealseg.client.outdir import write_meta
    from dealseg.client.parquet import PART_ROWS, rows_table
    from dealseg.client.records import EMBEDDINGS, SCORES

    spec = EmbeddedEngine(SHIPPED_MODEL).spec
    rng = np.random.default_rng(0)
    names, d = spec.class_names, spec.embedding_dim
    for fmt in ("jsonl", "parquet"):
        (folder / fmt).mkdir(parents=True, exist_ok=True)
        write_meta(folder / fmt, spec)
    (folder / "parquet" / "scores.parquet").mkdir(exist_ok=True)
    with (
        open(folder / "jsonl" / SCORES, "wb") as fs,
        open(folder / "jsonl" / EMBEDDINGS, "wb") as fe,
    ):
        for start in range(0, n, PART_ROWS):
            m = min(PART_ROWS, n - start)
            shares = rng.dirichlet(np.ones(len(names)), m)
            emb = rng.standard_normal((m, d)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            records = [
                {
                    "path": f"/data/pool/cam{i % 8}/2026-12-{1 + i % 28:02d}/frame_{i:09d}.jpg",
                    "status": "ok",
                    "error": None,
                    "ds": float(rng.random()),
                    "de": float(rng.random() * 2),
                    "entropy": float(rng.random()),
                    "class_fraction": {
                        c: round(float(v), 6) for c, v in zip(names, s, strict=True)
                    },
                    "row": i,
                    "model": spec.model_id,
                }
                for i, s in zip(range(start, start + m), shares, strict=True)
            ]
            fs.write(b"".join(record_line(r) for r in records))
            fe.write(emb.astype("<f4").tobytes())
            table = rows_table(records, emb, names, d, "bench")
            pq.write_table(
                table, folder / "parquet" / "scores.parquet" / f"000001-bench-{start:09d}.parquet"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 images, 100k rows")
    parser.add_argument("--count", type=int, default=None, help="JPEGs (default 400)")
    parser.add_argument("--rows", type=int, default=None, help="records (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=1, help="alternations of the cases")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="the Ray path's block size and calls per actor (bench/results/fleet-blocks.md)",
    )
    parser.add_argument(
        "--s3-out",
        action="store_true",
        help="the Ray path into --out s3:// on moto's server (bench/results/fleet-s3.md)",
    )
    parser.add_argument(
        "--selection-only",
        action="store_true",
        help="part 2 only (bench/results/fleet-selection.md)",
    )
    args = parser.parse_args()
    count = args.count or (60 if args.quick else 400)
    rows_n = args.rows or (100_000 if args.quick else 1_000_000)
    if args.selection_only:
        table = markdown_table(
            ["scores read", "load + top-100 (s)", "peak RSS MiB"], selection_rows(rows_n)
        )
        write_result(
            "fleet", "Fleet: selection over Parquet vs JSONL", table, [], "fleet-selection"
        )
        return

    pool = pool_file(make_jpegs(count), f"fleet_{count}")
    if args.sweep:
        sweep(pool, count, args.reps)
        return
    if args.s3_out:
        s3_out(pool, count, args.reps)
        return
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
    for _ in range(args.reps):
        for name, extra in CASES.items():
            out = CACHE / "fleet" / "out" / re.sub(r"\W+", "_", name)
            results[name].append(scored(pool, count, out, extra))
    from common import python_cpu_server

    server = python_cpu_server("fleet").start()
    try:
        for _ in range(args.reps):
            for name, extra in TRITON_CASES.items():
                out = CACHE / "fleet" / "out" / re.sub(r"\W+", "_", name)
                command = [a.format(url=server.url_grpc) for a in extra]
                results.setdefault(name, []).append(scored(pool, count, out, command))
    finally:
        server.stop()
    base = float(np.median([r["rate"] for r in results["single process"]]))
    table = []
    for name, runs in results.items():
        rate = float(np.median([r["rate"] for r in runs]))
        wall = float(np.median([r["wall"] for r in runs]))
        table.append(
            [
                name,
                f"{rate:.2f}",
                f"{rate / base:.0%}",
                f"{wall:.2f}",
                mib(max(r["max"] for r in runs)),
                mib(max(r["sum"] for r in runs)),
            ]
        )
    scoring = markdown_table(
        [
            "run",
            "img/s (scoring)",
            "vs single",
            "img/s (wall)",
            "peak MiB, one process",
            "peak MiB, all processes",
        ],
        table,
    )
    select = markdown_table(
        ["scores read", "load + top-100 (s)", "peak RSS MiB"], selection_rows(rows_n)
    )
    notes = [
        f"{count} JPEGs at 960x720, shipped model, batch 8, "
        f"{args.reps} alternation(s); Ray 2.60.0 local cluster started by each run",
        "img/s (scoring): the client's own rate, from the first image to the last (Ray: from "
        "the cluster being up); wall: the whole command, process and cluster start included",
    ]
    write_result(
        "fleet",
        "Fleet: the Ray path vs one process; selection over Parquet",
        f"{scoring}\n\n{select}",
        notes,
    )


if __name__ == "__main__":
    main()
