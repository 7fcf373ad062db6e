"""`deal-export attach`: a foreign ONNX segmenter and the difficulty head trained on it
(`deal-train attach`) as one graph with the dealseg contract.

    image, valid_box -> [pre/: ForeignInput] -> [segmenter/: their graph, unchanged]
                     -> [post/: AttachedScores] -> ds, de, entropy, class_fraction, embedding,
                        difficulty, segmentation

The two torch parts are exported on their own and the three graphs joined by name: each keeps
its nodes and weights under a prefix, Identity nodes wire one part's output to the next one's
input, and the opset is the highest of the three (an older segmenter is converted up with
onnx.version_converter). The embedded engine, Triton and the Ray path serve the result like any
exported model. `check_attached` proves the wrap: the graph's segmentation equals the argmax
of the segmenter's own output on given frames, and its scores match the torch head's.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dealseg.core import contract
from dealseg.training.attach import (
    AttachedHead,
    ForeignInput,
    head_sha256,
    load_head,
    open_session,
)
from dealseg.training.novelty import NOVELTY_KEY, NoveltyStats

from .onnx_export import OPSET, cast_image_once, check_name, write_outputs_directly
from .onnxfile import save_model

# Beside the contract's keys: what the graph wraps (the segmenter's sha256, its IO, the head's
# config), JSON.
ATTACHED_KEY = "dealseg.attached"
PRE, SEGMENTER, POST = "pre/", "segmenter/", "post/"
FOREIGN_INPUT, FOREIGN_OUTPUT = "foreign_input", "foreign_output"


def export_attached(
    head_path: Path,
    segmenter: Path,
    out: Path,
    bins: int = 8,
    max_batch: int = 16,
    version: str = "1",
    name: str = contract.MODEL_NAME,
    novelty_data: Path | None = None,
) -> contract.ModelSpec:
    """Write `out`: `segmenter` wrapped with the head of `head_path`, named `name` version
    `version`, checked by the ONNX checker; with novelty statistics of the wrapped graph's
    embeddings of `novelty_data`'s train and val splits when given (NaN novelty without)."""
    from .novelty import export_with_novelty

    head = load_head(head_path)
    head.check_segmenter(segmenter)
    spec = attached_spec(head, bins, version, check_name(name))

    def export(stats: NoveltyStats | None, path: Path) -> None:
        _write_attached(head, segmenter, spec, stats, path, max_batch)

    export_with_novelty(export, out, novelty_data)
    return spec


def _write_attached(
    head: AttachedHead,
    segmenter: Path,
    spec: contract.ModelSpec,
    stats: NoveltyStats | None,
    out: Path,
    max_batch: int,
) -> None:
    import onnx

    pre = ForeignInput(head.io).eval()
    post = head.scores(spec.bins, stats)
    with tempfile.TemporaryDirectory(prefix="dealseg-attach-") as tmp:
        pre_model = _export_part(
            pre,
            _pre_example(head),
            ("image", "valid_box"),
            (FOREIGN_INPUT,),
            Path(tmp) / "pre.onnx",
            max_batch,
        )
        post_model = _export_part(
            post,
            _post_example(head),
            ("valid_box", "output"),
            contract.OUTPUT_NAMES,
            Path(tmp) / "post.onnx",
            max_batch,
            input_names=("valid_box", FOREIGN_OUTPUT),
        )
    graph = compose(pre_model, onnx.load(str(segmenter)), post_model, head)
    cast_image_once(graph)  # TensorRT: the uint8 image may feed only a Cast,
    write_outputs_directly(graph)  # and a uint8 tensor is a network input or output only
    attached = {
        "segmenter_sha256": head.segmenter_sha256,
        "io": head.io.to_dict(),
        "config": head.config.to_dict(),
    }
    meta = {**spec.to_metadata(), ATTACHED_KEY: json.dumps(attached)}
    if stats is not None:
        meta[NOVELTY_KEY] = stats.describe()
    save_model(graph, meta, out, full_check=False)


