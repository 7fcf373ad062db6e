"""`deal-export onnx`: checkpoint -> one ONNX graph honouring the contract, checked."""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dealseg.core import contract
from dealseg.training.checkpoint import Checkpoint, file_sha256, load_checkpoint
from dealseg.training.novelty import NOVELTY_KEY, Novelty, NoveltyStats

from .graph import DEALGraph
from .onnxfile import save_model

OPSET = 18
# Beside the contract's keys: the ModelConfig that built the graph (JSON), so the graph's weights
# can be put back into the same PyTorch model (bench/common.py `shipped_eager`).
MODEL_CONFIG_KEY = "dealseg.model_config"


@torch.no_grad()
def model_spec(
    ckpt: Checkpoint, graph: DEALGraph, bins: int, sha256: str, version: str, name: str
) -> contract.ModelSpec:
    """The contract metadata of `graph` (built from `ckpt`) at its configured input size, named
    `name` version `version`; the map and embedding shapes are read off one forward pass."""
    cfg = ckpt.model_config
    h, w = cfg.input_size
    outputs = graph(torch.zeros(1, h, w, 3, dtype=torch.uint8))
    out = dict(zip(contract.OUTPUT_NAMES, outputs, strict=True))
    return contract.ModelSpec(
        class_names=tuple(ckpt.class_names),
        palette=tuple(tuple(int(v) for v in c) for c in ckpt.palette),  # type: ignore[misc]
        input_size=(h, w),
        difficulty_size=tuple(out["difficulty"].shape[1:]),  # type: ignore[arg-type]
        segmentation_size=tuple(out["segmentation"].shape[1:]),  # type: ignore[arg-type]
        embedding_dim=out["embedding"].shape[1],
        bins=bins,
        mean=tuple(cfg.mean),  # type: ignore[arg-type]
        std=tuple(cfg.std),  # type: ignore[arg-type]
        model_version=version,
        checkpoint_sha256=sha256,
        model_name=name,
    )


def with_input_size(ckpt: Checkpoint, input_size: tuple[int, int] | None) -> Checkpoint:
    if input_size is None:
        return ckpt
    cfg = replace(ckpt.model_config, input_size=tuple(input_size))
    return replace(ckpt, model_config=cfg)


def check_name(name: str) -> str:
    """A model name Triton can serve from a folder of that name; ValueError otherwise."""
    if not contract.MODEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it names the model's folder in the Triton repository)"
        )
    return name


def prepare_graph(
    checkpoint: Path,
    input_size: tuple[int, int] | None,
    bins: int,
    version: str,
    name: str = contract.MODEL_NAME,
) -> tuple[DEALGraph, contract.ModelSpec]:
    """The graph to export from `checkpoint` and the contract metadata it will carry."""
    ckpt = with_input_size(load_checkpoint(checkpoint), input_size)
    graph = DEALGraph(ckpt.build_model(), bins).eval()
    sha = file_sha256(checkpoint)
    return graph, model_spec(ckpt, graph, bins, sha, version, check_name(name))


def export_onnx(
    checkpoint: Path,
    out: Path,
    input_size: tuple[int, int] | None = None,
    max_batch: int = 16,
    bins: int = 8,
    version: str = "1",
    name: str = contract.MODEL_NAME,
    novelty_data: Path | None = None,
) -> contract.ModelSpec:
    """Export `checkpoint` to `out` with contract names, a dynamic batch axis and metadata;
    with novelty statistics from the train and val splits of `novelty_data` when given."""
    from .novelty import export_with_novelty

    graph, spec = prepare_graph(checkpoint, input_size, bins, version, name)

    def export(stats: NoveltyStats | None, path: Path) -> None:
        graph.novelty = Novelty(stats)
        export_graph(graph, spec, path, max_batch)

    export_with_novelty(export, out, novelty_data)
    return spec


def export_graph(graph: DEALGraph, spec: contract.ModelSpec, out: Path, max_batch: int) -> None:
    """Write `graph` to `out` as ONNX with `spec`'s metadata, then run the ONNX checker."""
    import onnx

    h, w = spec.input_size
    image = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    box = torch.tensor([[0, 0, h, w]] * 2, dtype=torch.int32)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            graph,
            (image, box),
            str(raw),
            input_names=[t.name for t in contract.INPUTS],
            output_names=list(contract.OUTPUT_NAMES),
            dynamic_shapes={"image": {0: batch}, "valid_box": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(raw))
    cast_image_once(model)
    meta = {**spec.to_metadata(), MODEL_CONFIG_KEY: json.dumps(graph.model.cfg.to_dict())}
    if graph.novelty.stats is not None:
        meta[NOVELTY_KEY] = graph.novelty.stats.describe()
    save_model(model, meta, out, full_check=True)


def cast_image_once(model: Any) -> None:
    """Make the graph's one Cast of the uint8 `image` its only reader (in place): the exporter
    takes the batch size from `image` itself (a Shape node), and a composed graph passes it on
    through an Identity (export/attach.py); TensorRT refuses both on a UInt8 input (it may feed
    only a Cast). Identities of `image` are bypassed, its other readers read the Cast's output
    (the same shape), and the Cast runs first. ValueError when `image` has no Cast to float32
    among its readers (export/graph.py casts it first)."""
    import onnx

    graph, name = model.graph, contract.INPUT_NAME
    for identity in [n for n in graph.node if n.op_type == "Identity" and n.input[0] == name]:
        for node in graph.node:
            node.input[:] = [name if i == identity.output[0] else i for i in node.input]
        graph.node.remove(identity)
    readers = [n for n in graph.node if name in n.input]
    casts = [
        n
        for n in readers
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]
    if not casts:
        raise ValueError(f"the graph reads {name!r} without casting it to float")
    first = casts[0]
    for node in readers:
        if node is not first:
            node.input[:] = [first.output[0] if i == name else i for i in node.input]
    nodes = [copy.deepcopy(n) for n in (first, *(n for n in graph.node if n is not first))]
    del graph.node[:]  # the Cast reads a graph input only, so it may run first
    graph.node.extend(nodes)


def write_outputs_directly(model: Any) -> None:
    """Let the node that computes each graph output write it (in place), bypassing the Identity
    a composed graph copies it through (export/attach.py): TensorRT takes a UINT8 tensor only
    as a network input or output, never in between, and the uint8 maps would be."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for identity in [n for n in graph.node if n.op_type == "Identity" and n.output[0] in outputs]:
        source, target = identity.input[0], identity.output[0]
        producers = [n for n in graph.node if source in n.output]
        readers = [n for n in graph.node if source in n.input and n is not identity]
        if len(producers) != 1 or readers or source in outputs:
            continue  # a graph input, a tensor read elsewhere or another output: keep the copy
        producer = producers[0]
        producer.output[:] = [target if o == source else o for o in producer.output]
        graph.node.remove(identity)
