"""`deal-export tensorrt`: build a TensorRT engine (plan) from the exported ONNX graph.

Written against TensorRT 10's Python API (networks are always explicit-batch; I/O by tensor name).
Needs an NVIDIA GPU and the `tensorrt` package: `pip install tensorrt` on a CUDA host, or run inside
NVIDIA's TensorRT / Triton container. This path is not exercised on CPU-only machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dealseg.core import contract

INSTALL_HINT = (
    "TensorRT is not installed. On a CUDA host: pip install 'dealseg[gpu]' (tensorrt), or run "
    "inside NVIDIA's container, e.g. docker run --gpus all -it -v $PWD:/w "
    "nvcr.io/nvidia/tensorrt:24.10-py3"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing on this host."""


def import_tensorrt():  # noqa: ANN201 - the module object
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(INSTALL_HINT) from exc
    return trt


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


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: BatchProfile,
    fp16: bool = False,
    workspace_gib: float = 4.0,
) -> Path:
    """Parse the ONNX graph, add one batch optimisation profile, serialise the engine.

    Inputs and outputs keep the contract's types (uint8 image; FP32 scores; uint8 maps) even with
    `fp16`, which only lets TensorRT pick FP16 kernels inside the graph.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):  # image [B, H, W, 3], valid_box [B, 4]: one batch axis
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
        opt.set_shape(tensor.name, *((b, *rest) for b in batches))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


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
    feeds = contract.model_inputs(contract.session_spec(session), images)
    names = list(contract.OUTPUT_NAMES)
    ref = dict(zip(names, session.run(names, feeds), strict=True))
    got = run_engine(plan_path, feeds)
    result = {
        name: float(np.abs(got[name].astype(np.float64) - ref[name]).max())
        for name in ("ds", "de", "entropy", "class_fraction")
    }
    result["embedding_min_cosine"] = float((got["embedding"] * ref["embedding"]).sum(1).min())
    return result
