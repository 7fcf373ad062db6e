"""Novelty statistics for an exported graph: its own embeddings of a dataset's train and val
splits (`training.novelty`), and the statistics a graph carries, read back for a re-export.

A graph is exported once without statistics (novelty NaN), run by ONNX Runtime over the data,
and exported again with them (`export_with_novelty`): the same path serves `deal-export onnx`
and `deal-export attach`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dealseg.core import contract
from dealseg.training.novelty import NOVELTY_KEY, NoveltyStats, dataset_novelty


def graph_novelty(model: Path, data: Path) -> NoveltyStats:
    """Statistics from the embeddings the graph at `model` gives the train and val splits of
    the dataset at `data` (stretched to its input size, as `deal-client` frames pictures)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = contract.session_spec(session)  # of any contract read: all have the embedding

    def embed(images: np.ndarray) -> np.ndarray:
        return session.run(["embedding"], contract.model_inputs(spec, images))[0]

    return dataset_novelty(embed, data, spec.input_size)


def export_with_novelty(
    export: Callable[[NoveltyStats | None, Path], object], out: Path, data: Path | None
) -> NoveltyStats | None:
    """`export(stats, path)` to `out`: without statistics when `data` is None, else once
    without them into a temporary folder, whose embeddings of `data` give the statistics, then
    with them to `out`."""
    if data is None:
        export(None, out)
        return None
    with tempfile.TemporaryDirectory(prefix="dealseg-novelty-") as tmp:
        plain = Path(tmp) / "model.onnx"
        export(None, plain)
        stats = graph_novelty(plain, data)
    export(stats, out)
    return stats


def carried_novelty(model: Path) -> NoveltyStats | None:
    """The statistics the graph at `model` carries (its `novelty.*` constants and metadata), or
    None when it has none."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    meta = {p.key: p.value for p in graph.metadata_props}
    if NOVELTY_KEY not in meta:
        return None
    weights = {  # `novelty.*`, under the scores part's prefix in an attached graph (`post/`)
        i.name.rsplit("/", 1)[-1]: numpy_helper.to_array(i)
        for i in graph.graph.initializer
        if i.name.rsplit("/", 1)[-1].startswith("novelty.")
    }
    about = json.loads(meta[NOVELTY_KEY])
    return NoveltyStats(
        mean=weights["novelty.mean"],
        precision=weights["novelty.precision"],
        reference=weights["novelty.reference"],
        fitted=int(about["fitted"]),
        shrinkage=float(about["shrinkage"]),
        data=str(about["data"]),
    )
