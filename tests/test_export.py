"""Export: the graph honours the contract, agrees with PyTorch, and bad checkpoints fail clearly."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dealseg.core import contract
from dealseg.core.modelfile import read_onnx_spec
from dealseg.export.cli import main as export_cli
from dealseg.export.compare import compare, numpy_de, random_images, real_photos
from dealseg.export.graph import DEALGraph
from dealseg.training.checkpoint import CheckpointError, load_checkpoint, read_raw

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "model_repository" / "deal" / "1" / "model.onnx"


def check_against_contract(path: Path) -> contract.ModelSpec:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = contract.session_spec(session)  # metadata, then every tensor checked against it
    for batch in (1, 3):
        x = np.random.default_rng(batch).integers(0, 256, (batch, *spec.input_size, 3), np.uint8)
        out = dict(
            zip(
                contract.OUTPUT_NAMES,
                session.run(list(contract.OUTPUT_NAMES), contract.model_inputs(spec, x)),
                strict=True,
            )
        )
        for name in contract.OUTPUT_NAMES:
            assert out[name].shape == (batch, *spec.shape(name)), name
            assert out[name].dtype == np.dtype(contract.SPECS[name].dtype), name
        assert np.all((out["ds"] > 0) & (out["ds"] < 1))
        assert np.all((out["de"] >= 0) & (out["de"] <= np.log(spec.bins) + 1e-5))
        assert np.allclose(out["class_fraction"].sum(1), 1, atol=1e-5)
        assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-4)
        assert out["segmentation"].max() < spec.num_classes
    return spec


def test_tiny_export_honours_the_contract(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    spec = check_against_contract(tiny_onnx)
    assert spec.input_size == (64, 80) and spec.difficulty_size == (12, 16)
    assert spec.segmentation_size == (16, 20) and spec.embedding_dim == 16 + 48
    assert spec.class_names[0] == "sky" and spec.bins == 8
    assert len(spec.checkpoint_sha256) == 64
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18


def test_exported_graph_has_no_n_by_n_attention(tiny_onnx: Path) -> None:
    """PAM is exported in query blocks: no intermediate holds N x N energies (N = 12*16)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_onnx)))
    n = 12 * 16
    for value in model.graph.value_info:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[-2:] != [n, n], f"{value.name} is an N x N tensor {dims}"


