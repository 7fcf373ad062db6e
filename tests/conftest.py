"""Shared fixtures: a tiny real DEALNet checkpoint and its real ONNX export."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: `make test` and CI run the same derandomized examples on every machine, and the
# examples that once failed are pinned as explicit tests. HYPOTHESIS_PROFILE=explore searches anew
# (random examples, saved in .hypothesis/ when they fail).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
TINY_PALETTE = [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(11)]
TINY_SIZE = (64, 80)


def make_tiny_checkpoint(path: Path, seed: int = 0, **head: object) -> Path:
    """A small DEALNet (ImageNet encoder, narrow separable decoder) saved as a real checkpoint;
    `head` sets ModelConfig's difficulty_inputs / difficulty_hidden."""
    import torch

    from dealseg.training.checkpoint import save_checkpoint
    from dealseg.training.model import DEALNet, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(
        decoder_width=16,
        separable=True,
        attention_size=(12, 16),
        input_size=TINY_SIZE,
        pam_block=64,
        **head,  # type: ignore[arg-type]
    )
    model = DEALNet(cfg, pretrained=True)
    with torch.no_grad():
        model.difficulty_head.gamma.fill_(0.5)  # exercise the attention path, not only P
    save_checkpoint(path, model, TINY_CLASSES, TINY_PALETTE, {}, {}, 0)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint through the real exporter: contract names, metadata, dynamic batch."""
    from dealseg.export.onnx_export import export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(tiny_checkpoint, out, max_batch=16)
    return out
