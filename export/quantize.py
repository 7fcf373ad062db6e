"""`deal-export quantize`: static INT8 (QDQ) quantization of an exported DEAL graph.

    model.onnx (FP32) + a pool of images ─► calibration (min/max of every activation) ─►
    model-int8.onnx: QuantizeLinear/DequantizeLinear pairs in the segmenter, same contract

What is quantized: the nodes of the segmenter's encoder and decoder (`SEGMENTER_SCOPES`, read from
the exporter's per-node `namespace` metadata) of the types in `QUANTIZED_OPS`: the convolutions
and what sits between them (ReLU/ReLU6, residual adds, concatenations, upsampling), so that
consecutive convolutions hand each other UINT8 tensors. Quantizing the convolutions alone leaves
a dequantize/requantize pair around every activation and was slower than FP32 here.

What stays FP32: the segmentation head (the logits), the difficulty head (PAM: softmax,
attention matmuls, 1x1 classifier) and the score tail (resize, sigmoid, histogram, entropy,
argmax, embedding), so DS and DE are computed exactly as before, from slightly different logits.

Number formats: UINT8 activations (asymmetric, min/max calibrated), INT8 weights (symmetric, per
output channel). Weight range (`weight_bits`): on x86 CPUs without VNNI the U8S8 GEMM adds pairs
of products in 16 bits with saturation, which with full-range weights visibly corrupted the
difficulty scores, so there the weights of convolutions that ONNX Runtime runs as a GEMM (1x1 and
the dense stem) use 7 bits (`reduce_range`); depthwise kernels do not saturate and keep 8 bits.
With VNNI (AVX512-VNNI, AVX-VNNI) products are summed in 32 bits and every weight keeps 8 bits.
"auto" (the default) decides from the CPU doing the quantization (`cpu_has_vnni`); a model meant
for other machines should name the bits of the slowest one (7 when any lacks VNNI).

Before calibration, per-channel constants whose channels are all equal become scalars
(`scalar_constants`): the shipped input normalisation subtracts and divides by [1, 3, 1, 1]
constants, and once ONNX Runtime moves the quantized convolutions to NHWC it pushes the input
transpose past them, where a broadcast over the innermost dimension of 3 takes a slow path
(12% of the INT8 model's kernel time at 180x240). The FP32 outputs are unchanged.

Two formats (`QUANT_FORMATS`), one calibration: `cpu` (the default, above) is ONNX Runtime's
fast CPU format. `tensorrt` is TensorRT's explicit-quantization format: INT8 activations
symmetric about zero, 8-bit weights, biases left FP32 (TensorRT fuses and quantizes them itself;
its parser refuses the INT32 bias DequantizeLinear of the `cpu` format, and TensorRT's INT8 is
signed). Both keep the same nodes FP32.

The calibration images are decoded from the pool exactly as `deal-client` decodes them. The
`dealseg.*` metadata is copied, so the client, the Triton repository writer and the contract
checks accept the result like any exported model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.contract import ContractError, ModelSpec, model_inputs

from .onnxfile import save_model

SEGMENTER_SCOPES: tuple[str, ...] = ("model.encoder", "model.decoder")
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "MatMul", "Clip", "Relu", "Add", "Concat", "Resize")


WEIGHT_BITS: tuple[str, ...] = ("auto", "7", "8")
QUANT_FORMATS: tuple[str, ...] = ("cpu", "tensorrt")
VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")


class QuantizeError(ValueError):
    """The model or the calibration pool cannot be used; the message says what to change."""


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_model` did."""

    calibration_images: int
    quantized_convs: int  # Conv/MatMul nodes whose weights are now INT8
    fp32_nodes: list[str]  # nodes of a quantizable type deliberately left FP32
    bytes_in: int
    bytes_out: int
    weight_bits: int  # 8, or 7 for the GEMM convolutions' weights
    scalarised: list[str]  # constants made scalars (`scalar_constants`)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this CPU sums INT8 products in 32 bits (x86 VNNI), read from /proc/cpuinfo's
    flags (or the given text). False where there is no such file (not Linux): then `auto`
    weights take the 7 bits that are safe everywhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return any(f in flags for f in VNNI_FLAGS)


def resolve_weight_bits(weight_bits: str) -> int:
    """ "auto" -> 8 with VNNI, else 7; "7"/"8" as given; QuantizeError for anything else."""
    if weight_bits not in WEIGHT_BITS:
        raise QuantizeError(f"weight bits {weight_bits!r}: use one of {', '.join(WEIGHT_BITS)}")
    if weight_bits == "auto":
        return 8 if cpu_has_vnni() else 7
    return int(weight_bits)


def scalar_constants(model: Any) -> list[str]:
    """Make every [1, C, 1, 1] initializer that a Sub, Div, Mul or Add reads, with all C values
    equal and no other reader, a scalar (in place); the names changed.

    Only where the node's other operand is known to be 4-D (ONNX shape inference), so the
    result's shape and values are the same; only the broadcast pattern, and so the kernel ONNX
    Runtime takes, changes.
    """
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.value_info, *inferred.input]
        if v.type.tensor_type.HasField("shape")
    }
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    elementwise = {"Sub", "Div", "Mul", "Add"}
    candidates = {
        n.input[1]
        for n in model.graph.node
        if n.op_type in elementwise and len(n.input) == 2 and ranks.get(n.input[0]) == 4
    }
    changed = []
    for init in model.graph.initializer:
        if init.name not in candidates or readers.get(init.name) != 1:
            continue
        dims = list(init.dims)
        if len(dims) != 4 or dims[0] != 1 or dims[2:] != [1, 1]:
            continue
        values = numpy_helper.to_array(init)
        if not np.all(values == values.flat[0]):
            continue
        init.CopyFrom(numpy_helper.from_array(np.asarray(values.flat[0]), init.name))
        changed.append(init.name)
    for infos in (model.graph.value_info, model.graph.input):  # their recorded shapes are stale
        stale = [v for v in infos if v.name in changed]
        for v in stale:
            infos.remove(v)
    return changed


