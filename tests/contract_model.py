"""A hand-built ONNX model that honours the graph contract with outputs you can work out by hand.

    segmentation  class 1 where the red channel > 127, else 0, sampled at stride 4 (every 4th
                  row and column from the first)
    ds, de, entropy   mean red, green, blue / 255
    class_fraction    [1 - r, r, 0, ...], r the share of class-1 pixels of the segmentation
    difficulty        the segmentation x 255
    entropy_map       the green channel at stride 4 (contract 3)
    embedding         the mean colour + 1, L2-normalised
    novelty           1 - mean green / 255 (contract 4)

so that on images with uniform bands of colour the error rates, rankings and metrics of
`deal-client eval` are exact. Its `valid_box` input is taken and ignored (no letterboxing
here); `contract="1"` writes the model as contract 1 had it, without that input, and
`contract="2"` without the entropy map. Built with
`onnx.helper`; its metadata is `ModelSpec.to_metadata()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dealseg.core.contract import (
    CONTRACT_VERSION,
    INPUT_NAME,
    LEGACY_CONTRACT,
    VALID_BOX_NAME,
    ModelSpec,
)
from dealseg.training.camvid import CAMVID_CLASSES

CLASSES = tuple(CAMVID_CLASSES)  # value 11 in a mask is void
SIZE = (32, 48)  # input H x W; the segmentation is 8 x 12
STRIDE = 4
OPSET = 17


def contract_spec(size: tuple[int, int] = SIZE, contract: str = CONTRACT_VERSION) -> ModelSpec:
    grid = (size[0] // STRIDE, size[1] // STRIDE)
    return ModelSpec(
        contract_version=contract,
        class_names=CLASSES,
        palette=tuple((20 * i, 255 - 20 * i, 128) for i in range(len(CLASSES))),
        input_size=size,
        difficulty_size=grid,
        segmentation_size=grid,
        embedding_dim=3,
        bins=10,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        model_version="7",  # a Triton version folder
        checkpoint_sha256="c0" * 32,
    )


def _nodes(size: tuple[int, int], entropy_map: bool) -> list:
    from onnx import TensorProto, helper

    h, w = size
    c = len(CLASSES)

    def const(name: str, value: np.ndarray):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, *_tensor(value))
        )

    return [
        const("k255", np.array(255.0, np.float32)),
        const("k127", np.array(127.0, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("starts", np.array([0, 0, 0], np.int64)),
        const("ends", np.array([h, w, 1], np.int64)),
        const("axes", np.array([1, 2, 3], np.int64)),
        const("steps", np.array([STRIDE, STRIDE, 1], np.int64)),
        const("squeeze3", np.array([3], np.int64)),
        const("one_axis", np.array([1], np.int64)),
        const("fraction_w", np.array([[-1.0, 1.0] + [0.0] * (c - 2)], np.float32)),  # [1, C]
        const("fraction_b", np.array([1.0] + [0.0] * (c - 1), np.float32)),  # [C]
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),  # [B, H, W, 3]
        helper.make_node("ReduceMean", ["x"], ["rgb"], axes=[1, 2], keepdims=0),  # [B, 3]
        helper.make_node("Div", ["rgb", "k255"], ["rgb01"]),
        *[
            node
            for channel, name in enumerate(("ds", "de", "entropy"))
            for node in (
                const(f"{name}_at", np.array([channel], np.int64)),
                helper.make_node("Gather", ["rgb01", f"{name}_at"], [f"{name}_col"], axis=1),
                helper.make_node("Squeeze", [f"{name}_col", "one_axis"], [name]),  # [B]
            )
        ],
        # segmentation: red > 127 at stride 4
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["red4"]),
        helper.make_node("Squeeze", ["red4", "squeeze3"], ["red_grid"]),  # [B, sh, sw]
        helper.make_node("Greater", ["red_grid", "k127"], ["is_red"]),
        helper.make_node("Cast", ["is_red"], ["segmentation"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["is_red"], ["red_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["red_f"], ["red_share"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["red_share"], ["share"], axes=[1], keepdims=1),  # [B, 1]
        helper.make_node("MatMul", ["share", "fraction_w"], ["fraction_wx"]),
        helper.make_node("Add", ["fraction_wx", "fraction_b"], ["class_fraction"]),  # [B, C]
        helper.make_node("Mul", ["red_f", "k255"], ["difficulty_f"]),
        helper.make_node("Cast", ["difficulty_f"], ["difficulty"], to=TensorProto.UINT8),
        helper.make_node("Add", ["rgb01", "one"], ["colour"]),  # [B, 3]
        helper.make_node("ReduceL2", ["colour"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["colour", "norm"], ["embedding"]),
        helper.make_node("Sub", ["one", "de"], ["novelty"]),  # [B]
        *(
            [
                const("green_starts", np.array([0, 0, 1], np.int64)),
                const("green_ends", np.array([h, w, 2], np.int64)),
                helper.make_node(
                    "Slice", ["x", "green_starts", "green_ends", "axes", "steps"], ["green4"]
                ),
                helper.make_node("Squeeze", ["green4", "squeeze3"], ["green_grid"]),
                helper.make_node("Cast", ["green_grid"], ["entropy_map"], to=TensorProto.UINT8),
            ]
            if entropy_map
            else []
        ),
    ]


def _tensor(value: np.ndarray) -> tuple:
    from onnx import TensorProto

    dtype = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    return dtype[value.dtype], value.shape, value.ravel().tolist()


def write_contract_model(
    path: Path, size: tuple[int, int] = SIZE, contract: str = CONTRACT_VERSION
) -> Path:
    """Write the model (input `size` H x W, graph `contract`) to `path`, checked by onnx's
    checker."""
    import onnx
    from onnx import TensorProto, helper

    spec = contract_spec(size, contract)
    grid = list(spec.segmentation_size)
    outputs = [
        *(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B"]) for n in ("ds", "de")),
        helper.make_tensor_value_info("entropy", TensorProto.FLOAT, ["B"]),
        helper.make_tensor_value_info("class_fraction", TensorProto.FLOAT, ["B", len(CLASSES)]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", 3]),
        helper.make_tensor_value_info("difficulty", TensorProto.UINT8, ["B", *grid]),
        helper.make_tensor_value_info("segmentation", TensorProto.UINT8, ["B", *grid]),
    ]
    entropy_map = "entropy_map" in spec.output_names
    if entropy_map:
        outputs.append(
            helper.make_tensor_value_info("entropy_map", TensorProto.UINT8, ["B", *grid])
        )
    if "novelty" in spec.output_names:
        outputs.insert(5, helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["B"]))
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["B", *size, 3])
    box = helper.make_tensor_value_info(VALID_BOX_NAME, TensorProto.INT32, ["B", 4])  # unused
    inputs = [image] if contract == LEGACY_CONTRACT else [image, box]
    graph = helper.make_graph(_nodes(size, entropy_map), "contract_model", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    helper.set_model_props(model, spec.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def band_image(red_rows: int, green: int, blue: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 [H, W, 3]: red 255 in the top `red_rows` rows (0 below), green and blue uniform."""
    image = np.zeros((*size, 3), np.uint8)
    image[:red_rows, :, 0] = 255
    image[..., 1], image[..., 2] = green, blue
    return image
