"""Refit the difficulty head's 1x1 conv on held-out error masks, everything else frozen.

The difficulty map is sigmoid(upsample(conv1x1(Q))) with Q = γ·PAM(P) + P: a linear read-out of Q.
Joint training (the paper's protocol) leaves that read-out's C + 1 weights far from the best one
for Q: weight decay and the poly schedule keep them small, and the error masks it learns from are
the training images' errors in train mode (dropout on), not the errors the model makes on images
it has not seen. The refit sets them to the logistic-regression fit of the eval-mode model's error
mask on a held-out split (the validation split in `deal-train fit`). Nothing else changes: same
architecture, same segmenter, same γ, same exported graph. Because the conv and the bilinear
upsampling are both linear (and bilinear weights sum to 1), fitting on Q upsampled to the label
size is exactly fitting the map the model outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dealseg.core.metrics import auroc

from .checkpoint import Checkpoint, save_checkpoint
from .data import SegmentationDataset
from .losses import DIFFICULTY_LOSSES, IGNORE_INDEX
from .model import DEALNet, normalise

MAX_PIXELS = 1_000_000  # pixels sampled for the fit: 12 parameters need far fewer


@dataclass
class RefitResult:
    pixels: int  # sampled pixels the head was fit on
    error_rate: float  # fraction of them the model gets wrong
    auroc_before: float  # of the jointly trained head, on those pixels
    auroc_after: float  # of the refit head (the old one is kept if it was better)
    kept_old: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def head_inputs(
    model: DEALNet, dataset: Dataset, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q at label size [P, C] float64, wrong [P] bool) for up to `max_pixels` labelled pixels,
    sampled evenly over the images of `dataset` with the eval-mode model."""
    was_training = model.training
    model.eval()
    cfg = model.cfg
    quota = max(1, math.ceil(max_pixels / max(len(dataset), 1)))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for images, labels in DataLoader(dataset, batch_size=4):
        out = model(normalise(images, cfg.mean, cfg.std))
        pred = out.full_logits().argmax(1)
        q = F.interpolate(
            model.difficulty_head.features(out.logits),
            size=out.input_size,
            mode="bilinear",
            align_corners=False,
        )
        for i in range(len(labels)):
            valid = np.flatnonzero((labels[i] != IGNORE_INDEX).reshape(-1).numpy())
            take = torch.from_numpy(rng.choice(valid, min(quota, len(valid)), replace=False))
            xs.append(q[i].reshape(q.shape[1], -1)[:, take].T.double())
            ys.append((pred[i] != labels[i]).reshape(-1)[take])
    if was_training:
        model.train()
    if not xs:
        raise ValueError("no labelled pixels to refit the difficulty head on")
    return torch.cat(xs), torch.cat(ys)


def refit_difficulty_head(
    model: DEALNet,
    dataset: Dataset,
    loss: str = "wbce",
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
) -> RefitResult:
    """Set the head's 1x1 conv to the `loss`-optimal read-out of Q for `dataset`'s error masks.

    `loss` is the training difficulty loss (`wbce`: right and wrong pixels weighted as in
    training, so the map keeps its level; `bce`: plain). The old weights are kept when the fit
    does not raise the AUROC on the sampled pixels.
    """
    reduce = DIFFICULTY_LOSSES[loss]
    x, wrong = head_inputs(model, dataset, max_pixels, seed)
    if wrong.all() or not wrong.any():
        raise ValueError(
            "the refit needs both right and wrong pixels; the model gets "
            f"{'every' if wrong.all() else 'no'} sampled pixel wrong"
        )
    conv = model.difficulty_head.classifier
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    old = torch.cat([conv.weight.detach().reshape(-1), conv.bias.detach()]).double()
    target = wrong.double()
    w = old.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        per_pixel = F.binary_cross_entropy_with_logits(xb @ w, target, reduction="none")
        value = reduce(per_pixel, wrong)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    new = w.detach()
    labels = wrong.numpy()
    before = auroc((xb @ old).numpy(), labels)
    after = auroc((xb @ new).numpy(), labels)
    kept_old = not (np.isfinite(after) and after > before)
    if not kept_old:
        with torch.no_grad():
            conv.weight.copy_(new[:-1].reshape(conv.weight.shape).to(conv.weight.dtype))
            conv.bias.copy_(new[-1:].to(conv.bias.dtype))
    return RefitResult(
        pixels=len(labels),
        error_rate=float(labels.mean()),
        auroc_before=before,
        auroc_after=before if kept_old else after,
        kept_old=kept_old,
    )


def refit_checkpoint(
    ckpt: Checkpoint,
    model: DEALNet,
    dataset: SegmentationDataset,
    loss: str,
    out: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Refit `model` (built from `ckpt`) on `dataset` and save it to `out` with the refit's
    record (split, pixels, AUROC before/after) added to the checkpoint's metrics."""
    result = refit_difficulty_head(model, dataset, loss, seed=seed)
    record = {"split": dataset.split, **result.to_dict()}
    save_checkpoint(
        out,
        model,
        ckpt.class_names,
        ckpt.palette,
        ckpt.train_config,
        {**ckpt.metrics, "difficulty_refit": record},
        ckpt.epoch,
    )
    return record
