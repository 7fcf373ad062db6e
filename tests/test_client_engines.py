"""Engines: the embedded ONNX Runtime engine, retry policy, and reading Triton's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dealseg.client.engines import (
    EmbeddedEngine,
    EngineError,
    _is_transient,
    _served_io,
    with_retries,
)
from dealseg.core.contract import SCORE_OUTPUTS, ContractError, check_io


def test_embedded_engine_reads_the_spec_and_infers(tiny_onnx: Path) -> None:
    engine = EmbeddedEngine(tiny_onnx)
    spec = engine.spec
    h, w = spec.input_size
    images = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    out = engine.infer(images, SCORE_OUTPUTS)
    assert out["ds"].shape == (3,) and out["embedding"].shape == (3, spec.embedding_dim)
    one = engine.infer(images[1:2], ["ds", "difficulty", "segmentation"])
    assert one["ds"][0] == pytest.approx(out["ds"][1], abs=1e-5)  # batch-independent
    assert one["difficulty"].shape == (1, *spec.difficulty_size)
    assert one["segmentation"].dtype == np.uint8
    with pytest.raises(ValueError, match=f"uint8 \\[B, {h}, {w}, 3\\]"):
        engine.infer(images[:, :-1], ["ds"])


def test_embedded_engine_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no ONNX model at .*check --model"):
        EmbeddedEngine(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(EngineError, match="not a loadable ONNX model"):
        EmbeddedEngine(tmp_path / "junk.onnx")


def test_retries_back_off_on_transient_errors_only() -> None:
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise ConnectionRefusedError("Connection refused")

    with pytest.raises(EngineError, match="failed after 3 attempts: Connection refused"):
        with_retries(refused, retries=2, backoff=0.001, what="ping", on_retry=lambda: None)
    assert len(calls) == 3

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise TimeoutError("timed out")
        return "ok"

    assert with_retries(flaky, retries=5, backoff=0.001, what="x", on_retry=lambda: None) == "ok"

    def broken() -> None:
        raise RuntimeError("[StatusCode.INVALID_ARGUMENT] unexpected shape")

    with pytest.raises(EngineError, match="^x failed: .*INVALID_ARGUMENT"):
        with_retries(broken, retries=5, backoff=10, what="x", on_retry=lambda: None)


@pytest.mark.parametrize(
    "message, transient",
    [
        ("[StatusCode.UNAVAILABLE] failed to connect to all addresses", True),
        ("[StatusCode.DEADLINE_EXCEEDED] Deadline Exceeded", True),
        ("[Errno 111] Connection refused", True),
        ("[StatusCode.NOT_FOUND] Request for unknown model", False),
        ("[StatusCode.INVALID_ARGUMENT] bad input", False),
    ],
)
def test_transient_error_classification(message: str, transient: bool) -> None:
    assert _is_transient(RuntimeError(message)) is transient


def test_triton_metadata_reads_b1_scalars_as_b(tiny_onnx: Path) -> None:
    spec = EmbeddedEngine(tiny_onnx).spec
    h, w = spec.input_size
    meta = {
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": ["-1", str(h), str(w), "3"]},
            {"name": "valid_box", "datatype": "INT32", "shape": ["-1", "4"]},
        ],
        "outputs": [
            {"name": n, "datatype": "FP32", "shape": [-1, 1]}
            for n in ("ds", "de", "entropy", "novelty")
        ]
        + [
            {"name": "class_fraction", "datatype": "FP32", "shape": [-1, spec.num_classes]},
            {"name": "embedding", "datatype": "FP32", "shape": [-1, spec.embedding_dim]},
            {"name": "difficulty", "datatype": "UINT8", "shape": [-1, *spec.difficulty_size]},
            {"name": "segmentation", "datatype": "UINT8", "shape": [-1, *spec.segmentation_size]},
            {"name": "entropy_map", "datatype": "UINT8", "shape": [-1, *spec.segmentation_size]},
        ],
    }
    check_io(spec, *_served_io(meta, spec))
    meta["outputs"][4]["shape"] = [-1, spec.num_classes + 1]  # class_fraction
    with pytest.raises(ContractError, match="class_fraction: shape"):
        check_io(spec, *_served_io(meta, spec))
