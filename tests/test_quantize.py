"""INT8 quantization: the quantized tiny model keeps the contract and ranks images like FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from dealseg.client.engines import EmbeddedEngine
from dealseg.core import contract
from dealseg.export.cli import main as export_cli
from dealseg.export.quantize import QuantizeError, quantize_model
from dealseg.training.streets.render import render_scene

SIZE = (64, 80)  # the tiny fixture's input size


def street_images(n: int, seed: int) -> np.ndarray:
    """[n, H, W, 3] uint8 procedural street scenes at the tiny model's input size."""
    return np.stack([render_scene(np.random.default_rng([seed, i]), SIZE)[0] for i in range(n)])


@pytest.fixture(scope="module")
def calibration_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = tmp_path_factory.mktemp("calibration")
    for i, image in enumerate(street_images(8, seed=1)):
        Image.fromarray(image).save(pool / f"street_{i}.png")
    (pool / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, not fatal
    return pool


@pytest.fixture(scope="module", params=["cpu", "tensorrt"])
def int8_model(
    tiny_onnx: Path, calibration_pool: Path, tmp_path_factory, request: pytest.FixtureRequest
) -> Path:
    """The tiny model in each INT8 format (ONNX Runtime runs both)."""
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    report = quantize_model(tiny_onnx, out, calibration_pool, count=6, fmt=request.param)
    assert report.calibration_images == 6 and report.quantized_convs > 40
    assert report.bytes_out < report.bytes_in
    return out


def test_int8_model_keeps_metadata_and_io_contract(tiny_onnx: Path, int8_model: Path) -> None:
    fp32, int8 = onnx.load(str(tiny_onnx)), onnx.load(str(int8_model))
    meta = {p.key: p.value for p in fp32.metadata_props}
    assert {p.key: p.value for p in int8.metadata_props} == meta
    assert any(k.startswith(contract.META_PREFIX) for k in meta)
    engine = EmbeddedEngine(int8_model)  # checks the contract, raises otherwise
    assert engine.spec == EmbeddedEngine(tiny_onnx).spec
    for batch in (1, 3):
        out = engine.infer(street_images(batch, seed=2), contract.OUTPUT_NAMES)
        for name in contract.OUTPUT_NAMES:
            assert out[name].shape == (batch, *engine.spec.shape(name)), name
            assert out[name].dtype == np.dtype(contract.SPECS[name].dtype), name


def test_only_the_segmenter_is_quantized(int8_model: Path) -> None:
    graph = onnx.load(str(int8_model)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert matmuls, "the PAM multiplies matrices"
    assert not any(i in dequantized for n in matmuls for i in n.input)  # PAM stays FP32
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert sum(n.input[1] in dequantized for n in convs) == len(convs) - 2  # both heads FP32


def test_int8_scores_follow_fp32(tiny_onnx: Path, int8_model: Path) -> None:
    images = street_images(16, seed=3)
    names = ["ds", "class_fraction", "embedding"]
    fp32, int8 = (EmbeddedEngine(m).infer(images, names) for m in (tiny_onnx, int8_model))
    assert np.abs(fp32["ds"] - int8["ds"]).max() < 0.01
    assert np.corrcoef(fp32["ds"], int8["ds"])[0, 1] > 0.8  # the tiny model's DS spread is small
    assert np.abs(fp32["class_fraction"] - int8["class_fraction"]).max() < 0.1
    cosine = (fp32["embedding"] * int8["embedding"]).sum(axis=1)  # both L2-normalised
    assert cosine.min() > 0.98


def test_each_format_writes_its_number_types(
    int8_model: Path, request: pytest.FixtureRequest
) -> None:
    """cpu: UINT8 activations and INT32 biases; tensorrt: INT8 activations with zero points 0
    and FP32 biases (TensorRT's parser refuses an INT32 DequantizeLinear)."""
    from onnx import numpy_helper

    graph = onnx.load(str(int8_model)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [values[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantized = [values.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"]
    int32 = [v for v in dequantized if v is not None and v.dtype == np.int32]
    if request.node.callspec.params["int8_model"] == "tensorrt":
        assert {z.dtype for z in zero_points} == {np.dtype(np.int8)}
        assert all(np.all(z == 0) for z in zero_points) and int32 == []
    else:
        assert {z.dtype for z in zero_points} == {np.dtype(np.uint8)} and int32


def test_cli_quantize(tiny_onnx: Path, calibration_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    args = [
        "quantize",
        "--model",
        str(tiny_onnx),
        "--out",
        str(out),
        "--calibration",
        str(calibration_pool),
        "--count",
        "2",
        "--weight-bits",
        "7",
    ]
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    assert "calibrated on 2 images, 7-bit weights" in result.output and out.is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    args[6] = str(empty)
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 1 and "no decodable image" in result.output


def test_model_without_contract_is_refused(tmp_path: Path, calibration_pool: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    bare = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [x],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    path = tmp_path / "bare.onnx"
    onnx.save(bare, str(path))
    with pytest.raises(QuantizeError, match="metadata lacks"):
        quantize_model(path, tmp_path / "out.onnx", calibration_pool)


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: fpu sse2 avx2 fma {extra}
"""


def test_vnni_is_read_from_the_cpu_flags() -> None:
    from dealseg.export.quantize import cpu_has_vnni

    assert cpu_has_vnni(CPUINFO.format(vendor="AuthenticAMD", extra="avx512f avx512_vnni"))
    assert cpu_has_vnni(CPUINFO.format(vendor="GenuineIntel", extra="avx_vnni"))
    assert not cpu_has_vnni(CPUINFO.format(vendor="AuthenticAMD", extra="avx512f"))
    assert not cpu_has_vnni("")  # no flags line (another architecture): the safe 7 bits


def test_weight_bits_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from dealseg.export import quantize

    assert quantize.resolve_weight_bits("7") == 7 and quantize.resolve_weight_bits("8") == 8
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    assert quantize.resolve_weight_bits("auto") == 8
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    assert quantize.resolve_weight_bits("auto") == 7
    with pytest.raises(QuantizeError, match="use one of auto, 7, 8"):
        quantize.resolve_weight_bits("6")


def _gemm_weight_range(model_path: Path) -> int:
    """The largest |INT8 weight| of the non-depthwise convolutions of a QDQ model."""
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    widest = 0
    for node in graph.node:
        w = weights.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is not None and w.dtype == np.int8 and w.ndim == 4 and w.shape[1] > 1:
            widest = max(widest, int(np.abs(w.astype(np.int16)).max()))
    return widest


def test_weight_bits_set_the_gemm_weight_range(
    tiny_onnx: Path, calibration_pool: Path, tmp_path: Path
) -> None:
    widths = {}
    for bits in ("7", "8"):
        out = tmp_path / f"w{bits}.onnx"
        report = quantize_model(tiny_onnx, out, calibration_pool, count=2, weight_bits=bits)
        assert report.weight_bits == int(bits)
        widths[bits] = _gemm_weight_range(out)
    assert widths["7"] <= 64 < widths["8"] <= 127  # symmetric: the largest weight maps to 127


def test_equal_channel_constants_become_scalars_with_the_same_outputs(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    from onnx import numpy_helper

    from dealseg.export.quantize import scalar_constants

    model = onnx.load(str(tiny_onnx))
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    changed = scalar_constants(model)
    assert sorted(changed) == ["mean", "std"]  # the input normalisation: equal per channel
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name in changed:
        assert after[name].shape == () and np.all(before[name] == after[name])
    path = tmp_path / "scalar.onnx"
    onnx.save(model, str(path))
    images = street_images(3, seed=4)
    plain, scalar = (
        EmbeddedEngine(m).infer(images, contract.OUTPUT_NAMES) for m in (tiny_onnx, path)
    )
    for name in contract.OUTPUT_NAMES:
        np.testing.assert_array_equal(plain[name], scalar[name], err_msg=name)


def test_unequal_channel_constants_stay(tiny_onnx: Path) -> None:
    from onnx import numpy_helper

    from dealseg.export.quantize import scalar_constants

    model = onnx.load(str(tiny_onnx))
    mean = next(i for i in model.graph.initializer if i.name == "mean")
    mean.CopyFrom(
        numpy_helper.from_array(np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1), "mean")
    )
    assert scalar_constants(model) == ["std"]
