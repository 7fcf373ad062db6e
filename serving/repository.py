"""Triton model repository for the exported DEAL graph: `<repo>/<name>/config.pbtxt`, `<N>/`.

A model's name and version are those in its ONNX metadata (`deal-export onnx --name --version`),
so the embedded engine and Triton report one model id. A new version is written beside the
versions already there, which share its config.pbtxt: their tensors must be the same, their
contract metadata is kept per version (`dealseg.v<N>.*` parameters), and `version_policy` says
which versions Triton serves. An existing version is replaced only when asked (`force`).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from dealseg.core.contract import (
    SCORE_OUTPUTS,
    ContractError,
    ModelSpec,
    version_metadata,
    version_parameters,
)
from dealseg.core.files import atomic_write
from dealseg.core.modelfile import read_onnx_spec

TARGETS: tuple[str, ...] = ("python-cpu", "onnxruntime", "tensorrt")
BACKEND_MODEL_PY = Path(__file__).parent / "backend" / "model.py"
DEFAULT_VERSION_POLICY = "all"

# Config parameters read by backend/model.py (the names the onnxruntime backend uses, too).
PARAM_INTRA_OP = "intra_op_thread_count"
PARAM_INTER_OP = "inter_op_thread_count"
PARAM_DEFAULT_OUTPUTS = "default_outputs"  # comma-separated; sent when a request asks for none

_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
_DEFAULT_KIND = {"python-cpu": "cpu", "onnxruntime": "gpu", "tensorrt": "gpu"}


def build_config(
    spec: ModelSpec,
    target: str = "python-cpu",
    *,
    max_batch_size: int = 16,
    preferred_batch_sizes: Sequence[int] = (),  # Triton's guidance: none unless measured better
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    instance_kind: str | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    trt_accelerator: bool = False,
    trt_precision: str = "FP16",
    version_policy: str = DEFAULT_VERSION_POLICY,
) -> mc.ModelConfig:
    """The Triton `ModelConfig` of the model `spec` describes, for `target` (see module doc);
    its parameters hold `spec`'s metadata as its version's."""
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

    config = mc.ModelConfig(name=spec.model_name, max_batch_size=max_batch_size)
    config.version_policy.CopyFrom(parse_version_policy(version_policy))
    if target == "python-cpu":
        config.backend = "python"
    elif target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    else:
        config.platform = "tensorrt_plan"

    for tensor in spec.inputs:  # image [H, W, 3], valid_box [4]
        config.input.add(
            name=tensor.name, data_type=_data_type(tensor.dtype), dims=spec.shape(tensor.name)
        )
    for tensor in spec.outputs:
        output = config.output.add(name=tensor.name, data_type=_data_type(tensor.dtype))
        dims = spec.shape(tensor.name)
        if dims:
            output.dims.extend(dims)
        else:  # [B] tensors: Triton needs non-empty dims, so clients see [B, 1]
            output.dims.append(1)
            output.reshape.SetInParent()

    config.dynamic_batching.SetInParent()  # on, forming the largest batch it can
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(count=instances, kind=_KINDS[kind])

    if trt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = trt_precision
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)

    parameters = version_parameters(spec, served_version(spec))
    if target in ("python-cpu", "onnxruntime"):
        parameters[PARAM_INTRA_OP] = str(intra_op_threads)
        parameters[PARAM_INTER_OP] = str(inter_op_threads)
    if target == "python-cpu":
        parameters[PARAM_DEFAULT_OUTPUTS] = ",".join(SCORE_OUTPUTS)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def parse_version_policy(text: str) -> mc.ModelVersionPolicy:
    """`all`, `latest:N` (the N highest versions) or `specific:1,3` as Triton's policy."""
    kind, _, arg = text.strip().partition(":")
    policy = mc.ModelVersionPolicy()
    try:
        if kind == "all" and not arg:
            policy.all.SetInParent()
        elif kind == "latest" and int(arg) >= 1:
            policy.latest.num_versions = int(arg)
        elif kind == "specific" and all(int(v) >= 1 for v in arg.split(",")):
            policy.specific.versions.extend(int(v) for v in arg.split(","))
        else:
            raise ValueError(text)
    except ValueError:
        raise ValueError(
            f"version policy {text!r}: use all, latest:N or specific:N[,M...]"
        ) from None
    return policy


def served_version(spec: ModelSpec) -> str:
    """The Triton version folder of a model: its metadata's version, a positive integer."""
    if not spec.model_version.isdigit() or int(spec.model_version) < 1:
        raise ValueError(
            f"model version {spec.model_version!r} is not a Triton version (1, 2, ...); export "
            "the model with `deal-export onnx --version N`"
        )
    return str(int(spec.model_version))


