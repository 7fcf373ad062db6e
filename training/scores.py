"""Image-level acquisition scores: the one definition, used by the research loop and the ONNX graph.

All functions are export-friendly (no histc, no one_hot, no data-dependent shapes). Each takes
optional pixel weights: the share of each pixel (or grid cell) that is picture, not letterbox
padding (`box_weights`); without them every pixel counts, as in the research loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _axis_share(lo: torch.Tensor, hi: torch.Tensor, length: int, cells: int) -> torch.Tensor:
    """[B] box edges on one axis -> [B, cells]: the share of each cell inside [lo, hi)."""
    step = -(-length // cells)  # cells are ceil(length / cells) long, the last one clipped
    start = torch.arange(cells, dtype=torch.float32, device=lo.device) * step
    end = torch.clamp(start + step, max=float(length))
    inside = torch.minimum(end, hi[:, None]) - torch.maximum(start, lo[:, None])
    return torch.clamp(inside, min=0) / torch.clamp(end - start, min=1)


def box_weights(box: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The share of each cell of a `grid` over an H x W frame inside the box: [B, 4] (top,
    left, bottom, right; exclusive) -> [B, gh, gw]. 1 inside, 0 outside, fractions on the edges;
    at `grid` = `size` the pixel mask."""
    box = box.to(torch.float32)
    rows = _axis_share(box[:, 0], box[:, 2], size[0], grid[0])  # [B, gh]
    cols = _axis_share(box[:, 1], box[:, 3], size[1], grid[1])  # [B, gw]
    return rows[:, :, None] * cols[:, None, :]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, h, w] values and weights -> [B] weighted means."""
    w = weights.flatten(1)
    return (values.flatten(1) * w).sum(dim=1) / w.sum(dim=1)


def difficulty_score(difficulty: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """DS: mean of the difficulty map. [B, H, W] (weights [B, H, W]) -> [B]."""
    if weights is None:
        return difficulty.flatten(1).mean(dim=1)
    return _weighted_mean(difficulty, weights)


def difficulty_histogram(
    difficulty: torch.Tensor, bins: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image histogram with `bins` bins over the image's own [min, max]: [B, H, W] -> [B, bins].

    A constant map puts every pixel in bin 0. The maximum falls in the last bin. With `weights`
    only pixels of weight > 0 count, for the range too.
    """
    d = difficulty.flatten(1)  # [B, N]
    keep = torch.ones_like(d) if weights is None else (weights.flatten(1) > 0).to(d.dtype)
    inf = torch.full_like(d, float("inf"))
    lo = torch.where(keep > 0, d, inf).min(dim=1, keepdim=True).values
    span = torch.where(keep > 0, d, -inf).max(dim=1, keepdim=True).values - lo
    scaled = (d - lo) / torch.where(span > 0, span, torch.ones_like(span))
    index = torch.clamp(torch.floor(scaled * bins), 0, bins - 1)  # [B, N]
    edges = torch.arange(bins, dtype=d.dtype, device=d.device).view(1, bins, 1)
    return ((index.unsqueeze(1) == edges).to(d.dtype) * keep.unsqueeze(1)).sum(dim=2)  # [B, bins]


def difficulty_entropy(
    difficulty: torch.Tensor, bins: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """DE: ln-entropy of the difficulty histogram. [B, H, W] -> [B]; 0 for a constant map."""
    counts = difficulty_histogram(difficulty, bins, weights)
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy (ln) of the class softmax: [B, C, h, w] -> [B, h, w]."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_map_uint8(logits: torch.Tensor) -> torch.Tensor:
    """The contract's `entropy_map`: per-pixel entropy as a share of its maximum, ln(classes),
    x 255 as uint8. [B, C, h, w] -> [B, h, w]."""
    share = entropy_map(logits) / math.log(max(logits.shape[1], 2))
    return torch.round(share.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def softmax_entropy(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel entropy (ln) of the class softmax. [B, C, h, w] (weights [B, h, w]) -> [B]."""
    per_pixel = entropy_map(logits)  # [B, h, w]
    if weights is None:
        return per_pixel.flatten(1).mean(dim=1)
    return _weighted_mean(per_pixel, weights)


def class_fraction(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Share of pixels predicted as each class. [B, C, h, w] (weights [B, h, w]) -> [B, C]."""
    pred = logits.argmax(dim=1, keepdim=True)  # [B, 1, h, w]
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
    hits = (pred == classes).to(logits.dtype)  # [B, C, h, w]
    if weights is None:
        return hits.flatten(2).mean(dim=2)
    w = weights.unsqueeze(1)  # [B, 1, h, w]
    return (hits * w).flatten(2).sum(dim=2) / w.flatten(2).sum(dim=2)


def pooled_embedding(features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L2-normalised global-average-pooled decoder features. [B, D, h, w] -> [B, D]."""
    if weights is None:
        pooled = features.mean(dim=(2, 3))
    else:
        w = weights.unsqueeze(1)  # [B, 1, h, w]
        pooled = (features * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
    return F.normalize(pooled, dim=1, eps=1e-12)


def novelty_score(
    embedding: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """How far each frame is from the training frames, as the share of held-out in-domain
    frames that are nearer: 0.99 = further than 99% of them. Nearness is the squared
    Mahalanobis distance of the embedding to the training embeddings' `mean` under a shrunk
    covariance (`precision`, its inverse); `reference` holds the held-out frames' distances,
    sorted. With R of them a frame nearer than k scores k / (R + 1); one beyond them all scores
    between R / (R + 1) and 1, growing with its distance (1 - farthest / distance), so the far
    ones still rank.
    embedding [B, D], mean [D], precision [D, D], reference [R] -> [B] in [0, 1)."""
    centred = embedding - mean
    distance = ((centred @ precision) * centred).sum(dim=1)  # [B]
    nearer = (reference < distance[:, None]).to(embedding.dtype).sum(dim=1)  # [B, R] -> [B]
    beyond = torch.relu(1.0 - reference[-1] / distance.clamp_min(1e-12))  # 0 within the range
    return (nearer + beyond) / (reference.shape[0] + 1)
