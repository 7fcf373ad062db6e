"""TensorRT path: every graph we export parsed and built by TensorRT-RTX's real parser and builder
on this host (no GPU: its ahead-of-time build), with the batch profile of its Triton config and
polygraphy's lint; a clear message where TensorRT cannot run; a real build and parity where it
can (a CUDA host with `tensorrt`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dealseg.core import contract
from dealseg.export.cli import main as export_cli
from dealseg.export.tensorrt import RTX_MODULES, BatchProfile, GraphRefused
from dealseg.serving.repository import batch_profile, write_repository

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_RTX = any(importlib.util.find_spec(m) for m in RTX_MODULES)
needs_rtx = pytest.mark.skipif(
    not HAS_RTX, reason="needs TensorRT-RTX: pip install 'dealseg[trt]' (`make install` does)"
)
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "model_repository" / "deal" / "1" / "model.onnx"


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


# ---- TensorRT-RTX: the parser and builder on this host, for every graph we export


@pytest.fixture(scope="module")
def calibration_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from dealseg.training.streets.render import render_scene

    pool = tmp_path_factory.mktemp("calibration")
    for i in range(4):
        image = render_scene(np.random.default_rng([5, i]), (64, 80))[0]
        Image.fromarray(image).save(pool / f"street_{i}.png")
    return pool


@pytest.fixture(scope="module")
def exported_graphs(
    tiny_onnx: Path, calibration_pool: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """Every kind of graph the exporter writes -> (model.onnx, its Triton config.pbtxt): the
    shipped model, a tiny letterbox (contract 2) graph, one with the uncertainty head's inputs,
    the tiny graph quantized to INT8 in TensorRT's format, and a foreign segmenter with the
    difficulty head attached (`deal-export attach`)."""
    from conftest import make_tiny_checkpoint

    from dealseg.export.onnx_export import export_onnx
    from dealseg.export.quantize import quantize_model

    tmp = tmp_path_factory.mktemp("graphs")
    head = make_tiny_checkpoint(
        tmp / "u.pt", difficulty_inputs="Q+U+UA+LP+DEC", difficulty_hidden=8, difficulty_context=3
    )
    export_onnx(head, tmp / "uncertainty.onnx", max_batch=8)
    quantize_model(tiny_onnx, tmp / "int8.onnx", calibration_pool, count=4, fmt="tensorrt")
    graphs = {"shipped": (SHIPPED, SHIPPED.parents[1] / "config.pbtxt")}
    batching = {"letterbox": 16, "uncertainty": 8, "int8-tensorrt": 4, "attached": 8}
    for name, model in (
        ("letterbox", tiny_onnx),
        ("uncertainty", tmp / "uncertainty.onnx"),
        ("int8-tensorrt", tmp / "int8.onnx"),
        ("attached", attached_graph(tmp / "attach")),
    ):
        folder = write_repository(model, tmp / name, max_batch_size=batching[name])
        graphs[name] = (model, folder / "config.pbtxt")
    return graphs


def attached_graph(work: Path) -> Path:
    """A small U-Net that is not ours (briefly trained: TensorRT needs its ops, not its skill;
    an untrained one's near-constant outputs make the head's standardised inputs float noise)
    with the difficulty head attached after two training steps and a pixel read-out (put in
    whatever the tiny val split decided), wrapped by `deal-export attach`."""
    import torch
    from foreign_segmenters import (
        UNet,
        export_segmenter,
        street_set,
        train_segmenter,
        unet_input,
        with_pixel_readout,
    )

    from dealseg.training.cli import main as train_cli

    data = street_set(work / "set", 50, (64, 80), seed=3)  # a val split the refit takes (>= 4)
    torch.manual_seed(0)
    unet = train_segmenter(UNet(11, 8), data, unet_input, nhwc_out=False, steps=20)
    export_segmenter(unet.eval(), torch.zeros(2, 3, 64, 80), work / "unet.onnx")
    run = ["attach", "--segmenter", work / "unet.onnx", "--data", data, "--out", work / "run"]
    result = CliRunner().invoke(train_cli, [*map(str, run), "steps=2"])
    assert result.exit_code == 0, result.output
    out = work / "unet-deal.onnx"
    head = with_pixel_readout(work / "run" / "head.pt", work / "head.pt")
    wrap = ["attach", "--head", head, "--segmenter", work / "unet.onnx"]
    result = CliRunner().invoke(export_cli, [*map(str, wrap), "--out", str(out)])
    assert result.exit_code == 0, result.output  # its own check: argmax and scores kept
    return out


def image_readers(model: Path) -> list[str]:
    """Op types of the nodes reading the uint8 `image` input (onnx-graphsurgeon)."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(model)))
    image = next(t for t in graph.inputs if t.name == contract.INPUT_NAME)
    return [node.op for node in image.outputs]