def write_repository(
    model_path: Path,
    repo: Path,
    target: str = "python-cpu",
    *,
    plan: Path | None = None,
    force: bool = False,
    **options: Any,
) -> Path:
    """Write the model of `model_path` as `repo/<name>/<version>/` for `target`, beside the
    versions already there; return `repo/<name>`.

    model_path: the exported ONNX file (`deal-export onnx`); its metadata is checked against the
        contract, names the model and its version, and goes into the config's `parameters`.
    repo: the model repository root (created if needed); other models and versions in it are
        left alone, and their config.pbtxt keeps their metadata.
    target: `python-cpu`, `onnxruntime` or `tensorrt` (see the module doc).
    force: replace the version's folder if it exists (else a FileExistsError).
    options: `build_config`'s keywords: max_batch_size, preferred_batch_sizes and
        max_queue_delay_us (the dynamic batcher); instances, instance_kind (the instance group);
        intra_op_threads, inter_op_threads (ONNX Runtime); trt_accelerator, trt_precision;
        version_policy.
    plan: tensorrt target only, a serialized engine copied to `<version>/model.plan`. Without it
        the ONNX file is copied to `<version>/model.onnx` and the plan must be built there on
        the GPU host (`trtexec_command`).
    """
    model_path, repo = Path(model_path), Path(repo)
    if plan is not None and target != "tensorrt":
        raise ValueError("plan applies to the tensorrt target only")
    spec = read_onnx_spec(model_path)
    version = served_version(spec)
    config = build_config(spec, target, **options)
    model_dir = repo / spec.model_name
    version_dir = model_dir / version
    if version_dir.exists() and not force:
        raise FileExistsError(
            f"{version_dir} exists ({spec.model_name} version {version}); export the model "
            "with another --version, or pass --force to replace it"
        )
    _add_other_versions(config, model_dir, version)
    staging = model_dir / f".staging-{version}"  # not a number: Triton never loads it
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(model_path, staging / "model.onnx")
    if target == "python-cpu":
        shutil.copyfile(BACKEND_MODEL_PY, staging / "model.py")
    if plan is not None:
        shutil.copyfile(plan, staging / "model.plan")
    _replace_dir(staging, version_dir)
    header = (
        f"# Triton config of the DEAL model {spec.model_name}, target {target}, written by\n"
        "# dealseg's write_repository (`deal-export repository`). Tensors follow\n"
        "# dealseg.core.contract; the dealseg.v<N>.* parameters are version N's metadata.\n"
    )
    atomic_write(model_dir / "config.pbtxt", (header + config_text(config)).encode())
    return model_dir


def versions_of(model_dir: Path) -> list[str]:
    """The version folders of a model, in number order."""
    found = [p.name for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=int)


def _add_other_versions(config: mc.ModelConfig, model_dir: Path, version: str) -> None:
    """Keep the metadata of the versions beside `version` in `config`; refuse when they take
    other tensors or another backend than `config` (they would share it)."""
    if not (model_dir / "config.pbtxt").is_file():
        return
    old = parse_config(model_dir / "config.pbtxt")
    new = json_format.MessageToDict(config, preserving_proto_field_name=True)
    changed = [k for k in ("backend", "platform", "input", "output") if old.get(k) != new.get(k)]
    others = [v for v in versions_of(model_dir) if v != version]
    if changed and others:
        raise ValueError(
            f"{model_dir} holds versions {', '.join(others)} with another {', '.join(changed)} "
            f"than version {version} (a model's versions share config.pbtxt: the same input "
            "size, classes and target); export it under another --name"
        )
    params = config_metadata(old)
    for other in others:
        meta = version_metadata(params, other) or _onnx_metadata(model_dir / other)
        for key, value in version_parameters(ModelSpec.from_metadata(meta), other).items():
            config.parameters[key].string_value = value


def _onnx_metadata(version_dir: Path) -> Mapping[str, str]:
    """The contract metadata of a version folder's model.onnx (a config without it)."""
    if not (version_dir / "model.onnx").is_file():
        raise ContractError(f"{version_dir}: no model.onnx and no metadata in config.pbtxt")
    return read_onnx_spec(version_dir / "model.onnx").to_metadata()


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the staged folder into place; the old one (if any) is removed after the swap."""
    old = target.with_name(f".replaced-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def opt_batch(max_batch_size: int, preferred_batch_sizes: Sequence[int] = ()) -> int:
    """The batch a TensorRT engine for this batching config is optimised for: the largest
    preferred batch size, else half the largest batch (what the dynamic batcher forms under
    load without preferred sizes is between one and the maximum)."""
    return max(preferred_batch_sizes, default=max(1, max_batch_size // 2))


def batch_profile(config_path: Path) -> tuple[int, int, int]:
    """The batches (min, opt, max) a TensorRT engine of a Triton model must take: 1 to its
    config.pbtxt's max_batch_size, optimised for `opt_batch` of it. ValueError for a config
    without batching."""
    config = parse_config(config_path)
    most = int(config.get("max_batch_size", 0))
    if most < 1:
        raise ValueError(f"{config_path}: no max_batch_size >= 1 (a batching model)")
    preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
    return 1, opt_batch(most, [int(b) for b in preferred]), most


def trtexec_command(spec: ModelSpec, model_dir: Path, max_batch_size: int = 16) -> str:
    """The `trtexec` command that builds `<version>/model.plan` from `<version>/model.onnx` on a
    GPU host."""
    opt = opt_batch(max_batch_size)
    version_dir = Path(model_dir) / served_version(spec)

    def shapes(batch: int) -> str:
        return ",".join(
            f"{t.name}:{'x'.join(map(str, (batch, *spec.shape(t.name))))}" for t in spec.inputs
        )

    return (
        f"trtexec --onnx={version_dir / 'model.onnx'} --saveEngine={version_dir / 'model.plan'}"
        f" --minShapes={shapes(1)} --optShapes={shapes(opt)}"
        f" --maxShapes={shapes(max_batch_size)} --fp16"
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


_CONFIG_DTYPES = {"TYPE_UINT8": "uint8", "TYPE_INT32": "int32", "TYPE_FP32": "float32"}
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(float)": "float32"}


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
    return {"uint8": mc.TYPE_UINT8, "int32": mc.TYPE_INT32, "float32": mc.TYPE_FP32}[dtype]
