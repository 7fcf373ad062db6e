"""TensorRT path: a clear message where it cannot run; a real build and parity where it can."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dealseg.core import contract
from dealseg.export.cli import main as export_cli

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_without_tensorrt_the_command_says_what_to_install(tiny_onnx: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        export_cli, ["tensorrt", "--onnx", str(tiny_onnx), "--out", str(tmp_path / "m.plan")]
    )
    assert result.exit_code == 1
    assert "TensorRT is not installed" in result.output and "nvcr.io" in result.output
    assert not (tmp_path / "m.plan").exists()


def test_batch_profile_is_validated(tiny_onnx: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        export_cli,
        [
            "tensorrt",
            "--onnx",
            str(tiny_onnx),
            "--out",
            str(tmp_path / "m.plan"),
            "--min-batch",
            "8",
            "--opt-batch",
            "4",
        ],
    )
    assert result.exit_code == 2 and "min (8) <= opt (4)" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt package")
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_onnxruntime(tiny_onnx: Path, tmp_path: Path, fp16: bool) -> None:
    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    from dealseg.export.tensorrt import BatchProfile, build_engine, parity_vs_onnxruntime

    plan = build_engine(tiny_onnx, tmp_path / "m.plan", BatchProfile(1, 4, 8), fp16=fp16)
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 80, 3), dtype=np.uint8)
    diff = parity_vs_onnxruntime(plan, tiny_onnx, images)
    scale = 20 if fp16 else 1  # FP16 kernels inside; FP32 outputs
    assert diff["ds"] <= contract.TOL_DS * scale
    assert diff["entropy"] <= contract.TOL_ENTROPY * scale
    assert diff["embedding_min_cosine"] >= 0.999