def polygraphy(*args: str) -> str:
    """Run the polygraphy CLI of this environment; its output (it must succeed)."""
    import subprocess
    import sys

    cli = Path(sys.executable).with_name("polygraphy")
    done = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_rtx
@pytest.mark.parametrize(
    "graph", ["shipped", "letterbox", "uncertainty", "int8-tensorrt", "attached"]
)
def test_every_exported_graph_parses_and_builds_with_tensorrt_rtx(
    exported_graphs: dict[str, tuple[Path, Path]], graph: str, tmp_path: Path
) -> None:
    import json

    from dealseg.export.tensorrt import check_with_tensorrt_rtx
    from dealseg.serving.repository import parse_config

    model, config = exported_graphs[graph]
    profile = BatchProfile(*batch_profile(config))
    most = int(parse_config(config)["max_batch_size"])
    assert (profile.min_batch, profile.max_batch) == (1, most)
    assert image_readers(model) == ["Cast"]  # TensorRT: a UInt8 input may feed only a Cast
    try:
        report = check_with_tensorrt_rtx(model, profile, tmp_path / "model.plan")
    except GraphRefused as exc:  # names each refused node: index, name, op type, reason
        pytest.fail(f"{graph}: {exc}")
    assert report.inputs == {"image": "UINT8", "valid_box": "INT32"}
    assert report.layers > 100
    assert (tmp_path / "model.plan").stat().st_size == report.engine_bytes > 0
    # polygraphy: the ONNX checker and ONNX Runtime over every node (lint), then inspect
    batch = f"--input-shapes image:[2,{','.join(map(str, read_size(model)))},3] valid_box:[2,4]"
    lint = polygraphy(
        "check", "lint", str(model), "-o", str(tmp_path / "lint.json"), *batch.split()
    )
    assert "PASSED" in lint
    found = json.loads((tmp_path / "lint.json").read_text())
    assert found["summary"]["failing"] == [] and found["lint_entries"] == []
    shown = polygraphy("inspect", "model", str(model), "--show", "layers")
    assert "image [dtype=uint8" in shown and "valid_box [dtype=int32" in shown
    assert all(f"{name} [dtype=" in shown for name in contract.OUTPUT_NAMES)


def read_size(model: Path) -> tuple[int, int]:
    from dealseg.core.modelfile import read_onnx_spec

    return read_onnx_spec(model).input_size


@needs_rtx
def test_a_refused_graph_names_the_node_and_its_op(
    tiny_onnx: Path, calibration_pool: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's CPU INT8 format (INT32 biases) is not TensorRT's: the refusal names the
    node and op, through the API and as one CLI error."""
    from dealseg.export.quantize import quantize_model
    from dealseg.export.tensorrt import check_with_tensorrt_rtx

    cpu_int8 = tmp_path / "int8-cpu.onnx"
    quantize_model(tiny_onnx, cpu_int8, calibration_pool, count=4, fmt="cpu")
    with pytest.raises(
        GraphRefused, match=r"node \d+ '[^']+bias[^']*' \(DequantizeLinear\): .*Int32"
    ):
        check_with_tensorrt_rtx(cpu_int8, BatchProfile(1, 2, 4))
    result = CliRunner().invoke(export_cli, ["trt-check", "--onnx", str(cpu_int8)])
    assert result.exit_code == 1 and "(DequantizeLinear)" in result.output
    assert "Traceback" not in result.output


@needs_rtx
def test_trt_check_takes_the_profile_from_the_config_beside_the_model() -> None:
    result = CliRunner().invoke(export_cli, ["trt-check", "--onnx", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "parsed and built" in result.output and "batch 1/8/16 (from " in result.output


def test_the_profile_follows_the_triton_batching(tiny_onnx: Path, tmp_path: Path) -> None:
    plain = write_repository(tiny_onnx, tmp_path / "a", max_batch_size=16) / "config.pbtxt"
    assert batch_profile(plain) == (1, 8, 16)
    preferred = write_repository(
        tiny_onnx, tmp_path / "b", max_batch_size=32, preferred_batch_sizes=(4, 12)
    )
    assert batch_profile(preferred / "config.pbtxt") == (1, 12, 32)


@pytest.mark.skipif(HAS_RTX, reason="TensorRT-RTX is installed here")
def test_without_tensorrt_rtx_trt_check_says_what_to_install(tiny_onnx: Path) -> None:
    result = CliRunner().invoke(export_cli, ["trt-check", "--onnx", str(tiny_onnx)])
    assert result.exit_code == 1 and "pip install 'dealseg[trt]'" in result.output
