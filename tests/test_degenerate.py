"""A model that ranks nothing is said to: export and score warn when a batch's scores are
constant, saturated or one class (a head refit on one image once gave DS 0 or 1, DE -0.0 and
every pixel background on every frame, and nothing warned)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dealseg.client.cli import main as client_cli
from dealseg.core.contract import degenerate_scores
from dealseg.export.cli import main as export_cli
from dealseg.training.checkpoint import load_checkpoint, save_checkpoint


def collapsed_checkpoint(tiny_checkpoint: Path, out: Path) -> Path:
    """The tiny checkpoint with every pixel predicted class 0 and a difficulty map of 1."""
    ckpt = load_checkpoint(tiny_checkpoint)
    model = ckpt.build_model()
    with torch.no_grad():
        model.segmentation_head.weight.zero_()
        model.segmentation_head.bias.copy_(torch.tensor([20.0] + [0.0] * 10))
        model.difficulty_head.classifier.weight.zero_()
        model.difficulty_head.classifier.bias.fill_(30.0)
    save_checkpoint(out, model, ckpt.class_names, ckpt.palette, {}, {}, 0)
    return out


def write_pool(folder: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def test_the_judgement_on_hand_made_batches() -> None:
    names = ["sky", "road"]
    varied = {
        "ds": np.array([0.2, 0.4]),
        "de": np.array([[1.0], [1.5]]),  # Triton's [B, 1]
        "entropy": np.array([0.3, 0.5]),
        "class_fraction": np.array([[0.5, 0.5], [0.2, 0.8]]),
        "embedding": np.eye(2),
    }
    assert degenerate_scores(varied, names) == []
    collapsed = {
        **varied,
        "ds": np.array([1.0, 0.0]),
        "de": np.array([-0.0, -0.0]),
        "class_fraction": np.array([[1.0, 0.0], [1.0, 0.0]]),
    }
    assert degenerate_scores(collapsed, names) == [
        "de is -0 on all 2 images",
        "ds is 0 or 1 on every image: the difficulty map is saturated",
        "every pixel of every image is 'sky'",
    ]
    one = {k: v[:1] for k, v in collapsed.items()}
    assert degenerate_scores(one, names) == []  # one image: nothing to compare
    same = {**collapsed, "embedding": np.ones((2, 2))}
    assert degenerate_scores(same, names) == []  # the same image twice


@pytest.mark.slow
def test_export_and_score_warn_on_a_collapsed_model(
    tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    checkpoint = collapsed_checkpoint(tiny_checkpoint, tmp_path / "collapsed.pt")
    model = tmp_path / "collapsed.onnx"
    runner = CliRunner()
    exported = runner.invoke(
        export_cli, ["onnx", "--checkpoint", str(checkpoint), "--out", str(model)]
    )
    assert exported.exit_code == 0, exported.output
    assert "warning: the model's scores are degenerate over the 14 comparison images" in (
        exported.stderr
    )
    assert "every pixel of every image is 'sky'" in exported.stderr

    pool = write_pool(tmp_path / "pool")
    args = ["score", str(pool), "-k", "2", "--no-progress", "--model"]
    scored = runner.invoke(client_cli, [*args, str(model), "--out", str(tmp_path / "a")])
    assert scored.exit_code == 0, scored.output
    assert scored.stderr.count("are degenerate over a batch") == 1  # warned once
    assert "ds is 0 or 1 on every image" in scored.stderr and "'sky'" in scored.stderr

    healthy = runner.invoke(client_cli, [*args, str(tiny_onnx), "--out", str(tmp_path / "b")])
    assert healthy.exit_code == 0 and "degenerate" not in healthy.stderr
