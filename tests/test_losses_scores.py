"""Losses against hand-computed values; acquisition scores against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dealseg.training.losses import deal_loss, difficulty_loss, error_mask
from dealseg.training.scores import (
    box_weights,
    class_fraction,
    difficulty_entropy,
    difficulty_histogram,
    difficulty_score,
    pooled_embedding,
    softmax_entropy,
)


def logits_for(pred: list[list[int]], c: int = 3) -> torch.Tensor:
    p = torch.tensor(pred)
    return torch.nn.functional.one_hot(p, c).permute(2, 0, 1)[None].float() * 5


def test_error_mask_counts_ignored_pixels_as_right() -> None:
    logits = logits_for([[0, 1], [2, 2]])
    labels = torch.tensor([[[0, 2], [255, 1]]])
    assert error_mask(logits, labels).tolist() == [[[0.0, 1.0], [0.0, 1.0]]]


def test_bce_and_wbce_hand_computed() -> None:
    d = torch.tensor([0.9, 0.2, 0.4, 0.7])
    t = torch.tensor([1.0, 0.0, 0.0, 0.0])
    terms = [-math.log(0.9), -math.log(0.8), -math.log(0.6), -math.log(0.3)]
    assert difficulty_loss(d, t, "bce").item() == pytest.approx(sum(terms) / 4, rel=1e-5)
    w_r, w_e = 1 / math.sqrt(3 + 1), 1 / math.sqrt(1 + 1)
    w_r, w_e = w_r / (w_r + w_e), w_e / (w_r + w_e)
    expected = w_r * sum(terms[1:]) / 3 + w_e * terms[0]
    assert difficulty_loss(d, t, "wbce").item() == pytest.approx(expected, rel=1e-5)


def test_wbce_with_no_errors_is_the_right_side_only() -> None:
    d, t = torch.tensor([0.1, 0.3]), torch.zeros(2)
    w_r = (1 / math.sqrt(3)) / (1 / math.sqrt(3) + 1)
    expected = w_r * (-math.log(0.9) - math.log(0.7)) / 2
    assert difficulty_loss(d, t, "wbce").item() == pytest.approx(expected, rel=1e-5)


def test_deal_loss_is_ce_plus_difficulty_and_rejects_unknown_kind() -> None:
    logits = logits_for([[0, 1], [2, 2]]).requires_grad_()
    labels = torch.tensor([[[0, 2], [255, 1]]])
    dif = torch.full((1, 2, 2), 0.5)
    total, parts = deal_loss(logits, dif, labels, "bce", weight=2.0)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255).item()
    assert parts["seg"] == pytest.approx(ce)
    assert parts["dif"] == pytest.approx(math.log(2), rel=1e-5)
    assert total.item() == pytest.approx(ce + 2 * math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="wbce"):
        deal_loss(logits, dif, labels, "focal")


def numpy_de(d: np.ndarray, bins: int) -> float:
    lo, hi = d.min(), d.max()
    if hi <= lo:
        return 0.0
    counts, _ = np.histogram(d, bins=bins, range=(lo, hi))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_ds_and_de_on_a_hand_made_map() -> None:
    d = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])  # two bins hit equally at the extremes
    assert difficulty_score(d).item() == pytest.approx(0.5)
    assert difficulty_entropy(d, 8).item() == pytest.approx(math.log(2), rel=1e-6)
    assert difficulty_histogram(d, 8)[0].tolist() == [2, 0, 0, 0, 0, 0, 0, 2]
    assert difficulty_entropy(torch.full((1, 4, 4), 0.3), 8).item() == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bins=st.integers(2, 12))
def test_de_matches_numpy_histogram(seed: int, bins: int) -> None:
    rng = np.random.default_rng(seed)
    # values on a grid strictly inside bins, so float rounding cannot move an edge pixel
    d = (rng.integers(0, bins, (2, 9, 11)) + 0.5) / bins
    d[:, 0, 0], d[:, 0, 1] = 0.0, 1.0
    ours = difficulty_entropy(torch.tensor(d, dtype=torch.float32), bins)
    for i in range(2):
        assert ours[i].item() == pytest.approx(numpy_de(d[i], bins), abs=1e-5)


def test_softmax_entropy_uniform_and_confident() -> None:
    assert softmax_entropy(torch.zeros(1, 4, 3, 3)).item() == pytest.approx(math.log(4))
    assert softmax_entropy(logits_for([[0, 1]]) * 10).item() == pytest.approx(0.0, abs=1e-6)


def test_class_fraction_and_embedding() -> None:
    frac = class_fraction(logits_for([[0, 1], [2, 2]]))
    assert frac.tolist() == [[0.25, 0.25, 0.5]]
    emb = pooled_embedding(torch.randn(3, 8, 4, 5))
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-6)


def test_box_weights_are_each_cells_share_of_picture() -> None:
    box = torch.tensor([[2, 0, 10, 7]])  # rows 2..9, columns 0..6 of a 12 x 8 frame
    cells = box_weights(box, (12, 8), (3, 2))  # 4 x 4 pixel cells
    expected = torch.tensor([0.5, 1.0, 0.5])[:, None] * torch.tensor([1.0, 0.75])[None, :]
    torch.testing.assert_close(cells[0], expected)
    pixels = box_weights(box, (12, 8), (12, 8))
    assert set(pixels.unique().tolist()) == {0.0, 1.0} and pixels.sum() == 8 * 7
    assert pixels[0, 2:10, :7].all() and not pixels[0, :2].any()
    ragged = box_weights(torch.tensor([[0, 0, 10, 7]]), (10, 7), (3, 2))  # last cells clipped
    assert torch.equal(ragged, torch.ones(1, 3, 2))


def test_scores_weighted_by_a_whole_frame_equal_the_plain_scores() -> None:
    g = torch.Generator().manual_seed(0)
    difficulty = torch.rand(2, 12, 16, generator=g)
    logits = torch.randn(2, 5, 6, 8, generator=g)
    features = torch.randn(2, 7, 6, 8, generator=g)
    pixels, cells = torch.ones(2, 12, 16), torch.ones(2, 6, 8)
    pairs = [
        (difficulty_score(difficulty, pixels), difficulty_score(difficulty)),
        (difficulty_entropy(difficulty, 8, pixels), difficulty_entropy(difficulty, 8)),
        (softmax_entropy(logits, cells), softmax_entropy(logits)),
        (class_fraction(logits, cells), class_fraction(logits)),
        (pooled_embedding(features, cells), pooled_embedding(features)),
    ]
    for weighted, plain in pairs:
        torch.testing.assert_close(weighted, plain)
    inside = torch.zeros(2, 12, 16)
    inside[:, 3:9] = 1.0  # DE and DS over the picture's rows only
    torch.testing.assert_close(
        difficulty_entropy(difficulty, 8, inside), difficulty_entropy(difficulty[:, 3:9], 8)
    )
    torch.testing.assert_close(
        difficulty_score(difficulty, inside), difficulty_score(difficulty[:, 3:9])
    )
