"""GPU: training and scoring figures on a CUDA host, in one command, in under 8 minutes.

    .venv/bin/python bench/gpu.py [--preset paper] [--steps 30] [--images 256]

1. Training: `--steps` optimiser steps of `fit`'s own step (`training.train.train_step`: the
   preset's model, SGD, DEAL loss) on a fixed batch of rendered street scenes at the preset's
   input size, in fp32 and in mixed precision (bf16 where the GPU has it, else fp16 with a loss
   scaler: `training.device.Runtime`); img/s after warm-up steps and peak CUDA memory.
2. Scoring `--images` rendered scenes at the shipped model's input size (the model alone: no
   decode), batches of 16: the shipped graph's model in eager PyTorch on CUDA
   (`export.reexport.eager_from_graph`, fp32) and the graph under ONNX Runtime's CUDA provider
   (when onnxruntime-gpu is installed); img/s, and DS / entropy max abs difference and the
   smallest embedding cosine against the same graph under ONNX Runtime on the CPU.
3. TensorRT (when `tensorrt` is installed): an engine of the shipped graph built for batches
   1/8/16 in FP32 and with FP16 kernels (`deal-export tensorrt`'s builder): build seconds,
   img/s at batch 16, and the same parity figures.

Each part that cannot run says why in its row. The table and the host (GPU name, driver, CUDA,
CPU) go to bench/results/gpu.md. On a host without CUDA it prints one line and exits 0 at
once: there is nothing to measure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import SHIPPED_MODEL, markdown_table, write_result

BATCH = 16
WARMUP = 5


def cuda_host() -> str | None:
    """A one-line description of the CUDA device, or None where there is none."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute {props.major}.{props.minor}),"
        f" CUDA {torch.version.cuda}, torch {torch.__version__}"
    )