def test_parity_on_random_and_real_photos(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    graph = DEALGraph(load_checkpoint(tiny_checkpoint).build_model(), bins=8)
    images = {**random_images(3, (64, 80)), **real_photos()}
    report = compare(graph, tiny_onnx, images)
    assert report.failures == [], report.table()
    assert report.images == len(images)
    assert report.max_abs["ds"] <= contract.TOL_DS
    assert report.max_abs["entropy"] <= contract.TOL_ENTROPY
    assert report.min_embedding_cosine >= contract.MIN_EMBEDDING_COSINE
    assert report.map_pixels_off_by_more_than_1 == 0
    # The table prints the bound that was applied: on this small grid two pixels' worth.
    seg_pixels = int(np.prod(read_onnx_spec(tiny_onnx).segmentation_size))
    tol = max(contract.TOL_CLASS_FRACTION, 2 / seg_pixels)
    assert report.tolerance["class_fraction"] == tol
    assert f"| class_fraction | {report.max_abs['class_fraction']:.2e} | {tol:.3g} |" in (
        report.table()
    )


@pytest.mark.slow
def test_the_uncertainty_head_exports_with_parity(tmp_path: Path) -> None:
    from conftest import make_tiny_checkpoint

    from dealseg.export.onnx_export import export_onnx

    ckpt = make_tiny_checkpoint(
        tmp_path / "u.pt",
        difficulty_inputs="Q+U+UA+LP+DEC",
        difficulty_hidden=8,
        difficulty_context=3,
    )
    out = tmp_path / "u.onnx"
    export_onnx(ckpt, out, max_batch=4)
    graph = DEALGraph(load_checkpoint(ckpt).build_model(), bins=8)
    report = compare(graph, out, {**random_images(2, (64, 80)), **real_photos()})
    assert report.failures == [], report.table()
    assert report.max_abs["ds"] <= contract.TOL_DS


def test_numpy_de_reference() -> None:
    d = np.array([[0.0, 0.0, 1.0, 1.0]])
    assert numpy_de(d, 8) == pytest.approx(np.log(2))
    assert numpy_de(np.full((3, 3), 0.2), 8) == 0.0


@pytest.mark.slow
def test_cli_onnx_prints_the_parity_table(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        export_cli,
        [
            "onnx",
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--input-size",
            "96x128",
            "--bins",
            "10",
            "--max-batch",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| ds |" in result.output and "parity: OK" in result.output
    spec = check_against_contract(out)
    assert spec.input_size == (96, 128) and spec.bins == 10 and spec.segmentation_size == (24, 32)


# ---- bad checkpoints: a specific error, never a traceback from inside torch


class NeedsCode:
    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def bad_checkpoints(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    raw = read_raw(good)
    cases: dict[str, tuple[Path, str]] = {}
    wrong_keys = dict(raw, state_dict={("x." + k): v for k, v in raw["state_dict"].items()})
    torch.save(wrong_keys, tmp / "keys.pt")
    cases["wrong keys"] = (tmp / "keys.pt", "do not fit")
    cfg = dict(raw["model_config"], num_classes=5)
    torch.save(
        dict(raw, model_config=cfg, class_names=raw["class_names"][:5], palette=raw["palette"][:5]),
        tmp / "classes.pt",
    )
    cases["wrong class count"] = (tmp / "classes.pt", "shapes do not fit")
    torch.save(dict(raw, class_names=raw["class_names"][:3]), tmp / "names.pt")
    cases["names vs classes"] = (tmp / "names.pt", "3 class names")
    torch.save({"model": NeedsCode()}, tmp / "pickle.pt")
    cases["pickle needing code"] = (tmp / "pickle.pt", "arbitrary code")
    (tmp / "trunc.pt").write_bytes(good.read_bytes()[:5000])
    cases["truncated"] = (tmp / "trunc.pt", "corrupt or truncated")
    (tmp / "text.pt").write_text("hello")
    cases["not a checkpoint"] = (tmp / "text.pt", "corrupt or truncated")
    torch.save({"state_dict": raw["state_dict"]}, tmp / "bare.pt")
    cases["bare state dict"] = (tmp / "bare.pt", "not a dealseg checkpoint")
    with open(tmp / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    cases["plain pickle"] = (tmp / "plain.pkl", "dealseg|corrupt")
    return cases


def test_bad_checkpoints_fail_with_specific_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for name, (path, message) in bad_checkpoints(tiny_checkpoint, tmp_path).items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path).build_model()
        result = CliRunner().invoke(
            export_cli, ["onnx", "--checkpoint", str(path), "--out", str(tmp_path / "x.onnx")]
        )
        assert result.exit_code == 1, (name, result.output)
        assert "Error:" in result.output and "Traceback" not in result.output, name
        assert not isinstance(result.exception, (RuntimeError, zipfile.BadZipFile)), name


def test_shipped_model_honours_the_contract() -> None:
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: it is the default model of deal-client"
    assert SHIPPED.stat().st_size <= 32 * 2**20
    spec = check_against_contract(SHIPPED)
    assert spec.num_classes == 11 and spec.class_names[2] == "Pole"


def test_the_graph_records_the_model_config_that_built_it(
    tiny_checkpoint: Path, tiny_onnx: Path
) -> None:
    import json

    from dealseg.export.onnx_export import MODEL_CONFIG_KEY
    from dealseg.training.model import ModelConfig

    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    recorded = ModelConfig.from_dict(json.loads(meta[MODEL_CONFIG_KEY]))
    assert recorded == load_checkpoint(tiny_checkpoint).model_config
    assert read_onnx_spec(tiny_onnx).model_id  # the contract's reader ignores the extra key


def test_reexport_keeps_weights_metadata_and_outputs(tiny_onnx: Path, tmp_path: Path) -> None:
    """A graph exported again from itself: the same weights bit for bit, the same metadata and
    model id, the same outputs; `image` read by one Cast only."""
    from dealseg.export.reexport import reexport

    out = tmp_path / "again.onnx"
    report = reexport(tiny_onnx, out, max_batch=4)
    assert report.spec == read_onnx_spec(tiny_onnx) == read_onnx_spec(out)
    assert report.weights > 100 and max(report.max_abs.values()) == 0.0
    before, after = (
        {p.key: p.value for p in onnx.load(str(m)).metadata_props} for m in (tiny_onnx, out)
    )
    assert before == after
    graph = onnx.load(str(out)).graph
    readers = [n.op_type for n in graph.node if contract.INPUT_NAME in n.input]
    assert readers == ["Cast"] and graph.node[0].op_type == "Cast"


def test_reexport_refuses_a_graph_without_its_model_config(tiny_onnx: Path, tmp_path: Path) -> None:
    from dealseg.export.onnx_export import MODEL_CONFIG_KEY

    model = onnx.load(str(tiny_onnx))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != MODEL_CONFIG_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(export_cli, ["reexport", "--model", str(bare), "--out", str(out)])
    assert result.exit_code == 1 and MODEL_CONFIG_KEY in result.output
    assert "deal-export onnx" in result.output and not out.exists()


def test_the_shipped_model_is_todays_export_of_its_own_weights() -> None:
    """The committed graph reads `image` with one Cast only (what TensorRT needs) and still
    carries the ModelConfig that `deal-export reexport` rebuilds it from."""
    from dealseg.export.onnx_export import MODEL_CONFIG_KEY

    model = onnx.load(str(SHIPPED))
    assert [n.op_type for n in model.graph.node if contract.INPUT_NAME in n.input] == ["Cast"]
    assert MODEL_CONFIG_KEY in {p.key for p in model.metadata_props}
    assert read_onnx_spec(SHIPPED).model_id == "deal:1:7163a1e12143faa6"
