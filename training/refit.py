"""Refit the difficulty head's read-out on held-out error masks, everything else frozen.

The difficulty map is sigmoid(upsample(read_out(F))) with F the head's features: Q = γ·PAM(P) + P
as published, plus each pixel's uncertainty for the "uncertainty" head. Joint training (the
paper's protocol) leaves the read-out far from the best one for F: weight decay and the poly
schedule keep its weights small, and the error masks it learns from are the training images'
errors in train mode (dropout on), not the errors the model makes on images it has not seen. The
refit sets it to the best fit of the eval-mode model's error mask on a held-out split (the
validation split in `deal-train fit`). Nothing else changes: same segmenter, same γ, same graph.
For the 1x1 conv read-out, conv and bilinear upsampling are both linear (and bilinear weights sum
to 1), so fitting on F upsampled to the label size is exactly fitting the map the model outputs;
for an MLP read-out it is a close approximation (the graph applies the MLP on the grid, then
upsamples its logits).
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
    """(features at label size [P, D] float64, wrong [P] bool) for up to `max_pixels` pixels,
    sampled evenly over the images of `dataset` with the eval-mode model."""
    was_training = model.training
    model.eval()
    cfg = model.cfg
    device = next(model.parameters()).device
    quota = max(1, math.ceil(max_pixels / max(len(dataset), 1)))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for images, labels in DataLoader(dataset, batch_size=4):
        out = model(normalise(images.to(device), cfg.mean, cfg.std))
        pred = out.full_logits().argmax(1).cpu()
        q = F.interpolate(
            model.difficulty_head.features(out.logits),
            size=out.input_size,
            mode="bilinear",
            align_corners=False,
        )
        for i in range(len(labels)):
            valid = np.flatnonzero((labels[i] != IGNORE_INDEX).reshape(-1).numpy())
            take = torch.from_numpy(rng.choice(valid, min(quota, len(valid)), replace=False))
            xs.append(q[i].reshape(q.shape[1], -1)[:, take].T.double().cpu())
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
    l2: float = 0.0,
) -> RefitResult:
    """Set the head's read-out to the `loss`-optimal one for `dataset`'s error masks.

    `loss` is a difficulty loss (`wbce`: right and wrong pixels weighted as in training, so the
    map keeps its level; `bce`: plain, so the map is the probability of an error and its mean
    the expected error rate). `l2` penalises the read-out's weights (for an MLP read-out). The
    old weights are kept when the fit lowers the AUROC on the sampled pixels.
    """
    reduce = DIFFICULTY_LOSSES[loss]
    x, wrong = head_inputs(model, dataset, max_pixels, seed)  # on the CPU, as the fit below
    if wrong.all() or not wrong.any():
        raise ValueError(
            "the refit needs both right and wrong pixels; the model gets "
            f"{'every' if wrong.all() else 'no'} sampled pixel wrong"
        )
    head = model.difficulty_head.classifier
    dtype, device = next(head.parameters()).dtype, next(head.parameters()).device
    head.to("cpu", torch.float64)
    pixels = x[:, :, None, None]  # [P, D, 1, 1]: the read-out is per pixel
    target = wrong.double()
    old = {k: v.clone() for k, v in head.state_dict().items()}
    weights = [p for p in head.parameters() if p.dim() > 1]
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        per_pixel = F.binary_cross_entropy_with_logits(
            head(pixels).reshape(-1), target, reduction="none"
        )
        value = reduce(per_pixel, wrong) + l2 * sum(w.pow(2).sum() for w in weights)
        value.backward()
        return value

    labels = wrong.numpy()
    with torch.no_grad():
        before = auroc(head(pixels).reshape(-1).numpy(), labels)
    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        after = auroc(head(pixels).reshape(-1).numpy(), labels)
    kept_old = not (np.isfinite(after) and after >= before)
    if kept_old:
        head.load_state_dict(old)
    head.to(device, dtype)
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
    l2: float = 0.0,
) -> dict[str, Any]:
    """Refit `model` (built from `ckpt`) on `dataset` and save it to `out` with the refit's
    record (split, loss, pixels, AUROC before/after) added to the checkpoint's metrics."""
    result = refit_difficulty_head(model, dataset, loss, seed=seed, l2=l2)
    record = {"split": dataset.split, "loss": loss, "l2": l2, **result.to_dict()}
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
