"""Engine: PyTorch eager vs the exported graph in ONNX Runtime, and how close to the CPU's limit.

    .venv/bin/python bench/engine.py [--quick]

Both engines run the whole exported computation (uint8 image in, every contract output out) with
2 threads at the shipped model's input size, batch 1 and 8, timed in alternation. FLOPs per image
are counted on the eager graph (torch's FlopCounterMode: convolutions and matmuls, 2 per
multiply-add). The ceiling is this machine's measured ONNX Runtime throughput on one large dense
3x3 convolution (256 -> 256 channels, 64x64, batch 8). Because the shipped model is built from
depthwise-separable blocks, depthwise ceilings are measured too (the same tensor, and the best of
the model's own depthwise layer shapes): a depthwise conv does 9 (or 25) multiply-adds per value
it reads, so it is bound by memory, not by FMAs. Ceilings are the Conv kernel's time from ORT's
profiler (a lone NCHW conv gets layout reorders that the model hoists out), timed in alternation
with the whole model at batch 8. ORT's profiler then splits the model's time by kernel kind.
"""

from __future__ import annotations

import argparse
import os

# The alternated engines must not spin on each other's cores: torch's OpenMP threads sleep when
# idle (set before torch is imported), ORT's are told so in common.ort_session.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CACHE,
    CHECKPOINT,
    ROOT,
    SHIPPED_MODEL,
    alternate,
    feeds,
    markdown_table,
    median,
    ort_session,
    profile_events,
    shipped_eager,
    write_result,
)

from dealseg.core import contract

THREADS = 2


