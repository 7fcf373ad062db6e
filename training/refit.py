"""Refit the difficulty head's read-out on held-out error masks, everything else frozen.

The difficulty map is sigmoid(upsample(read_out(F))) with F the head's features: Q = γ·PAM(P) + P
as published, plus each pixel's uncertainty and the decoder's features for dealseg's head
(model.HEAD_PARTS), standardised on the refit data. Joint training (the
paper's protocol) leaves the read-out far from the best one for F: weight decay and the poly
schedule keep its weights small, and the error masks it learns from are the training images'
errors in train mode (dropout on), not the errors the model makes on images it has not seen. The
refit sets it to the best fit of the eval-mode model's error mask on a held-out split (the
validation split in `deal-train fit`): fit on every other image, judged on the others (held apart),
and kept only when the map is better there; a fit judged on its own pixels once reported AUROC
0.743 -> 1.000 on a single image. Nothing else changes: same segmenter, same γ, same graph.
For the 1x1 conv read-out, conv and bilinear upsampling are both linear (and bilinear weights sum
to 1), so fitting on F upsampled to the label size is exactly fitting the map the model outputs;
for an MLP read-out it is a close approximation (the graph applies the MLP on the grid, then
upsamples its logits).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from dealseg.core.metrics import auroc

from .checkpoint import Checkpoint, save_checkpoint
from .data import SegmentationDataset
from .losses import DIFFICULTY_LOSSES, IGNORE_INDEX
from .model import DEALNet, DifficultyHead

MAX_PIXELS = 1_000_000  # pixels sampled for the fit: 12 parameters need far fewer
MIN_IMAGES = 4  # every other image fits the head, the rest are held apart to judge the fit
MIN_ERRORS = 50  # wrong pixels, and as many right ones, the fit and the check each need


class HeadHost(Protocol):
    """What the refit reads: a segmenter's eval-mode logits and decoder features, and the
    difficulty head on them (a DEALNet, or a head attached to a frozen ONNX segmenter)."""

    difficulty_head: DifficultyHead
    training: bool

    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class RefitResult:
    pixels: int  # sampled pixels the head was fit on
    error_rate: float  # fraction of them the model gets wrong
    auroc_before: float  # of the jointly trained head, on the held-apart images
    auroc_after: float  # of the refit head there (the old one is kept unless the refit is better)
    kept_old: bool
    fit_images: int  # images the head was fit on
    held_apart_images: int  # images the fit never saw, on which it was judged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def head_inputs(
    model: HeadHost, dataset: Dataset, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features at label size [P, D] float64, wrong [P] bool) for up to `max_pixels` pixels,
    sampled evenly over the images of `dataset` with the eval-mode model."""
    quota = max(1, math.ceil(max_pixels / max(len(dataset), 1)))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for grid, labels, wrong in _batches(model, dataset):
        x = F.interpolate(grid, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        for i in range(len(labels)):
            valid = np.flatnonzero((labels[i] != IGNORE_INDEX).reshape(-1).numpy())
            take = torch.from_numpy(rng.choice(valid, min(quota, len(valid)), replace=False))
            xs.append(x[i].reshape(x.shape[1], -1)[:, take].T.double())
            ys.append(wrong[i].reshape(-1)[take])
    if not xs:
        raise ValueError("no labelled pixels to refit the difficulty head on")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def grid_inputs(model: HeadHost, dataset: Dataset, raw: bool = False) -> tuple[torch.Tensor, ...]:
    """(features [N, D, h, w], error share [N, 1, h, w], labelled share [N, 1, h, w]) on the
    head's grid: what an MLP read-out, which the graph applies on the grid, is fit on; with
    `raw` the segmentation logits on the grid [N, C, h, w] instead of the features."""
    grids, targets, weights = [], [], []
    for grid, labels, wrong in _batches(model, dataset, raw):
        share, valid = cell_shares(labels, wrong, grid.shape[-2:])
        grids.append(grid)
        targets.append(share)
        weights.append(valid)
    if not grids:
        raise ValueError("no labelled pixels to refit the difficulty head on")
    return torch.cat(grids), torch.cat(targets), torch.cat(weights)


def wrong_pixels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] logits and [B, H, W] labels -> [B, H, W] bool (CPU): wrong where the argmax
    of the logits, bilinearly resized to the label size, is not the label; ignored pixels right."""
    pred = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return (pred.argmax(1).cpu() != labels) & (labels != IGNORE_INDEX)


def cell_shares(
    labels: torch.Tensor, wrong: torch.Tensor, size: tuple[int, int] | torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell of a `size` grid over [B, H, W] labels: (the error share of its labelled pixels,
    its labelled share), each [B, 1, h, w]."""
    valid = F.adaptive_avg_pool2d((labels != IGNORE_INDEX)[:, None].float(), size)
    errors = F.adaptive_avg_pool2d(wrong[:, None].float(), size)
    return (errors / valid.clamp_min(1e-6)).clamp(0, 1), valid