def street_batch(n: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[n, H, W, 3] uint8 rendered street scenes and their [n, H, W] labels."""
    from dealseg.training.streets.render import render_scene

    pairs = [render_scene(np.random.default_rng([seed, i]), size) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def timed(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of `fn` after WARMUP calls, CUDA synchronised around the timing."""
    import torch

    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


# ------------------------------------------------------------------------------ training
def training_rows(preset_name: str, steps: int) -> list[list[str]]:
    """fp32 and mixed-precision training img/s and peak memory of the preset."""
    import torch

    from dealseg.training.config import PRESETS
    from dealseg.training.device import Runtime
    from dealseg.training.model import DEALNet
    from dealseg.training.train import make_optimizer, train_step

    preset = PRESETS[preset_name]
    cfg, train_cfg = preset.model, preset.train
    images, labels = street_batch(train_cfg.batch_size, cfg.input_size, seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W] 0..1
    y = torch.from_numpy(labels).long()
    y[y >= cfg.num_classes] = 255  # void
    rows = []
    for amp in (False, True):
        runtime = Runtime.for_device("cuda", amp=amp, workers=0)
        model = DEALNet(cfg, pretrained=train_cfg.pretrained).to(runtime.device).train()
        optimizer, scaler = make_optimizer(model, train_cfg), runtime.grad_scaler()
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(
            lambda m=model, o=optimizer, s=scaler, r=runtime: train_step(
                m, o, s, r, train_cfg, x, y
            ),
            steps,
        )
        peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append(
            [
                f"train {preset_name} ({runtime.precision})",
                f"{train_cfg.batch_size / seconds:.1f}",
                f"{peak:.0f}",
                f"{steps} steps of batch {train_cfg.batch_size} at {cfg.input_size}",
            ]
        )
        del model, optimizer
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------ scoring
def parity(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    """DS and entropy max abs differences and the smallest embedding cosine, as one cell."""
    ds = np.abs(got["ds"] - ref["ds"]).max()
    ent = np.abs(got["entropy"] - ref["entropy"]).max()
    cos = (got["embedding"] * ref["embedding"]).sum(1).min()
    return f"DS {ds:.1e}, entropy {ent:.1e}, embedding cos {cos:.5f}"


def scoring_rows(images: np.ndarray) -> list[list[str]]:
    """Eager CUDA and ORT CUDA img/s on `images`, with parity against ORT on the CPU."""
    import onnxruntime as ort
    import torch

    from dealseg.core import contract
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.export.graph import DEALGraph
    from dealseg.export.reexport import eager_from_graph

    spec = read_onnx_spec(SHIPPED_MODEL)
    names = list(contract.SCORE_OUTPUTS)
    batches = [images[i : i + BATCH] for i in range(0, len(images) - BATCH + 1, BATCH)]
    cpu = ort.InferenceSession(str(SHIPPED_MODEL), providers=["CPUExecutionProvider"])
    ref = dict(zip(names, cpu.run(names, contract.model_inputs(spec, batches[0])), strict=True))
    rows = []

    graph = DEALGraph(eager_from_graph(SHIPPED_MODEL), spec.bins).eval().cuda()
    on_gpu = [torch.from_numpy(b).cuda() for b in batches]

    @torch.inference_mode()
    def eager_pass() -> None:
        for b in on_gpu:
            graph(b)

    torch.cuda.reset_peak_memory_stats()
    seconds = timed(eager_pass, 3)
    with torch.inference_mode():
        out = [t.float().cpu().numpy() for t in graph(on_gpu[0])]
    got = dict(zip(contract.OUTPUT_NAMES, out, strict=True))
    peak = torch.cuda.max_memory_allocated() / 2**20
    rows.append(
        [
            "score, eager PyTorch CUDA (fp32)",
            f"{len(images) / seconds:.1f}",
            f"{peak:.0f}",
            parity(got, ref),
        ]
    )

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        rows.append(["score, ONNX Runtime CUDA", "skipped", "", "onnxruntime-gpu not installed"])
        return rows
    session = ort.InferenceSession(
        str(SHIPPED_MODEL), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    feeds = [contract.model_inputs(spec, b) for b in batches]
    seconds = timed(lambda: [session.run(names, f) for f in feeds], 3)
    got = dict(zip(names, session.run(names, feeds[0]), strict=True))
    rows.append(["score, ONNX Runtime CUDA", f"{len(images) / seconds:.1f}", "", parity(got, ref)])
    return rows


def tensorrt_rows(images: np.ndarray) -> list[list[str]]:
    """TensorRT engines of the shipped graph (FP32, FP16 kernels): build time, img/s, parity."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return [["TensorRT engine", "skipped", "", "tensorrt not installed (dealseg[gpu])"]]
    from dealseg.core import contract
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.export.tensorrt import (
        BatchProfile,
        build_engine,
        parity_vs_onnxruntime,
        run_engine,
    )

    spec = read_onnx_spec(SHIPPED_MODEL)
    feeds = contract.model_inputs(spec, images[:BATCH])
    rows = []
    with tempfile.TemporaryDirectory(prefix="dealseg-gpu-") as tmp:
        for fp16 in (False, True):
            plan = Path(tmp) / f"model-{'fp16' if fp16 else 'fp32'}.plan"
            start = time.perf_counter()
            build_engine(SHIPPED_MODEL, plan, BatchProfile(1, 8, BATCH), fp16=fp16)
            built = time.perf_counter() - start
            seconds = timed(lambda p=plan: run_engine(p, feeds), 10)
            diff = parity_vs_onnxruntime(plan, SHIPPED_MODEL, images[:BATCH])
            rows.append(
                [
                    f"score, TensorRT {'FP16' if fp16 else 'FP32'} (built in {built:.0f} s)",
                    f"{BATCH / seconds:.1f}",
                    "",
                    f"DS {diff['ds']:.1e}, entropy {diff['entropy']:.1e}, embedding cos "
                    f"{diff['embedding_min_cosine']:.5f}",
                ]
            )
    return rows


def guarded(part: str, fn: Callable[[], list[list[str]]]) -> list[list[str]]:
    """`fn`'s rows, or one row saying why the part failed (the other parts still run)."""
    try:
        return fn()
    except Exception as exc:  # a part's failure is a result of the run, not its end
        return [[part, "failed", "", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper", help="training preset (training/config.py)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per precision")
    parser.add_argument("--images", type=int, default=256, help="images scored per pass")
    args = parser.parse_args(argv)
    host = cuda_host()
    if host is None:
        print("bench/gpu.py: no CUDA device on this host; nothing measured (run it on a GPU host)")
        return 0
    from dealseg.core.modelfile import read_onnx_spec

    start = time.perf_counter()
    images, _ = street_batch(args.images, read_onnx_spec(SHIPPED_MODEL).input_size)
    rows: list[Any] = []
    rows += guarded("train", lambda: training_rows(args.preset, args.steps))
    rows += guarded("score", lambda: scoring_rows(images))
    rows += guarded("TensorRT engine", lambda: tensorrt_rows(images))
    table = markdown_table(["case", "img/s", "peak CUDA MiB", "notes / parity vs ORT CPU"], rows)
    write_result(
        "gpu",
        "GPU: training and scoring on CUDA",
        table,
        [
            f"GPU: {host}",
            f"scoring: {args.images} rendered scenes, batches of {BATCH}, the model alone "
            "(no decode); parity on the first batch against the shipped graph under ONNX "
            "Runtime on the CPU",
            f"whole run {time.perf_counter() - start:.0f} s",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
