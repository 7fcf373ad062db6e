"""Triton model repository for the exported DEAL graph: `<repo>/deal/config.pbtxt` and `1/`.

Three targets share one config skeleton (batching, instances, contract tensors, contract metadata):

- `python-cpu`: Triton's Python backend runs `backend/model.py`, which runs the ONNX file beside it
  with ONNX Runtime. Runs anywhere, including the tritonserver bundled with nvidia-pytriton here.
- `onnxruntime`: Triton's `onnxruntime_onnx` platform on GPU hosts, optionally with the TensorRT
  execution accelerator.
- `tensorrt`: Triton's `tensorrt_plan` platform; the plan is built on the GPU host from the ONNX
  file with an explicit-batch optimisation profile (`trtexec_command`).

The config is written and parsed with the `ModelConfig` protobuf shipped in tritonclient, so the
text is always valid Triton syntax.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from dealseg.core.contract import (
    INPUT,
    MODEL_NAME,
    OUTPUTS,
    SCORE_OUTPUTS,
    ContractError,
    ModelSpec,
    session_spec,
)

TARGETS: tuple[str, ...] = ("python-cpu", "onnxruntime", "tensorrt")
BACKEND_MODEL_PY = Path(__file__).parent / "backend" / "model.py"
VERSION = "1"

# Config parameters read by backend/model.py (the names the onnxruntime backend uses, too).
PARAM_INTRA_OP = "intra_op_thread_count"
PARAM_INTER_OP = "inter_op_thread_count"
PARAM_DEFAULT_OUTPUTS = "default_outputs"  # comma-separated; sent when a request asks for none

_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
_DEFAULT_KIND = {"python-cpu": "cpu", "onnxruntime": "gpu", "tensorrt": "gpu"}


def read_onnx_spec(model_path: Path) -> ModelSpec:
    """Read the contract metadata of an exported ONNX file and check its tensors against it.

    Raises ContractError naming every difference (missing metadata, wrong dtype or shape).
    """
    import onnxruntime as ort  # lazy: keeps `deal-serve --help` fast

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ContractError(f"{model_path}: not a loadable ONNX model ({exc})") from exc
    return session_spec(session)


def build_config(
    spec: ModelSpec,
    target: str = "python-cpu",
    *,
    max_batch_size: int = 16,
    preferred_batch_sizes: Sequence[int] = (4, 8, 16),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    instance_kind: str | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    trt_accelerator: bool = False,
    trt_precision: str = "FP16",
) -> mc.ModelConfig:
    """The Triton `ModelConfig` of the `deal` model for `target` (see module doc)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    bad = [b for b in preferred_batch_sizes if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(f"preferred batch sizes {bad} outside 1..max_batch_size={max_batch_size}")
    if trt_accelerator and target != "onnxruntime":
        raise ValueError("the TensorRT accelerator applies to the onnxruntime target only")
    kind = instance_kind or _DEFAULT_KIND[target]
    if kind not in _KINDS:
        raise ValueError(f"unknown instance kind {kind!r}; choose one of {', '.join(_KINDS)}")

    config = mc.ModelConfig(name=MODEL_NAME, max_batch_size=max_batch_size)
    if target == "python-cpu":
        config.backend = "python"
    elif target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    else:
        config.platform = "tensorrt_plan"

    image_dims = spec.shape(INPUT.name)  # [H, W, 3]
    config.input.add(name=INPUT.name, data_type=_data_type(INPUT.dtype), dims=image_dims)
    for tensor in OUTPUTS:
        output = config.output.add(name=tensor.name, data_type=_data_type(tensor.dtype))
        dims = spec.shape(tensor.name)
        if dims:
            output.dims.extend(dims)
        else:  # [B] tensors: Triton needs non-empty dims, so clients see [B, 1]
            output.dims.append(1)
            output.reshape.SetInParent()

    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(count=instances, kind=_KINDS[kind])

    if trt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = trt_precision
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)

    parameters = dict(spec.to_metadata())
    if target in ("python-cpu", "onnxruntime"):
        parameters[PARAM_INTRA_OP] = str(intra_op_threads)
        parameters[PARAM_INTER_OP] = str(inter_op_threads)
    if target == "python-cpu":
        parameters[PARAM_DEFAULT_OUTPUTS] = ",".join(SCORE_OUTPUTS)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def write_repository(
    model_path: Path,
    repo: Path,
    target: str = "python-cpu",
    *,
    plan: Path | None = None,
    **options: Any,
) -> Path:
    """Write the Triton model `deal` for `target` into `repo`; return `repo/deal`.

    model_path: the exported ONNX file (`deal-export onnx`); its metadata is checked against the
        contract and copied into the config's `parameters`.
    repo: the model repository root (created if needed); other models in it are left alone.
    target: `python-cpu`, `onnxruntime` or `tensorrt` (see the module doc).
    options: `build_config`'s keywords: max_batch_size, preferred_batch_sizes and
        max_queue_delay_us (the dynamic batcher); instances, instance_kind (the instance group);
        intra_op_threads, inter_op_threads (ONNX Runtime); trt_accelerator, trt_precision.
    plan: tensorrt target only, a serialized engine copied to `1/model.plan`. Without it the ONNX
        file is copied to `1/model.onnx` and the plan must be built there on the GPU host
        (`trtexec_command`).
    """
    model_path, repo = Path(model_path), Path(repo)
    if plan is not None and target != "tensorrt":
        raise ValueError("plan applies to the tensorrt target only")
    spec = read_onnx_spec(model_path)
    config = build_config(spec, target, **options)
    model_dir = repo / MODEL_NAME
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.py", "model.plan"):  # artefacts of another target
        (version_dir / stale).unlink(missing_ok=True)
    _copy(model_path, version_dir / "model.onnx")
    if target == "python-cpu":
        _copy(BACKEND_MODEL_PY, version_dir / "model.py")
    if plan is not None:
        _copy(Path(plan), version_dir / "model.plan")
    header = (
        f"# Triton config of the DEAL model, target {target}, written by dealseg's\n"
        "# write_repository (`deal-export repository`). Tensors follow dealseg.core.contract;\n"
        "# the dealseg.* parameters are the exported model's contract metadata.\n"
    )
    (model_dir / "config.pbtxt").write_text(header + config_text(config))
    return model_dir