def _batches(
    model: HeadHost, dataset: Dataset, raw: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Per batch of the eval-mode model (on its device): (head features on the grid
    [B, D, h, w], labels [B, H, W], wrong [B, H, W] bool with ignored pixels right), on the
    CPU, where the read-out is fit; with `raw` the segmentation logits resized to the grid
    instead of the head's features (what the whole head is trained on). A pixel is wrong
    where the argmax of the segmentation logits, bilinearly resized to the label size, is not
    its label."""
    was_training = model.training
    model.eval()
    device = model.difficulty_head.gamma.device  # the read-out may be on the CPU, fitting
    try:
        for images, labels in DataLoader(dataset, batch_size=4):
            logits, decoded = model.segment(images.to(device))
            wrong = wrong_pixels(logits, labels)
            head = model.difficulty_head
            if raw:
                grid = F.interpolate(
                    logits, size=head.attention_size, mode="bilinear", align_corners=False
                )
            else:
                grid = head.features(logits, decoded)
            yield grid.cpu(), labels, wrong
    finally:
        model.train(was_training)


def refit_difficulty_head(
    model: HeadHost,
    dataset: Dataset,
    loss: str = "wbce",
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    l2: float = 0.0,
) -> RefitResult:
    """Set the head's read-out to the `loss`-optimal one for `dataset`'s error masks.

    `loss` is a difficulty loss (`wbce`: right and wrong pixels weighted as in training, so the
    map keeps its level; `bce`: plain, so the map is the probability of an error and its mean
    the expected error rate). A 1x1 conv read-out is fit by L-BFGS on sampled pixels; an MLP
    read-out by AdamW on the grid's cells against each cell's error share, `l2` its weight decay.
    Heads with more inputs than Q first standardise them on this data. The head is fit on
    every other image of `dataset` and judged on the others, held apart: the map's AUROC there
    before and after. The old head is kept unless the refit raises it. Fewer than MIN_IMAGES
    images, or fewer than MIN_ERRORS wrong or right pixels on either side, is a ValueError.
    """
    reduce = DIFFICULTY_LOSSES[loss]
    if len(dataset) < MIN_IMAGES:
        raise ValueError(
            f"the refit needs at least {MIN_IMAGES} images (half to fit the head, half held apart "
            f"to check the fit); {_name(dataset)} has {len(dataset)}"
        )
    held = Subset(dataset, range(1, len(dataset), 2))
    dataset = Subset(dataset, range(0, len(dataset), 2))
    head = model.difficulty_head
    old = {k: v.clone() for k, v in head.state_dict().items()}
    x, wrong = head_inputs(model, dataset, max_pixels, seed)
    _check_errors(wrong, "the images the head is fit on")
    _check_errors(head_inputs(model, held, max_pixels, seed)[1], "the held-apart images")
    read_out = head.classifier
    device = next(read_out.parameters()).device
    read_out.cpu()  # fit on the CPU, beside the sampled features
    if hasattr(head, "input_mean"):
        standardise_inputs(model, dataset)
        x, wrong = head_inputs(model, dataset, max_pixels, seed)  # the same pixels, standardised
    if isinstance(read_out, torch.nn.Conv2d):
        _fit_pixels(read_out, x, wrong, reduce, l2)
    else:
        fit_cells(read_out, *grid_inputs(model, dataset), loss=loss, weight_decay=l2, seed=seed)
    fitted = {k: v.clone() for k, v in head.state_dict().items()}
    held_after = map_auroc(model, held, max_pixels, seed)
    head.load_state_dict(old)
    held_before = map_auroc(model, held, max_pixels, seed)
    kept_old = not (np.isfinite(held_after) and held_after > held_before)
    if not kept_old:
        head.load_state_dict(fitted)
    read_out.to(device)
    labels = wrong.numpy()
    return RefitResult(
        pixels=len(labels),
        error_rate=float(labels.mean()),
        auroc_before=held_before,
        auroc_after=held_before if kept_old else held_after,
        kept_old=kept_old,
        fit_images=len(dataset),
        held_apart_images=len(held),
    )


def _name(dataset: Dataset) -> str:
    split = getattr(dataset, "split", None)
    return "the dataset" if split is None else f"the {split} split"


def _check_errors(wrong: torch.Tensor, where: str) -> None:
    """Both right and wrong pixels, at least MIN_ERRORS of each, or a ValueError."""
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    if min(n_wrong, n_right) < MIN_ERRORS:
        raise ValueError(
            f"the refit needs at least {MIN_ERRORS} wrong and {MIN_ERRORS} right pixels in "
            f"{where}; the model gets {n_wrong} of {n_wrong + n_right} sampled pixels wrong"
        )


@torch.no_grad()
def standardise_inputs(model: HeadHost, dataset: Dataset) -> None:
    """Set the head's input mean and std to those of its raw features on `dataset`'s grid."""
    head = model.difficulty_head
    head.input_mean.zero_()
    head.input_std.fill_(1.0)
    grid = grid_inputs(model, dataset)[0].transpose(0, 1).flatten(1)  # [D, N·h·w]
    head.input_mean.copy_(grid.mean(1).view_as(head.input_mean))
    head.input_std.copy_(grid.std(1).clamp_min(1e-6).view_as(head.input_std))


@torch.no_grad()
def map_auroc(
    model: HeadHost, dataset: Dataset, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> float:
    """AUROC of the model's difficulty map (the read-out on the grid, upsampled) for the error
    mask, on the pixels `head_inputs` samples with the same seed."""
    quota = max(1, math.ceil(max_pixels / max(len(dataset), 1)))
    rng = np.random.default_rng(seed)
    scores, wrongs = [], []
    for grid, labels, wrong in _batches(model, dataset):
        logits = model.difficulty_head.classifier(grid)
        up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        for i in range(len(labels)):
            valid = np.flatnonzero((labels[i] != IGNORE_INDEX).reshape(-1).numpy())
            take = torch.from_numpy(rng.choice(valid, min(quota, len(valid)), replace=False))
            scores.append(up[i, 0].reshape(-1)[take])
            wrongs.append(wrong[i].reshape(-1)[take])
    return auroc(torch.cat(scores).numpy(), torch.cat(wrongs).numpy())


def _fit_pixels(
    conv: torch.nn.Conv2d, x: torch.Tensor, wrong: torch.Tensor, reduce: Any, l2: float
) -> None:
    """L-BFGS on the C + 1 weights of a 1x1 conv over sampled pixels (float64)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w0 = torch.cat([conv.weight.detach().reshape(-1), conv.bias.detach()]).double()
    w = w0.clone().requires_grad_(True)
    target = wrong.double()
    optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        per_pixel = F.binary_cross_entropy_with_logits(xb @ w, target, reduction="none")
        value = reduce(per_pixel, wrong) + l2 * w[:-1].pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        conv.weight.copy_(w[:-1].reshape(conv.weight.shape).to(conv.weight.dtype))
        conv.bias.copy_(w[-1:].to(conv.bias.dtype))


def fit_cells(
    mlp: torch.nn.Module,
    grid: torch.Tensor,
    share: torch.Tensor,
    labelled: torch.Tensor,
    loss: str,
    weight_decay: float,
    seed: int,
    steps: int = 1000,
    lr: float = 0.01,
    batch: int = 0,
) -> None:
    """AdamW (cosine schedule) of an MLP read-out (or a whole head) on grid cells: BCE of each
    cell's logit against its error share, cells weighted by their labelled share; for `wbce`
    the wrong and right pixel masses are balanced as in training. Full-batch, or `batch`
    random images a step (the sum scaled to the whole set's)."""
    torch.manual_seed(seed)
    right, wrong = labelled * (1 - share), labelled * share  # pixel masses per cell
    if loss == "wbce":
        n_right, n_wrong = right.sum(), wrong.sum()
        w = torch.stack([1 / torch.sqrt(n_right + 1), 1 / torch.sqrt(n_wrong + 1)])
        right, wrong = right * w[0] / n_right / w.sum(), wrong * w[1] / n_wrong / w.sum()
    else:
        right, wrong = right / labelled.sum(), wrong / labelled.sum()
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            take = slice(None)
            if 0 < batch < len(grid):
                take = torch.randperm(len(grid))[:batch]
            z = mlp(grid[take])
            bce = wrong[take] * F.softplus(-z) + right[take] * F.softplus(z)  # both sides
            value = bce.sum() * (len(grid) / len(z))
            value.backward()
            optimizer.step()
            schedule.step()


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
