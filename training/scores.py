"""Image-level acquisition scores: the one definition, used by the research loop and the ONNX graph.

All functions are export-friendly (no histc, no one_hot, no data-dependent shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def difficulty_score(difficulty: torch.Tensor) -> torch.Tensor:
    """DS: mean of the difficulty map. [B, H, W] -> [B]."""
    return difficulty.flatten(1).mean(dim=1)


def difficulty_histogram(difficulty: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-image histogram with `bins` bins over the image's own [min, max]: [B, H, W] -> [B, bins].

    A constant map puts every pixel in bin 0. The maximum falls in the last bin.
    """
    d = difficulty.flatten(1)  # [B, N]
    lo = d.min(dim=1, keepdim=True).values
    span = d.max(dim=1, keepdim=True).values - lo
    scaled = (d - lo) / torch.where(span > 0, span, torch.ones_like(span))
    index = torch.clamp(torch.floor(scaled * bins), 0, bins - 1)  # [B, N]
    edges = torch.arange(bins, dtype=d.dtype, device=d.device).view(1, bins, 1)
    return (index.unsqueeze(1) == edges).to(d.dtype).sum(dim=2)  # [B, bins]


def difficulty_entropy(difficulty: torch.Tensor, bins: int) -> torch.Tensor:
    """DE: ln-entropy of the difficulty histogram. [B, H, W] -> [B]; 0 for a constant map."""
    counts = difficulty_histogram(difficulty, bins)
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel entropy (ln) of the class softmax. [B, C, h, w] -> [B]."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).flatten(1).mean(dim=1)


def class_fraction(logits: torch.Tensor) -> torch.Tensor:
    """Share of pixels predicted as each class. [B, C, h, w] -> [B, C]."""
    pred = logits.argmax(dim=1, keepdim=True)  # [B, 1, h, w]
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
    return (pred == classes).to(logits.dtype).flatten(2).mean(dim=2)


def pooled_embedding(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised global-average-pooled decoder features. [B, D, h, w] -> [B, D]."""
    return F.normalize(features.mean(dim=(2, 3)), dim=1, eps=1e-12)
