"""DEAL losses: segmentation cross-entropy plus the difficulty loss against the error mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dealseg.core.registry import Registry

IGNORE_INDEX = 255
# A guessed label (pseudo-label, `data.PartialLabels.pseudo`) of class c reads PSEUDO_OFFSET + c:
# the segmenter learns it apart from bought labels, the difficulty head never sees it.
PSEUDO_OFFSET = 128


def error_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 where argmax(logits) != label, 0 where right or ignored. [B,C,H,W], [B,H,W] -> [B,H,W]."""
    wrong = logits.argmax(dim=1) != labels
    return (wrong & (labels != IGNORE_INDEX)).float()


def plain_mean(per_pixel: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """bce's reduction: every pixel alike (ignored pixels count as right, as in the paper)."""
    return per_pixel.mean()


def balanced_mean(per_pixel: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """wbce's reduction: right and wrong pixels averaged separately, weights 1/sqrt(n+1)
    normalised. `wrong` is a bool mask shaped like `per_pixel`."""
    n_err = wrong.sum().to(per_pixel.dtype)
    n_right = wrong.numel() - n_err
    w = torch.stack([1 / torch.sqrt(n_right + 1), 1 / torch.sqrt(n_err + 1)])
    w = w / w.sum()
    right_mean = per_pixel[~wrong].sum() / n_right.clamp(min=1)
    wrong_mean = per_pixel[wrong].sum() / n_err.clamp(min=1)
    return w[0] * right_mean + w[1] * wrong_mean


# Difficulty losses by name: the reduction of the per-pixel BCE against the error mask.
DIFFICULTY_LOSSES = Registry("difficulty loss", bce=plain_mean, wbce=balanced_mean)


def difficulty_loss(difficulty: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """BCE of the difficulty map against the error mask, reduced as loss `kind` says."""
    reduce = DIFFICULTY_LOSSES[kind]
    per_pixel = F.binary_cross_entropy(difficulty.clamp(1e-7, 1 - 1e-7), target, reduction="none")
    return reduce(per_pixel, target > 0.5)


def deal_loss(
    logits: torch.Tensor,
    difficulty: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "wbce",
    weight: float = 1.0,
    labeled_only: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss = CE(ignore 255) + weight * difficulty loss. logits/difficulty at label size.

    `labeled_only` (partial labels): the difficulty loss counts labelled pixels only, instead of
    counting ignored pixels as right. Guessed pixels (PSEUDO_OFFSET + class) add their own mean
    cross-entropy to the segmenter's and are void to the difficulty loss. A batch without a
    labelled or guessed pixel costs nothing: both terms are zero (with gradients of zero),
    never NaN.
    """
    guessed = (labels >= PSEUDO_OFFSET) & (labels != IGNORE_INDEX)
    guesses = None
    if bool(guessed.any()):
        guesses = torch.where(guessed, labels - PSEUDO_OFFSET, IGNORE_INDEX)
        labels = torch.where(guessed, IGNORE_INDEX, labels)
    labeled = labels != IGNORE_INDEX
    any_label = bool(labeled.any())
    if not any_label:  # zero with gradients of zero: a term without a pixel to learn from
        zero = logits.sum() * 0.0 + difficulty.sum() * 0.0
        if guesses is None:
            return zero, {"loss": 0.0, "seg": 0.0, "dif": 0.0}
    seg = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX) if any_label else zero
    if guesses is not None:
        seg = seg + F.cross_entropy(logits, guesses, ignore_index=IGNORE_INDEX)
    target = error_mask(logits.detach(), labels)
    if labeled_only:
        dif = difficulty_loss(difficulty[labeled], target[labeled], kind) if any_label else zero
    else:
        dif = difficulty_loss(difficulty, target, kind)
    total = seg + weight * dif
    return total, {"loss": total.item(), "seg": seg.item(), "dif": dif.item()}
