"""The model's files: where the shipped Triton repository is, and an exported ONNX file's
contract read back (`read_onnx_spec`). onnxruntime is imported inside the reader only, so core
still imports without it."""

from __future__ import annotations

from pathlib import Path

from .contract import ContractError, ModelSpec, session_spec


def shipped_repository() -> Path | None:
    """The Triton model repository shipped with dealseg (the model `deal`, version 1): inside the
    installed package (`pip install`, the wheel: site-packages/dealseg/model_repository/), else
    the `model_repository/` of a source checkout (an editable install, where this module lives
    in core/ beside it); None if neither has it."""
    package = Path(__file__).resolve().parent.parent  # site-packages/dealseg, or the checkout
    repo = package / "model_repository"
    return repo if (repo / "deal" / "config.pbtxt").is_file() else None


def read_onnx_spec(model_path: Path) -> ModelSpec:
    """Read the contract metadata of an exported ONNX file and check its tensors against it.

    Raises ContractError naming every difference (missing metadata, wrong dtype or shape).
    """
    import onnxruntime as ort  # lazy: core imports without onnxruntime

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ContractError(f"{model_path}: not a loadable ONNX model ({exc})") from exc
    return session_spec(session)