def calibration_images(pool: str | os.PathLike, size: tuple[int, int], count: int) -> np.ndarray:
    """`count` images spread evenly over the pool, decoded to uint8 [count, H, W, 3].

    Files that fail to decode are skipped (the next ones are taken); QuantizeError if the pool
    holds no decodable image.
    """
    from dealseg.core.decode import DecodeError, decode_image
    from dealseg.core.pool import PoolError, read_pool

    try:
        paths = read_pool(os.fspath(pool))
    except PoolError as exc:
        raise QuantizeError(f"calibration pool: {exc}") from None
    step = max(1, len(paths) // max(count, 1))
    order = paths[::step] + [p for i, p in enumerate(paths) if i % step]  # spread, then the rest
    images: list[np.ndarray] = []
    for path in order:
        if len(images) == count:
            break
        try:
            images.append(decode_image(path, size))
        except DecodeError:
            continue
    if not images:
        raise QuantizeError(f"no decodable image in the calibration pool {pool}")
    return np.stack(images)


class ImageReader:
    """ONNX Runtime's CalibrationDataReader protocol over uint8 images, one [1, H, W, 3] a time
    (with its valid box, the whole frame, for a contract 2 model)."""

    def __init__(self, images: np.ndarray, spec: ModelSpec) -> None:
        self._images, self._spec = images, spec
        self._iter: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else model_inputs(self._spec, image[None])

    def rewind(self) -> None:
        self._iter = iter(self._images)


def _scope(node: Any) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == "namespace"), None)


def fp32_nodes(model: Any) -> list[str]:
    """Names of the nodes of a quantizable type that stay FP32: all outside the segmenter.

    A graph without the exporter's `namespace` metadata keeps every MatMul (only the PAM
    multiplies matrices) and the last two Convs (segmentation head, difficulty classifier).
    """
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    if any(_scope(n) is not None for n in nodes):
        inside = tuple(f"{s}:" for s in SEGMENTER_SCOPES)  # "model.encoder: dealseg...EfficientNet"
        return [n.name for n in nodes if not any(s in (_scope(n) or "") for s in inside)]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    return [n.name for n in nodes if n.op_type == "MatMul"] + convs[-2:]


def gemm_weight_overrides(model: Any) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides giving 7-bit weights to every non-depthwise Conv (one dict/channel)."""
    weights = {i.name: i for i in model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if w is None or len(w.dims) != 4 or w.dims[1] == 1:  # [Cout, Cin/groups, kh, kw]
            continue
        overrides[w.name] = [{"reduce_range": True, "axis": 0}] + [
            {"reduce_range": True} for _ in range(w.dims[0] - 1)
        ]
    return overrides


def quantize_model(
    model_path: Path,
    out: Path,
    pool: str | os.PathLike,
    count: int = 64,
    weight_bits: str = "auto",
    fmt: str = "cpu",
) -> QuantizeReport:
    """Write a static INT8 QDQ version of `model_path` to `out`, calibrated on `pool`, in format
    `fmt` ("cpu" or "tensorrt"), with `weight_bits` ("auto", "7", "8"; see the module's notes;
    auto is 8 for TensorRT) for the GEMM convolutions."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model_path, out = Path(model_path), Path(out)
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise QuantizeError(f"{model_path}: not a readable ONNX model: {exc}") from None
    try:
        spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    except ContractError as exc:
        raise QuantizeError(f"{model_path}: {exc}") from None
    if fmt not in QUANT_FORMATS:
        raise QuantizeError(f"format {fmt!r}: use one of {', '.join(QUANT_FORMATS)}")
    bits = 8 if fmt == "tensorrt" and weight_bits == "auto" else resolve_weight_bits(weight_bits)
    signed = fmt == "tensorrt"
    images = calibration_images(pool, spec.input_size, count)
    keep = fp32_nodes(model)
    scalarised = scalar_constants(model)
    overrides = gemm_weight_overrides(model) if bits == 7 else {}
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" warnings
    try:
        with tempfile.TemporaryDirectory(prefix="deal-quantize-") as tmp:
            raw, prepared = Path(tmp) / "model-int8.onnx", Path(tmp) / "model-fp32.onnx"
            onnx.save(model, str(prepared))
            quantize_static(
                str(prepared),
                raw,
                ImageReader(images, spec),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=keep,
                per_channel=True,
                activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": signed,
                    "QuantizeBias": not signed,
                    "TensorQuantOverrides": overrides,
                },
            )
            quantized = onnx.load(str(raw))
    finally:
        logging.getLogger().setLevel(quiet)
    save_model(quantized, {p.key: p.value for p in model.metadata_props}, out, full_check=False)
    return QuantizeReport(
        len(images),
        _int8_convs(quantized),
        keep,
        model_path.stat().st_size,
        out.stat().st_size,
        bits,
        scalarised,
    )


def _int8_convs(model: Any) -> int:
    """Conv/MatMul nodes whose weight input comes out of a DequantizeLinear."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1 for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.input[1] in dequantized
    )
