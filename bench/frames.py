"""Larger frames: engine throughput and peak memory at 180x240, 360x480 and 288x512, FP32 and INT8.

    .venv/bin/python bench/frames.py [--quick]

The shipped model's weights (`common.shipped_eager`) exported through the project's exporter
(`DEALGraph`, `export_graph`: contract 2, scores in the graph) at each input size; the attention
grid stays the model's (its `attention_size`), as `deal-export onnx --input-size` leaves it. Each
FP32 graph is quantized as `deal-export quantize` does (`--weight-bits auto`), calibrated on 64
street scenes of the training distribution rendered at that size. Per size, FP32 and INT8 run
in ONNX Runtime with 2 threads at batch 8, timed in alternation; peak memory is each model alone
in a fresh process (VmHWM after loading it and two batches of 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np
from common import (
    CACHE,
    SHIPPED_MODEL,
    alternate,
    feeds,
    markdown_table,
    median,
    mib,
    ort_session,
    run_probe,
    shipped_eager,
    write_result,
)

THREADS = 2
BATCH = 8
SIZES: tuple[tuple[int, int], ...] = ((180, 240), (360, 480), (288, 512))
WORK = CACHE / "frames"


def export_at(size: tuple[int, int]) -> Path:
    """The shipped model exported at `size` (cached until the shipped model changes)."""
    import torch

    from dealseg.core import contract
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.export.graph import DEALGraph
    from dealseg.export.onnx_export import export_graph

    path = WORK / f"model-{size[0]}x{size[1]}.onnx"
    if path.is_file() and path.stat().st_mtime > SHIPPED_MODEL.stat().st_mtime:
        return path
    shipped = read_onnx_spec(SHIPPED_MODEL)
    graph = DEALGraph(shipped_eager(size=size), shipped.bins).eval()
    with torch.inference_mode():
        out = dict(
            zip(
                contract.OUTPUT_NAMES,
                graph(torch.zeros(1, *size, 3, dtype=torch.uint8)),
                strict=True,
            )
        )
    spec = dataclasses.replace(
        shipped,
        input_size=size,
        segmentation_size=tuple(out["segmentation"].shape[1:]),
        difficulty_size=tuple(out["difficulty"].shape[1:]),
        contract_version=contract.CONTRACT_VERSION,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_graph(graph, spec, path, max_batch=16)
    return path


def quantized(model: Path, size: tuple[int, int]) -> tuple[Path, int]:
    """(the INT8 model of `model`, its weight bits), calibrated at `size` (cached)."""
    from quantize import render_pool

    from dealseg.export.quantize import quantize_model, resolve_weight_bits

    out = model.with_name(model.stem + "-int8.onnx")
    if out.is_file() and out.stat().st_mtime > model.stat().st_mtime:
        return out, resolve_weight_bits("auto")
    pool = render_pool(WORK / f"calibration_seed0_{size[0]}x{size[1]}", 0, 64, size)
    report = quantize_model(model, out, pool, count=64)
    return out, report.weight_bits


PROBE = """
import numpy as np, onnxruntime as ort
from dealseg.core.contract import model_inputs, session_spec
o = ort.SessionOptions()
o.intra_op_num_threads = {threads}
o.inter_op_num_threads = 1
s = ort.InferenceSession({path!r}, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).integers(0, 256, ({batch}, {h}, {w}, 3), dtype=np.uint8)
feed = model_inputs(session_spec(s), x)
for _ in range(2):
    s.run(None, feed)
print(peak_kib())
"""


def peak_kib(model: Path, size: tuple[int, int]) -> float:
    """VmHWM of a fresh process that loads `model` and runs two batches of 8."""
    code = PROBE.format(threads=THREADS, path=str(model), batch=BATCH, h=size[0], w=size[1])
    return float(run_probe(code).strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    args = parser.parse_args()
    reps = 2 if args.quick else 8

    rows, ratios = [], []
    for size in SIZES:
        fp32_path = export_at(size)
        int8_path, bits = quantized(fp32_path, size)
        sessions = {
            "fp32": ort_session(fp32_path, THREADS),
            "int8": ort_session(int8_path, THREADS),
        }
        x = np.random.default_rng(1).integers(0, 256, (BATCH, *size, 3), dtype=np.uint8)
        fed = feeds(sessions["fp32"], x)
        times = alternate(
            {k: lambda s=s, fed=fed: s.run(None, fed) for k, s in sessions.items()}, reps
        )
        del sessions
        rate = {k: BATCH / median(v) for k, v in times.items()}
        peak = {"fp32": peak_kib(fp32_path, size), "int8": peak_kib(int8_path, size)}
        megapixels = size[0] * size[1] / 1e6
        ratios.append(rate["int8"] / rate["fp32"])
        rows.append(
            [
                f"{size[0]}x{size[1]}",
                f"{rate['fp32']:.1f}",
                f"{rate['int8']:.1f} (w{bits})",
                f"{rate['int8'] / rate['fp32']:.2f}x",
                f"{rate['fp32'] * megapixels:.1f} / {rate['int8'] * megapixels:.1f}",
                f"{mib(peak['fp32'])} / {mib(peak['int8'])}",
                f"{fp32_path.stat().st_size / 1e6:.1f} / {int8_path.stat().st_size / 1e6:.1f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    notes = [
        "the shipped model's weights exported at each size (contract 2: valid_box input, "
        "scores in the graph), all contract outputs; the attention grid stays the model's "
        "30x40 at every size",
        f"ONNX Runtime, {THREADS} threads, batch {BATCH}, FP32 and INT8 alternated, medians of "
        f"{reps} repetitions; INT8: `quantize_model` with `--weight-bits auto` (w8 with VNNI, "
        "w7 without), calibrated on 64 generator scenes (seed 0) at that size",
        "peak memory: VmHWM of a fresh process that loads the model and runs two batches of 8 "
        "(Python, numpy and ONNX Runtime included)",
        "CPU only: this machine has no GPU, so GPU figures are not measured here",
    ]
    table = markdown_table(
        [
            "input HxW",
            "FP32 img/s",
            "INT8 img/s",
            "INT8 / FP32",
            "Mpixel/s FP32 / INT8",
            "peak MiB FP32 / INT8",
            "model MB FP32 / INT8",
        ],
        rows,
    )
    write_result("frames", "Larger frames: throughput and memory by input size", table, notes)


if __name__ == "__main__":
    main()
