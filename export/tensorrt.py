"""TensorRT engines from the exported ONNX graph: `deal-export tensorrt` (a GPU host) and
`deal-export trt-check` (TensorRT-RTX, any host).

Two builders share one parse-and-build path (`build_serialized`):
- `tensorrt` (TensorRT 10, data-centre GPUs: what Triton's `tensorrt_plan` serves). Its Python
  wheels fetch the libraries from NVIDIA's own index, and its builder needs a CUDA device: `pip
  install 'dealseg[gpu]'` on a CUDA host, or NVIDIA's container.
- TensorRT-RTX (`tensorrt-rtx-cu12-libs` and `-bindings` on PyPI, the `trt` extra): the same ONNX
  parser and network API, and it builds engines ahead of time without a GPU, so CI parses and
  builds every graph we export with it (tests/test_tensorrt.py). Its engines run on RTX-class
  GPUs (compute capability 8.6 and later) only; a passing build proves that TensorRT's parser
  takes every node and the builder finds an implementation of every layer for the batch
  profile, not that a data-centre engine builds or matches ONNX Runtime there.

A refused graph raises `GraphRefused` naming each refused node: index, name, op type and the
builder's own reason. Networks are explicit-batch (TensorRT 10); I/O by tensor name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core import contract

INSTALL_HINT = (
    "TensorRT is not installed. On a CUDA host: pip install 'dealseg[gpu]' (tensorrt), or run "
    "inside NVIDIA's container, e.g. docker run --gpus all -it -v $PWD:/w "
    "nvcr.io/nvidia/tensorrt:24.10-py3"
)
RTX_INSTALL_HINT = (
    "TensorRT-RTX is not installed: pip install 'dealseg[trt]' (tensorrt-rtx-cu12-libs and "
    "-bindings; no GPU needed to build)"
)
# The module of the TensorRT-RTX SDK's own wheel, then that of the PyPI bindings wheel.
RTX_MODULES: tuple[str, ...] = ("tensorrt_rtx", "tensorrt_rtx_bindings")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing on this host."""


class GraphRefused(RuntimeError):
    """The TensorRT parser or builder refused the graph; the message names each refused node."""


def import_tensorrt():  # noqa: ANN201 - the module object
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(INSTALL_HINT) from exc
    return trt


def import_tensorrt_rtx():  # noqa: ANN201 - the module object
    import importlib

    for name in RTX_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable(RTX_INSTALL_HINT)


@dataclass(frozen=True)
class BatchProfile:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min ({self.min_batch}) <= opt ({self.opt_batch}) <= max "
                f"({self.max_batch}) batch"
            )


@dataclass(frozen=True)
class BuildReport:
    """What one engine build made: its size, its time and the network's layers and inputs."""

    engine_bytes: int
    seconds: float
    layers: int
    inputs: dict[str, str]  # name -> TensorRT data type


def _collecting_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the errors it is given (the parser's reasons) and drops the
    rest below warnings."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return Collecting()


def _refused_nodes(parser: Any, logged: list[str]) -> str:
    """One line per parser error (node index, name, op type, reason), with the logged reason
    that names the node when the parser's own is only "Invalid Node"."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        name = error.node_name()
        why = next((m for m in logged if name and f"{name}:" in m), error.desc())
        lines.append(f"node {error.node()} {name!r} ({error.node_operator()}): {why}")
    return "\n  ".join(lines) or "no reason given"


def build_serialized(
    trt: Any,
    onnx_path: Path,
    profile: BatchProfile,
    configure: Callable[[Any], None] | None = None,
) -> tuple[bytes, BuildReport]:
    """Parse `onnx_path` with `trt`'s ONNX parser, add `profile` on every input's batch axis,
    let `configure` set the builder config (precision, memory), build: the serialized engine
    and what was built. GraphRefused naming the refused nodes, or the builder's errors."""
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        refused = _refused_nodes(parser, logger.errors)
        raise GraphRefused(f"{trt.__name__} could not parse {onnx_path}:\n  {refused}")
    config = builder.create_builder_config()
    if configure is not None:
        configure(config)
    opt = builder.create_optimization_profile()
    inputs = {}
    for i in range(network.num_inputs):  # image [B, H, W, 3], valid_box [B, 4]: one batch axis
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
        opt.set_shape(tensor.name, *((b, *rest) for b in batches))
        inputs[tensor.name] = str(tensor.dtype).rsplit(".", 1)[-1]
    config.add_optimization_profile(opt)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = "\n  ".join(logger.errors) or "no reason given"
        raise GraphRefused(f"{trt.__name__} could not build {onnx_path}:\n  {errors}")
    engine = bytes(serialized)
    return engine, BuildReport(len(engine), seconds, network.num_layers, inputs)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: BatchProfile,
    fp16: bool = False,
    workspace_gib: float = 4.0,
) -> Path:
    """A TensorRT engine of the ONNX graph with one batch optimisation profile, written to
    `plan_path` (a CUDA host with `tensorrt`).

    Inputs and outputs keep the contract's types (uint8 image; FP32 scores; uint8 maps) even with
    `fp16`, which only lets TensorRT pick FP16 kernels inside the graph.
    """
    trt = import_tensorrt()

    def configure(config: Any) -> None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)

    engine, _ = build_serialized(trt, onnx_path, profile, configure)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(engine)
    return plan_path


def check_with_tensorrt_rtx(
    onnx_path: Path, profile: BatchProfile, plan_path: Path | None = None
) -> BuildReport:
    """Parse and build `onnx_path` with TensorRT-RTX for `profile` on this host (no GPU
    needed); the engine is written to `plan_path` when given. GraphRefused when a node or layer
    is refused, TensorRTUnavailable without the `trt` extra."""
    engine, report = build_serialized(import_tensorrt_rtx(), onnx_path, profile)
    if plan_path is not None:
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(engine)
    return report


def run_engine(plan_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a plan on its inputs (`contract.model_inputs`) with CUDA buffers from torch; all
    outputs back."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA device: a TensorRT engine runs only on an NVIDIA GPU")
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    buffers = {}
    for name, array in feeds.items():
        context.set_input_shape(name, array.shape)
        buffers[name] = torch.from_numpy(array).cuda()
    for name in contract.OUTPUT_NAMES:
        shape = tuple(context.get_tensor_shape(name))
        dtype = torch.uint8 if contract.SPECS[name].dtype == "uint8" else torch.float32
        buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT execution failed")
    stream.synchronize()
    return {name: buffers[name].cpu().numpy() for name in contract.OUTPUT_NAMES}


def parity_vs_onnxruntime(plan_path: Path, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """Max abs differences of the scores and min embedding cosine, TensorRT vs ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = contract.session_spec(session)
    feeds = contract.model_inputs(spec, images)
    names = list(spec.output_names)
    ref = dict(zip(names, session.run(names, feeds), strict=True))
    got = run_engine(plan_path, feeds)
    result = {
        name: float(np.abs(got[name].astype(np.float64) - ref[name]).max())
        for name in ("ds", "de", "entropy", "class_fraction")
    }
    result["embedding_min_cosine"] = float((got["embedding"] * ref["embedding"]).sum(1).min())
    return result