def trtexec_command(spec: ModelSpec, model_dir: Path, max_batch_size: int = 16) -> str:
    """The `trtexec` command that builds `1/model.plan` from `1/model.onnx` on a GPU host."""
    h, w = spec.input_size
    opt = max(1, max_batch_size // 2)
    version_dir = Path(model_dir) / VERSION
    shape = f"{INPUT.name}:{{}}x{h}x{w}x3"
    return (
        f"trtexec --onnx={version_dir / 'model.onnx'} --saveEngine={version_dir / 'model.plan'}"
        f" --minShapes={shape.format(1)} --optShapes={shape.format(opt)}"
        f" --maxShapes={shape.format(max_batch_size)} --fp16"
    )


def config_text(config: mc.ModelConfig) -> str:
    """`config.pbtxt` text of a ModelConfig."""
    return text_format.MessageToString(config)


def parse_config(path: Path) -> dict[str, Any]:
    """Parse a `config.pbtxt` into the dict form Triton's `/v2/models/<m>/config` returns.

    Raises ValueError with the parser's message if the text is not a valid Triton ModelConfig.
    """
    config = mc.ModelConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: invalid model config: {exc}") from exc
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def config_metadata(config: dict[str, Any]) -> dict[str, str]:
    """String parameters of a config dict (from `parse_config` or the server's config endpoint)."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


_CONFIG_DTYPES = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32"}
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}


def model_file_problems(model_dir: Path) -> list[str]:
    """How the ONNX files of `model_dir` (`<version>/model.onnx`) disagree with its config.pbtxt:
    a tensor the other lacks, or another dtype or shape (both shapes named). Empty when they
    agree. Versions without model.onnx (a TensorRT plan) and files ONNX Runtime cannot load
    (the server names those when it fails to load them) are not checked here."""
    import onnxruntime as ort  # lazy: keeps `deal-serve --help` fast

    config = parse_config(Path(model_dir) / "config.pbtxt")
    declared = {
        t["name"]: (_CONFIG_DTYPES.get(t.get("data_type", ""), t.get("data_type")), t["dims"])
        for t in config.get("input", []) + config.get("output", [])
    }
    problems = []
    for onnx_file in sorted(Path(model_dir).glob("[0-9]*/model.onnx")):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(onnx_file), options, ["CPUExecutionProvider"])
        except Exception:  # onnxruntime's own types; the server reports a file it cannot load
            continue
        actual = {
            a.name: (_ORT_DTYPES.get(a.type, a.type), a.shape[1:])
            for a in session.get_inputs() + session.get_outputs()
        }
        for name, (dtype, dims) in declared.items():
            problems += _tensor_problems(onnx_file, name, (dtype, dims), actual.get(name))
    return problems


def _tensor_problems(onnx_file: Path, name: str, declared: tuple, actual: tuple | None) -> list:
    """`name` as config.pbtxt declares it vs as the ONNX file has it (batch axis left out;
    the config's [1] is the model's scalar per image)."""
    dtype, dims = declared
    want = [int(d) for d in dims]
    if actual is None:
        return [f"config.pbtxt declares {name!r}, {onnx_file} has no such tensor"]
    got_dtype, got = actual
    same_shape = (got == [] and want == [1]) or (
        len(got) == len(want)
        and all(not isinstance(g, int) or g < 0 or g == w for g, w in zip(got, want, strict=True))
    )
    if dtype == got_dtype and same_shape:
        return []
    return [
        f"{name}: config.pbtxt says {dtype} [B, {', '.join(map(str, want))}], {onnx_file} has "
        f"{got_dtype} [B, {', '.join(map(str, got))}]"
    ]


def _data_type(dtype: str) -> int:
    return {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32}[dtype]


def _copy(src: Path, dst: Path) -> None:
    if dst.exists() and dst.resolve() == src.resolve():
        return  # rewriting the config of a repository in place
    shutil.copyfile(src, dst)
