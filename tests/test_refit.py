"""The difficulty-head refit: exact for the map the model outputs, and only the 1x1 conv moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from dealseg.training.checkpoint import load_checkpoint
from dealseg.training.data import SegmentationDataset
from dealseg.training.evaluate import auroc, evaluate_model
from dealseg.training.model import normalise
from dealseg.training.refit import (
    MIN_IMAGES,
    grid_inputs,
    head_inputs,
    map_auroc,
    refit_difficulty_head,
)
from dealseg.training.streets.dataset import write_streets


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> SegmentationDataset:
    root = tmp_path_factory.mktemp("streets")
    write_streets(root, n=16, size=(64, 80), seed=5)
    return SegmentationDataset(root, "train")


def test_the_map_is_a_linear_read_out_of_upsampled_q(tiny_checkpoint: Path) -> None:
    """conv1x1 then bilinear upsampling = upsampling then conv1x1: the refit's premise."""
    model = load_checkpoint(tiny_checkpoint).build_model().eval()
    x = normalise(torch.rand(2, 3, 64, 80), model.cfg.mean, model.cfg.std)
    with torch.no_grad():
        out = model(x)
        head = model.difficulty_head
        q = F.interpolate(
            head.features(out.logits, out.decoded),
            size=(64, 80),
            mode="bilinear",
            align_corners=False,
        )
        read_out = head.classifier(q)[:, 0]
        direct = torch.logit(out.difficulty().double(), eps=0).float()
    np.testing.assert_allclose(read_out.numpy(), direct.numpy(), atol=1e-4)


def test_refit_raises_auroc_and_moves_only_the_head(
    tiny_checkpoint: Path, streets: SegmentationDataset
) -> None:
    model = load_checkpoint(tiny_checkpoint).build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    baseline = evaluate_model(model, streets, model.cfg)["difficulty_auroc"]

    result = refit_difficulty_head(model, streets, "wbce", max_pixels=20_000, seed=1)

    assert (result.fit_images, result.held_apart_images) == (6, 5)  # every other of 11
    assert 0 < result.error_rate < 1 and 20_000 <= result.pixels < 20_000 + 6
    assert not result.kept_old and result.auroc_after > result.auroc_before
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"difficulty_head.classifier.weight", "difficulty_head.classifier.bias"}
    # The reported AUROC is the map's on the images the fit never saw: recompute it there.
    held = Subset(streets, range(1, len(streets), 2))
    assert map_auroc(model, held, 20_000, 1) == pytest.approx(result.auroc_after, abs=1e-6)
    x, wrong = head_inputs(model, held, max_pixels=20_000, seed=1)
    conv = model.difficulty_head.classifier
    scores = (x @ conv.weight.detach().reshape(-1).double() + conv.bias.item()).numpy()
    assert auroc(scores, wrong.numpy()) == pytest.approx(result.auroc_after, abs=1e-4)  # fp32 head
    # On every pixel of the split (histogram AUROC), the map improved too.
    assert evaluate_model(model, streets, model.cfg)["difficulty_auroc"] > baseline


def test_refit_of_an_mlp_read_out_on_more_inputs(
    tmp_path: Path, streets: SegmentationDataset
) -> None:
    """Inputs beyond Q are standardised on the refit data, then the MLP is fit on the grid."""
    from conftest import make_tiny_checkpoint

    path = make_tiny_checkpoint(
        tmp_path / "u.pt",
        difficulty_inputs="Q+U+UA+DEC",
        difficulty_hidden=8,
        difficulty_context=3,
    )
    model = load_checkpoint(path).build_model()
    logits, decoded = torch.randn(2, 11, 16, 20), torch.randn(2, 16, 16, 20)
    assert model.difficulty_head.features(logits, decoded).shape == (2, 14 + 3 + 16, 12, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = refit_difficulty_head(model, streets, "bce", max_pixels=20_000, seed=1)
    assert not result.kept_old and result.auroc_after >= result.auroc_before
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    standardisation = {"difficulty_head.input_mean", "difficulty_head.input_std"}
    assert standardisation < changed
    assert all(k.startswith("difficulty_head.classifier.") for k in changed - standardisation)
    head = model.difficulty_head
    fitted_on = Subset(streets, range(0, len(streets), 2))
    x = grid_inputs(model, fitted_on)[0].transpose(0, 1).flatten(1)  # standardised now
    np.testing.assert_allclose(x.mean(1).numpy(), 0, atol=1e-3)
    std = x.std(1).numpy()  # 1, or 0 for a feature constant over these images
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-3)) and np.mean(std > 0.5) > 0.9
    assert next(head.classifier.parameters()).dtype == torch.float32


def test_refit_with_plain_bce_and_bad_loss(
    tiny_checkpoint: Path, streets: SegmentationDataset
) -> None:
    model = load_checkpoint(tiny_checkpoint).build_model()
    assert refit_difficulty_head(model, streets, "bce", max_pixels=5_000).auroc_after > 0.5
    with pytest.raises(ValueError, match="difficulty loss 'focal'"):
        refit_difficulty_head(model, streets, "focal")


def test_refit_refuses_too_few_images_and_keeps_a_head_the_held_apart_images_reject(
    tiny_checkpoint: Path, streets: SegmentationDataset
) -> None:
    """One validation image once gave "AUROC 0.743 -> 1.000": a fit judged on its own pixels."""
    model = load_checkpoint(tiny_checkpoint).build_model()
    few = Subset(streets, range(MIN_IMAGES - 1))
    with pytest.raises(ValueError, match=f"at least {MIN_IMAGES} images .* has {MIN_IMAGES - 1}"):
        refit_difficulty_head(model, few, "wbce")
    # Two images fit on, two held apart: whatever the fit, the kept head is never worse there.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = refit_difficulty_head(model, Subset(streets, range(4)), "wbce", max_pixels=2_000)
    assert (result.fit_images, result.held_apart_images) == (2, 2)
    assert result.auroc_after >= result.auroc_before
    unchanged = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert unchanged == result.kept_old


def test_auroc_counts_ties_as_half() -> None:
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == 0.5
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1], bool)))