def _pre_example(head: AttachedHead) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = head.io.input_size
    box = torch.tensor([[0, 0, h, w]] * 2, dtype=torch.int32)
    return torch.zeros(2, h, w, 3, dtype=torch.uint8), box


def _post_example(head: AttachedHead) -> tuple[torch.Tensor, torch.Tensor]:
    io = head.io
    h, w = io.input_size
    box = torch.tensor([[0, 0, h, w]] * 2, dtype=torch.int32)
    oh, ow = io.output_size
    shape = (
        (2, io.num_classes, oh, ow) if io.output_layout == "nchw" else (2, oh, ow, io.num_classes)
    )
    return box, torch.rand(shape)


def _export_part(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    args: tuple[str, str],
    outputs: tuple[str, ...],
    path: Path,
    max_batch: int,
    input_names: tuple[str, ...] | None = None,
) -> Any:
    """One torch part as ONNX (opset OPSET, dynamic batch), loaded back."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(input_names or args),
            output_names=list(outputs),
            dynamic_shapes={arg: {0: batch} for arg in args},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return onnx.load(str(path))


@torch.no_grad()
def attached_spec(head: AttachedHead, bins: int, version: str, name: str) -> contract.ModelSpec:
    """The contract metadata of the wrapped graph; map and embedding shapes from one pass."""
    post = head.scores(bins)
    box, output = _post_example(head)
    out = dict(zip(contract.OUTPUT_NAMES, post(box, output), strict=True))
    return contract.ModelSpec(
        class_names=tuple(head.class_names),
        palette=tuple(tuple(int(v) for v in c) for c in head.palette),  # type: ignore[misc]
        input_size=head.io.input_size,
        difficulty_size=tuple(out["difficulty"].shape[1:]),  # type: ignore[arg-type]
        segmentation_size=tuple(out["segmentation"].shape[1:]),  # type: ignore[arg-type]
        embedding_dim=out["embedding"].shape[1],
        bins=bins,
        mean=head.io.rgb_mean,
        std=head.io.rgb_std,
        model_version=version,
        checkpoint_sha256=head_sha256(head),
        model_name=name,
    )


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def compose(pre: Any, segmenter: Any, post: Any, head: AttachedHead) -> Any:
    """The three graphs as one model: prefixed, wired by Identity nodes, one opset."""
    from onnx import compose as onnx_compose
    from onnx import helper, version_converter

    opset = max(_opset(m) for m in (pre, segmenter, post))
    parts = []
    for model, prefix in ((pre, PRE), (segmenter, SEGMENTER), (post, POST)):
        if _opset(model) != opset:
            model = version_converter.convert_version(model, opset)
        parts.append(onnx_compose.add_prefix(model, prefix))
    io = head.io
    wires = [
        ("image", PRE + "image"),
        (contract.VALID_BOX_NAME, PRE + "valid_box"),
        (contract.VALID_BOX_NAME, POST + "valid_box"),
        (PRE + FOREIGN_INPUT, SEGMENTER + io.input_name),
        (SEGMENTER + io.output_name, POST + FOREIGN_OUTPUT),
    ]
    first = [helper.make_node("Identity", [a], [b], name=f"wire/{b}") for a, b in wires[:3]]
    into = helper.make_node("Identity", [wires[3][0]], [wires[3][1]], name="wire/segmenter_in")
    out_of = helper.make_node("Identity", [wires[4][0]], [wires[4][1]], name="wire/segmenter_out")
    last = [
        helper.make_node("Identity", [POST + n], [n], name=f"wire/{n}")
        for n in contract.OUTPUT_NAMES
    ]
    pre_g, seg_g, post_g = (p.graph for p in parts)
    graph = helper.make_graph(
        [*first, *pre_g.node, into, *seg_g.node, out_of, *post_g.node, *last],
        "dealseg_attached",
        inputs=[_renamed(v, PRE) for v in pre_g.input],
        outputs=[_renamed(v, POST) for v in post_g.output],
        initializer=[*pre_g.initializer, *seg_g.initializer, *post_g.initializer],
        value_info=[*pre_g.value_info, *seg_g.value_info, *post_g.value_info],
    )
    graph.sparse_initializer.extend(
        [*pre_g.sparse_initializer, *seg_g.sparse_initializer, *post_g.sparse_initializer]
    )
    model = helper.make_model(graph, opset_imports=_opset_imports(parts))
    model.ir_version = max(p.ir_version for p in parts)
    model.functions.extend([f for p in parts for f in p.functions])
    return model


def _renamed(value: Any, prefix: str) -> Any:
    copy = type(value)()
    copy.CopyFrom(value)
    copy.name = value.name[len(prefix) :]
    return copy


def _opset_imports(parts: list[Any]) -> list[Any]:
    from onnx import helper

    versions: dict[str, int] = {}
    for part in parts:
        for o in part.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            if versions.setdefault(domain, o.version) != o.version:
                raise ValueError(
                    f"the segmenter imports opset {domain or 'ai.onnx'} version {o.version}, the "
                    f"head {versions[domain]}: re-export the segmenter with that version"
                )
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items())]


@dataclass
class AttachedCheck:
    """The wrapped graph against the segmenter alone and the torch head, on some frames."""

    frames: int = 0
    argmax_mismatches: int = 0  # segmentation pixels unlike the segmenter's own argmax
    max_abs: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def check_attached(
    model: Path, segmenter: Path, head_path: Path, frames: np.ndarray, batch: int = 4
) -> AttachedCheck:
    """Run `model` (the wrapped graph) and `segmenter` (fed as its owner would: the documented
    normalisation in numpy) on `frames` [N, H, W, 3] uint8 at the input size: the graph's
    segmentation must equal the segmenter's argmax on every pixel, and its scores match the
    torch head's on the segmenter's output."""
    head = load_head(head_path)
    io = head.io
    graph, own = open_session(model), open_session(segmenter)
    spec = contract.session_spec(graph)
    torch_scores = head.scores(spec.bins)
    names = [o.name for o in graph.get_outputs()]
    report = AttachedCheck(max_abs={"ds": 0.0, "de": 0.0, "entropy": 0.0})
    for start in range(0, len(frames), batch):
        chunk = np.ascontiguousarray(frames[start : start + batch])
        got = dict(zip(names, graph.run(names, contract.model_inputs(spec, chunk)), strict=True))
        output = own.run([io.output_name], {io.input_name: owner_input(io, chunk)})[0]
        axis = 1 if io.output_layout == "nchw" else 3
        report.argmax_mismatches += int((got["segmentation"] != output.argmax(axis)).sum())
        with torch.no_grad():
            box = torch.from_numpy(contract.full_boxes(len(chunk), io.input_size))
            ref = dict(
                zip(contract.OUTPUT_NAMES, torch_scores(box, torch.from_numpy(output)), strict=True)
            )
        for key in report.max_abs:
            diff = float(np.abs(got[key] - ref[key].numpy()).max())
            report.max_abs[key] = max(report.max_abs[key], diff)
        report.frames += len(chunk)
    if report.argmax_mismatches:
        report.failures.append(
            f"{report.argmax_mismatches} segmentation pixels differ from the segmenter's argmax"
        )
    for key, tol in (("ds", contract.TOL_DS), ("entropy", contract.TOL_ENTROPY)):
        if report.max_abs[key] > tol:
            report.failures.append(f"{key}: max abs diff {report.max_abs[key]:.2e} > {tol}")
    return report


def owner_input(io: Any, frames: np.ndarray) -> np.ndarray:
    """The segmenter's input from uint8 RGB frames as its owner computes it in numpy:
    channel order, (pixel / (255 / pixel_range) - mean) / std, layout."""
    x = frames.astype(np.float32)
    if io.channel_order == "bgr":
        x = x[..., ::-1]
    x = (x / np.float32(255.0 / io.pixel_range) - np.asarray(io.mean, np.float32)) / np.asarray(
        io.std, np.float32
    )
    x = x.transpose(0, 3, 1, 2) if io.input_layout == "nchw" else x
    return np.ascontiguousarray(x, dtype=np.float32)
