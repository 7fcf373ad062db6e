"""`deal-export reexport`: an exported graph through today's exporter, weights and metadata kept.

    model.onnx ─► ModelConfig (`dealseg.model_config`) + initializers ─► DEALNet (eager)
               ─► DEALGraph ─► export_graph (same metadata, today's contract) ─► model.onnx

The shipped model has no checkpoint beside it, only its graph; when the graph changes (a Cast
for TensorRT, a new output) it is re-exported from itself with this command, so it stays a
function of the same weights. The contract metadata (class names, palette, bins, model name and
version, checkpoint digest) is copied and the contract version raised to today's (a contract 2
graph gains the `entropy_map` output): the model id, which names the weights, stays the same, and
`reexport` checks that it may: every weight of the new graph is the old one's, bit for bit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core import contract
from dealseg.core.files import atomic_output

from .onnx_export import MODEL_CONFIG_KEY, export_graph


class ReexportError(ValueError):
    """The graph cannot be re-exported as it is (the message says why)."""


@dataclass(frozen=True)
class ReexportReport:
    """What `reexport` wrote and how it compares with the graph it came from."""

    spec: contract.ModelSpec  # the new graph's: the current contract
    weights: int  # weight tensors of the new graph, each equal to the old graph's
    max_abs: dict[str, float]  # per output of the old graph, old vs new under ONNX Runtime
    was: contract.ModelSpec  # the old graph's
    novelty: Any = None  # the new graph's NoveltyStats (None: it has none)


def eager_from_graph(path: Path, size: tuple[int, int] | None = None) -> Any:
    """The model of an exported graph back in PyTorch: a DEALNet (eval mode) with its weights.

    The architecture is the ModelConfig the exporter recorded in the graph's metadata
    (`MODEL_CONFIG_KEY`); the weights are its initializers, which the exporter names after the
    PyTorch parameters and buffers. Batch norm is folded into the convolutions there
    (`<conv>.weight`, `<conv>.weight_bias`; a bias of zeros is left out), so each batch norm
    becomes the identity plus that bias (scale 1: running variance 1 - eps), which keeps the
    module structure, and so the eager cost, of the trained model. `size` overrides the input
    size (any multiple of the output stride). ReexportError when the metadata is missing.
    """
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from dealseg.training.model import DEALNet, ModelConfig

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if MODEL_CONFIG_KEY not in meta:
        raise ReexportError(
            f"{path} lacks {MODEL_CONFIG_KEY}: export it from its checkpoint with "
            "`deal-export onnx`"
        )
    cfg = ModelConfig.from_dict(json.loads(meta[MODEL_CONFIG_KEY]))
    if size is not None:
        cfg = replace(cfg, input_size=tuple(size))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    net = DEALNet(cfg, pretrained=False).eval()
    with torch.no_grad():
        tensors = {f"model.{n}": t for n, t in [*net.named_parameters(), *net.named_buffers()]}
        for name, tensor in tensors.items():  # convs (folded), heads, gamma, head statistics
            if name in weights and tuple(weights[name].shape) == tuple(tensor.shape):
                tensor.copy_(torch.from_numpy(weights[name].copy()))
        order = _run_order(net)  # convs and batch norms in the order they run
        for conv, (_, module) in zip(order, order[1:], strict=False):
            if isinstance(module, nn.BatchNorm2d):  # follows a conv folded with it
                module.weight.fill_(1.0)
                bias = weights.get(f"{conv[0]}.weight_bias")  # absent: all zero, dropped
                module.bias.copy_(torch.from_numpy(bias.copy()) if bias is not None else 0.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
    return net


def _run_order(net: Any) -> list[tuple[str, Any]]:
    """(name as the exporter writes it, module) of the convolutions and batch norms of `net`
    in the order one forward pass runs them."""
    import torch
    from torch import nn

    order: list[tuple[str, Any]] = []
    names = {m: f"model.{n}" for n, m in net.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append((names[mod], mod)))
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    with torch.inference_mode():
        net(torch.zeros(1, 3, *net.cfg.input_size))
    for h in hooks:
        h.remove()
    return order


def reexport(
    source: Path, out: Path, max_batch: int = 16, novelty_data: Path | None = None
) -> ReexportReport:
    """Export the graph at `source` again to `out` (which may be `source`) with its weights and
    contract metadata, then check that every weight is unchanged and compare the two graphs'
    outputs on real photos. ReexportError (and `out` untouched) when a weight would change.
    The novelty statistics are fitted on `novelty_data` with the source graph's embeddings when
    given, else kept from the source graph (none when it has none)."""
    import tempfile

    from dealseg.core.modelfile import read_onnx_spec

    from .graph import DEALGraph
    from .novelty import carried_novelty, graph_novelty

    spec = read_onnx_spec(source)
    if not spec.takes_valid_box:
        raise ReexportError(
            f"{source} uses contract {spec.contract_version}: export it from its checkpoint "
            "with `deal-export onnx`"
        )
    stats = carried_novelty(source) if novelty_data is None else graph_novelty(source, novelty_data)
    graph = DEALGraph(eager_from_graph(source), spec.bins, stats).eval()
    upgraded = replace(spec, contract_version=contract.CONTRACT_VERSION)
    with tempfile.TemporaryDirectory(prefix="dealseg-reexport-") as tmp:
        fresh = Path(tmp) / "model.onnx"
        export_graph(graph, upgraded, fresh, max_batch)
        weights = _same_weights(source, fresh)
        max_abs = _max_abs_outputs(source, fresh, spec)
        if read_onnx_spec(fresh) != upgraded:
            raise ReexportError(f"{source}: the re-exported graph does not fit its metadata")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as tmp_out:
            shutil.copyfile(fresh, tmp_out)
    return ReexportReport(spec=upgraded, weights=weights, max_abs=max_abs, was=spec, novelty=stats)


def _same_weights(old: Path, new: Path) -> int:
    """The number of weight tensors (initializers the exporter names after the model's
    parameters and buffers, `model.*`, and the input normalisation) of `new`; ReexportError
    naming the first that is missing, extra or not bit-identical to `old`'s."""
    import onnx
    from onnx import numpy_helper

    def weights(path: Path) -> dict[str, np.ndarray]:
        graph = onnx.load(str(path)).graph
        return {
            i.name: numpy_helper.to_array(i)
            for i in graph.initializer
            if i.name.startswith("model.") or i.name in ("mean", "std")
        }

    before, after = weights(old), weights(new)
    if before.keys() != after.keys():
        names = sorted(before.keys() ^ after.keys())
        raise ReexportError(f"{old}: re-export changes the set of weights ({', '.join(names[:5])})")
    for name, value in before.items():
        if value.dtype != after[name].dtype or not np.array_equal(value, after[name]):
            raise ReexportError(f"{old}: re-export changes weight {name} (not bit-identical)")
    return len(after)


def _max_abs_outputs(old: Path, new: Path, spec: contract.ModelSpec) -> dict[str, float]:
    """Max abs difference of every output of the old graph (`spec`), old vs new under ONNX
    Runtime, on the bundled real photos resized to the model's input (each letterboxed once
    too)."""
    import onnxruntime as ort

    from .compare import real_photos, resize

    images = np.stack([resize(photo, spec.input_size) for photo in real_photos().values()])
    boxes = np.tile(np.array([0, 0, *spec.input_size], np.int32), (len(images), 1))
    boxes[::2, 0] = spec.input_size[0] // 8  # a band of padding above every other picture
    feeds = {contract.INPUT_NAME: images, contract.VALID_BOX_NAME: boxes}
    names = list(spec.output_names)
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (old, new)
    ]
    outs = [s.run(names, feeds) for s in sessions]
    # a novelty the old graph has no statistics for (NaN) is compared with nothing
    if "novelty" in names and np.isnan(outs[0][names.index("novelty")]).any():
        keep = [i for i, n in enumerate(names) if n != "novelty"]
        names, outs = [names[i] for i in keep], [[o[i] for i in keep] for o in outs]
    return {
        n: float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        for n, a, b in zip(names, *outs, strict=True)
    }