@dataclass(frozen=True)
class ConvShape:
    """One convolution layer as timed alone: [batch, cin, h, w] -> cout, k x k."""

    cin: int
    cout: int
    groups: int
    k: int
    h: int
    w: int
    stride: int = 1
    dilation: int = 1
    batch: int = 8

    def flops(self) -> float:
        ho, wo = -(-self.h // self.stride), -(-self.w // self.stride)
        return 2.0 * self.batch * self.cout * (self.cin // self.groups) * self.k**2 * ho * wo

    def label(self) -> str:
        kind = "depthwise" if self.groups == self.cin > 1 else "dense"
        extra = f", stride {self.stride}" if self.stride > 1 else ""
        extra += f", dilation {self.dilation}" if self.dilation > 1 else ""
        return (
            f"{kind} {self.k}x{self.k}, {self.cin}->{self.cout} ch, {self.h}x{self.w}{extra}, "
            f"batch {self.batch}"
        )


def conv_onnx(path: Path, c: ConvShape) -> Path:
    """A one-node FP32 ONNX model of the convolution `c` (padding keeps the size / stride)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((c.cout, c.cin // c.groups, c.k, c.k)).astype(np.float32) * 0.05
    pad = c.dilation * (c.k // 2)
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=[c.k, c.k],
        pads=[pad] * 4,
        group=c.groups,
        strides=[c.stride] * 2,
        dilations=[c.dilation] * 2,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [c.batch, c.cin, c.h, c.w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class ConvRun:
    """One convolution alone in ORT, profiled: the Conv kernel's own time, without the layout
    reorders ORT puts around a lone NCHW convolution (inside the model they are hoisted out)."""

    def __init__(self, c: ConvShape) -> None:
        name = f"conv_{c.cin}_{c.cout}_{c.groups}_{c.k}_{c.h}x{c.w}_{c.stride}_{c.dilation}"
        path = conv_onnx(CACHE / "engine" / f"{name}.onnx", c)
        self.session = ort_session(
            path, THREADS, profile_prefix=CACHE / "engine" / f"profile_{name}"
        )
        self.shape = c
        x = np.random.default_rng(1).standard_normal((c.batch, c.cin, c.h, c.w)).astype(np.float32)
        self.x = x
        self.moved = x.nbytes + self.run()[0].nbytes  # input read + output written once

    def run(self) -> list[np.ndarray]:
        return self.session.run(None, {"x": self.x})

    def kernel_seconds(self) -> float:
        """Median Conv kernel time over the runs so far, the first (warm-up) one left out."""
        events = profile_events(self.session)
        durations = [
            e["dur"] * 1e-6
            for e in events
            if e.get("cat") == "Node"
            and e["name"].endswith("_kernel_time")
            and "Conv" in e["args"]["op_name"]
        ]
        return median(durations[1:] or durations)

    def rates(self, seconds: float) -> dict[str, float]:
        return {"gflops": self.shape.flops() / seconds / 1e9, "gbps": self.moved / seconds / 1e9}


def _kind(op: str, shapes: list[list[int]]) -> str:
    """Which part of the roofline an ORT kernel belongs to, from its input shapes."""
    if op in ("Conv", "FusedConv") and len(shapes) > 1 and len(shapes[1]) == 4:
        cout, cin_per_group, kh, kw = shapes[1]
        if cin_per_group == 1 and shapes[0][1] > 1:
            return "depthwise conv"
        return "1x1 conv" if kh * kw == 1 else "dense kxk conv"
    if op in ("MatMul", "FusedMatMul", "Softmax"):
        return "PAM (MatMul, Softmax)"
    return "other (resize, scores, layout)"


def _kernel_flops(kind: str, op: str, shapes: list[list[int]], out: list[int]) -> float:
    """FLOPs (2 per multiply-add) of one conv or matmul kernel from its shapes."""
    if kind.endswith("conv"):
        _, cin_per_group, kh, kw = shapes[1]
        return 2.0 * float(np.prod(out)) * cin_per_group * kh * kw
    if op in ("MatMul", "FusedMatMul"):
        a = shapes[0]
        k = a[-1] if a[-2] == out[-2] else a[-2]
        return 2.0 * float(np.prod(out)) * k
    return 0.0


def profile_kinds(model: Path, images: np.ndarray, runs: int) -> dict[str, list[float]]:
    """ORT's own profiler over `runs` runs after a warm-up: kind -> [s/image, FLOPs/image]."""
    session = ort_session(
        model, THREADS, spin=True, profile_prefix=CACHE / "engine" / "ort_profile"
    )
    feed = feeds(session, images)
    for _ in range(runs + 1):
        session.run(None, feed)
    events = profile_events(session)
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    kinds: dict[str, list[float]] = {}
    per_image = 1.0 / (runs * len(images))
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["ts"] < run_starts[1]:
            continue  # the warm-up run
        args = e["args"]
        shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
        out = next(iter(args["output_type_shape"][0].values()))
        kind = _kind(args["op_name"], shapes)
        acc = kinds.setdefault(kind, [0.0, 0.0])
        acc[0] += e["dur"] * 1e-6 * per_image
        acc[1] += _kernel_flops(kind, args["op_name"], shapes, out) * per_image
    return kinds


def eager_graph(checkpoint: Path, spec: Any) -> tuple[object, str]:
    """(the model in the exported wrapper, where its weights come from).

    The checkpoint's model when it is there (it is not committed); otherwise the shipped
    graph's own weights read back into PyTorch (`common.shipped_eager`).
    """
    import torch

    from dealseg.export.graph import DEALGraph
    from dealseg.training.checkpoint import load_checkpoint

    torch.set_num_threads(THREADS)
    if checkpoint.is_file():
        model = load_checkpoint(checkpoint).build_model()
        where = checkpoint.resolve()
        source = str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)
    else:
        model = shipped_eager(SHIPPED_MODEL)
        source = f"the shipped graph's initializers ({checkpoint} absent)"
    return DEALGraph(model, bins=spec.bins).eval(), source


def count_flops(graph: object, size: tuple[int, int]) -> tuple[dict[str, float], set]:
    """FLOPs per image (total, and in depthwise convs) and the model's depthwise layer shapes."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    depthwise = [0.0]
    shapes: set[ConvShape] = set()

    def hook(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if module.groups > 1 and module.groups == module.in_channels:
            k = module.kernel_size[0]
            depthwise[0] += 2.0 * out.numel() * k * k  # one k x k filter per output value
            h, w = inputs[0].shape[-2:]
            shapes.add(
                ConvShape(
                    module.in_channels,
                    module.out_channels,
                    module.groups,
                    k,
                    int(h),
                    int(w),
                    module.stride[0],
                    module.dilation[0],
                )
            )

    handles = [
        m.register_forward_hook(hook)
        for m in graph.modules()  # type: ignore[attr-defined]
        if isinstance(m, nn.Conv2d)
    ]
    image = torch.zeros(1, *size, 3, dtype=torch.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        graph(image)  # type: ignore[operator]
    for h in handles:
        h.remove()
    return {"total": float(counter.get_total_flops()), "depthwise": depthwise[0]}, shapes


def time_engines(session: object, graph: object, size: tuple[int, int], quick: bool) -> tuple:
    """Alternate eager and ORT at batch 1 and 8: (table rows, {batch: ORT img/s})."""
    import torch

    rng = np.random.default_rng(0)
    rows, ort_rate = [], {}
    for batch, reps in ((1, 3 if quick else 30), (8, 2 if quick else 8)):
        images = rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)
        tensor, feed = torch.from_numpy(images), feeds(session, images)

        def eager(t: torch.Tensor = tensor) -> None:
            with torch.inference_mode():
                graph(t)  # type: ignore[operator]

        def onnxruntime(fed: dict = feed) -> None:
            session.run(None, fed)  # type: ignore[attr-defined]

        times = alternate({"eager": eager, "ort": onnxruntime}, reps)
        eager_s, ort_s = median(times["eager"]), median(times["ort"])
        ort_rate[batch] = batch / ort_s
        rows.append(
            [batch, f"{batch / eager_s:.1f}", f"{batch / ort_s:.1f}", f"{eager_s / ort_s:.2f}x"]
        )
    return rows, ort_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=CHECKPOINT,
        help="eager model's weights (default runs/full/best.pt, if present)",
    )
    args = parser.parse_args()

    session = ort_session(SHIPPED_MODEL, THREADS)
    spec = contract.session_spec(session)
    size = spec.input_size
    graph, source = eager_graph(args.checkpoint, spec)
    flops, dw_shapes = count_flops(graph, size)
    rows, ort_rate = time_engines(session, graph, size, args.quick)
    gflop = flops["total"] / 1e9
    for row, rate in zip(rows, ort_rate.values(), strict=True):
        row += [f"{gflop * float(row[1]):.1f}", f"{gflop * rate:.1f}"]

    # The ceilings, timed in alternation with the whole model at batch 8. The best depthwise
    # shape of the model is found first (3 calls of each), then timed with the others.
    reps = 3 if args.quick else 10
    dense_shape = ConvShape(256, 256, 1, 3, 64, 64)
    big_dw_shape = ConvShape(256, 256, 256, 3, 64, 64)
    dw_runs = [ConvRun(c) for c in sorted(dw_shapes, key=ConvShape.label)]
    alternate({r.shape.label(): r.run for r in dw_runs}, 3, warmup=0)
    best_dw = max(dw_runs, key=lambda r: r.rates(r.kernel_seconds())["gflops"])
    best_dw_shape = best_dw.shape
    best_dw = ConvRun(best_dw_shape)  # a fresh profile for the alternated timing
    conv_runs = {"dense": ConvRun(dense_shape), "big_dw": ConvRun(big_dw_shape), "dw": best_dw}
    batch8 = np.random.default_rng(3).integers(0, 256, (8, *size, 3), dtype=np.uint8)
    feed8 = feeds(session, batch8)
    times = alternate(
        {
            "model": lambda: session.run(None, feed8),  # type: ignore
            **{k: r.run for k, r in conv_runs.items()},
        },
        reps,
        warmup=0,
    )
    dense, big_dw, dw = (
        conv_runs[k].rates(conv_runs[k].kernel_seconds()) for k in ("dense", "big_dw", "dw")
    )
    model_gflops = gflop * 8 / median(times["model"])

    images = np.random.default_rng(2).integers(0, 256, (8, *size, 3), dtype=np.uint8)
    kinds = profile_kinds(SHIPPED_MODEL, images, 1 if args.quick else 5)
    kernel_s = sum(v[0] for v in kinds.values())
    # Roofline mix: the time the model's FLOPs would take if each ran at its kind's ceiling.
    f_dw = kinds.get("depthwise conv", [0.0, 0.0])[1]
    f_rest = sum(v[1] for v in kinds.values()) - f_dw
    mix_gflops = (f_rest + f_dw) / (f_rest / dense["gflops"] + f_dw / dw["gflops"])

    engines = markdown_table(
        ["batch", "eager img/s", "ORT img/s", "ORT / eager", "eager GFLOP/s", "ORT GFLOP/s"], rows
    )
    ceilings = markdown_table(
        [
            "ceiling: one conv's kernel in ORT, 2 threads (alternated with the model at batch 8)",
            "GFLOP/s",
            "GB/s moved",
            "whole model in ORT as % of it",
        ],
        [
            [
                dense_shape.label(),
                f"{dense['gflops']:.1f}",
                f"{dense['gbps']:.2f}",
                f"{100 * model_gflops / dense['gflops']:.0f}%",
            ],
            [big_dw_shape.label(), f"{big_dw['gflops']:.1f}", f"{big_dw['gbps']:.2f}", ""],
            [
                f"best of the model's {len(dw_runs)} depthwise layer shapes: "
                f"{best_dw_shape.label()}",
                f"{dw['gflops']:.1f}",
                f"{dw['gbps']:.2f}",
                "",
            ],
            [
                "the model's mix: each FLOP at its kind's ceiling (dense / best depthwise)",
                f"{mix_gflops:.1f}",
                "",
                f"{100 * model_gflops / mix_gflops:.0f}%",
            ],
            [
                "the whole model in ORT, batch 8 (in this alternation)",
                f"{model_gflops:.1f}",
                "",
                "",
            ],
        ],
    )
    ceiling_of = {
        "depthwise conv": dw["gflops"],
        "1x1 conv": dense["gflops"],
        "dense kxk conv": dense["gflops"],
    }
    rows_kind, pct = [], {}
    for kind, (t, f) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        rate = f / t / 1e9 if f else 0.0
        ceiling = ceiling_of.get(kind)
        pct[kind] = (100 * t / kernel_s, 100 * rate / ceiling if ceiling else 0.0)
        rows_kind.append(
            [
                kind,
                f"{f / 1e9:.3f}",
                f"{pct[kind][0]:.0f}%",
                f"{rate:.1f}" if f else "",
                f"{pct[kind][1]:.0f}%" if ceiling else "",
            ]
        )
    breakdown = markdown_table(
        [
            "ORT kernels by kind (batch 8, ORT profiler)",
            "GFLOP/image",
            "share of kernel time",
            "GFLOP/s",
            "% of its kind's ceiling",
        ],
        rows_kind,
    )
    share = 100 * model_gflops / dense["gflops"]
    one, dwk = pct.get("1x1 conv", (0, 0)), pct.get("depthwise conv", (0, 0))
    f_1x1 = kinds.get("1x1 conv", [0.0, 0.0])[1]
    other = sum(v[0] for k, v in pct.items() if not k.endswith("conv"))
    notes = [
        f"input {size[0]}x{size[1]} uint8, all contract outputs; {THREADS} threads for both "
        f"engines, thread spinning off so the alternated engines do not steal each other's "
        f"cores; medians of alternated repetitions; ORT: {SHIPPED_MODEL.relative_to(ROOT)}; "
        f"eager: DEALGraph under torch.inference_mode, weights from {source}",
        f"FLOPs per image: {gflop:.2f} GFLOP (FlopCounterMode on the eager graph; "
        f"{sum(v[1] for v in kinds.values()) / 1e9:.2f} from ORT's kernel shapes), of which "
        f"depthwise convs {flops['depthwise'] / 1e9:.3f} GFLOP "
        f"({100 * flops['depthwise'] / flops['total']:.1f}%)",
        f"target ORT >= 70% of the dense 3x3 conv ceiling: {'met' if share >= 70 else 'not met'} "
        f"({share:.0f}%)",
        f"where the rest goes: the 1x1 convs ({100 * f_1x1 / flops['total']:.0f}% of the FLOPs) "
        f"run at {one[1]:.0f}% of the dense ceiling; the depthwise convs, "
        f"{100 * flops['depthwise'] / flops['total']:.0f}% of the FLOPs, take {dwk[0]:.0f}% of "
        "the time because a depthwise 3x3 conv reads and writes "
        f"each value for 9 multiply-adds (memory-bound: a dense 3x3 conv on the same tensor is "
        f"{dense['gflops'] / big_dw['gflops']:.0f}x faster per FLOP); PAM, resizes, scores and "
        f"layout changes take {other:.0f}%",
    ]
    body = "\n\n".join([engines, ceilings, breakdown])
    write_result("engine", "Engine: PyTorch eager vs ONNX Runtime", body, notes)


if __name__ == "__main__":
    main()
