"""The Triton Python-backend model (`serving/backend/model.py`) driven without a server.

A minimal stand-in for `triton_python_backend_utils` lets us reach paths the real server shields
(Triton validates dtype and shape before `execute`), and count ONNX Runtime runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dealseg.core.contract import MAP_OUTPUTS, OUTPUT_NAMES, SCORE_OUTPUTS, model_inputs
from dealseg.core.modelfile import read_onnx_spec
from dealseg.serving.repository import (
    BACKEND_MODEL_PY,
    parse_config,
    write_repository,
)


# -- a stand-in for triton_python_backend_utils ------------------------------------------------
class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class Request:
    def __init__(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = ()) -> None:
        self.inputs, self.outputs = inputs, outputs

    def requested_output_names(self) -> list[str]:
        return list(self.outputs)


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    return Tensor(name, request.inputs[name]) if name in request.inputs else None


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = Tensor
    module.TritonError = TritonError
    module.InferenceResponse = InferenceResponse
    module.get_input_tensor_by_name = get_input_tensor_by_name
    module.Logger = types.SimpleNamespace(log_info=lambda message: None)
    return module


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec(tiny_onnx: Path):
    return read_onnx_spec(tiny_onnx)


@pytest.fixture
def model(tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An initialized TritonPythonModel from a freshly written python-cpu repository."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    model_dir = write_repository(tiny_onnx, tmp_path, "python-cpu")
    module_spec = importlib.util.spec_from_file_location("deal_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(parse_config(model_dir / "config.pbtxt")),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    runs: list[int] = []
    session = instance.session

    class CountingSession:  # records the batch size of every ORT run
        def run(self, names, feeds):
            runs.append(len(feeds["image"]))
            return session.run(names, feeds)

    instance.session = CountingSession()
    instance.runs = runs
    yield instance
    instance.finalize()


@pytest.fixture(scope="module")
def reference(tiny_onnx: Path, spec):
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        arrays = session.run(list(OUTPUT_NAMES), model_inputs(spec, images))
        return dict(zip(OUTPUT_NAMES, arrays, strict=True))

    return run


def images_for(spec, n: int, seed: int = 0) -> np.ndarray:
    h, w = spec.input_size
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def inputs(spec, images: np.ndarray) -> dict[str, np.ndarray]:
    """A request's inputs: the images and their valid boxes (the whole frame)."""
    return model_inputs(spec, images)


# -- tests -------------------------------------------------------------------------------------
def test_backend_imports_only_numpy_onnxruntime_json_and_pb_utils() -> None:
    tree = ast.parse(BACKEND_MODEL_PY.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported == {"json", "numpy", "onnxruntime", "triton_python_backend_utils"}


def test_requests_run_as_one_batch_and_split_back_in_order(model, spec, reference) -> None:
    images = images_for(spec, 6)
    requests = [
        Request(inputs(spec, images[:1]), ("ds",)),
        Request(inputs(spec, images[1:3]), ("class_fraction", "difficulty")),
        Request(inputs(spec, images[3:6]), tuple(OUTPUT_NAMES)),
    ]
    responses = model.execute(requests)

    assert model.runs == [6]  # one ONNX Runtime run for all three requests
    assert len(responses) == 3 and all(r.error is None for r in responses)
    expected = reference(images)
    for request, response, rows in zip(requests, responses, [(0, 1), (1, 3), (3, 6)], strict=True):
        assert sorted(response.tensors) == sorted(request.outputs)
        for name, array in response.tensors.items():
            want = expected[name][slice(*rows)]
            assert array.dtype == want.dtype and array.shape == want.shape
            np.testing.assert_allclose(array, want, atol=1e-5)


def test_request_without_requested_outputs_gets_the_score_outputs(model, spec) -> None:
    (response,) = model.execute([Request(inputs(spec, images_for(spec, 2)))])
    assert response.error is None
    assert sorted(response.tensors) == sorted(SCORE_OUTPUTS)
    assert not set(MAP_OUTPUTS) & set(response.tensors)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda im: {}, "missing input 'image'"),
        (lambda im: {"image": im.astype(np.float32)}, "must be UINT8"),
        (lambda im: {"image": im[:, :, :, :2]}, "must have shape"),
        (lambda im: {"image": im[0]}, "must have shape"),
        (lambda im: {"image": im[:, 1:]}, "must have shape"),
        (lambda im: {"image": im, "valid_box": np.zeros((1, 4), np.float32)}, "must be INT32"),
        (lambda im: {"image": np.concatenate([im, im])}, "inputs of different batch sizes"),
    ],
    ids=["missing", "dtype", "channels", "no-batch", "size", "box-dtype", "batches"],
)
def test_malformed_request_gets_an_error_and_the_others_still_run(
    model, spec, reference, make_input, message
) -> None:
    images = images_for(spec, 3, seed=1)
    requests = [
        Request(inputs(spec, images[:1]), ("ds",)),
        Request(
            {"valid_box": inputs(spec, images[1:2])["valid_box"], **make_input(images[1:2])},
            ("ds",),
        ),
        Request(inputs(spec, images[2:]), ("ds",)),
    ]
    first, bad, last = model.execute(requests)

    assert bad.error is not None and message in bad.error.message()
    assert not bad.tensors
    assert model.runs == [2]
    expected = reference(images[[0, 2]])["ds"]
    np.testing.assert_allclose(first.tensors["ds"], expected[:1], atol=1e-6)
    np.testing.assert_allclose(last.tensors["ds"], expected[1:], atol=1e-6)


def test_unknown_output_is_an_error(model, spec) -> None:
    (response,) = model.execute([Request(inputs(spec, images_for(spec, 1)), ("logits",))])
    assert "unknown outputs ['logits']" in response.error.message()


def test_onnxruntime_failure_fails_each_request_of_the_run(model, spec) -> None:
    class Broken:
        def run(self, names, feeds):
            raise RuntimeError("boom")

    model.session = Broken()
    responses = model.execute(
        [Request(inputs(spec, images_for(spec, 1)), ("ds",)), Request({}, ("ds",))]
    )
    assert "onnxruntime failed on 1 images: boom" in responses[0].error.message()
    assert "missing input" in responses[1].error.message()
