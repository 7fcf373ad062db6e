"""The novelty score's statistics: how far a frame's embedding is from the training frames'.

    train split ─► embeddings ─► mean, shrunk covariance ─► precision (its inverse)
    val split   ─► embeddings ─► squared Mahalanobis distances, sorted ─► reference
    graph       ─► novelty = share of the reference nearer than the frame, graded beyond the
                   farthest (`scores.novelty_score`)

The reference comes from frames the mean and covariance were not fitted on, so a threshold
means the same for every model: novelty > 0.99 is "further than 99% of held-out in-domain
frames". The statistics are constants of the exported graph (`Novelty`); a graph exported
without them outputs NaN (unknown).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dealseg.core.decode import decode_image

from .data import LISTERS, detect_layout
from .scores import novelty_score

# Ledoit-Wolf-style shrinkage of the covariance toward its mean variance; chosen on the tuning
# kinds of bench/novelty.py (0.05-1.0 separate them alike; 0.1 keeps the held-out frames'
# quantiles closest to uniform).
SHRINKAGE = 0.1
NOVELTY_KEY = "dealseg.novelty"  # metadata beside the contract: how the statistics were made
BATCH = 16


class NoveltyError(ValueError):
    """The data cannot give novelty statistics (too few frames, a split missing)."""


@dataclass(frozen=True)
class NoveltyStats:
    """The constants of the novelty score: mean [D] and precision [D, D] of the training
    embeddings, the held-out frames' squared distances [R] (sorted), and how they were made."""

    mean: np.ndarray
    precision: np.ndarray
    reference: np.ndarray
    fitted: int  # training frames the mean and covariance come from
    shrinkage: float
    data: str = ""  # the dataset's folder name

    def describe(self) -> str:
        """JSON for the graph's metadata (`NOVELTY_KEY`)."""
        return json.dumps(
            {
                "data": self.data,
                "fitted": self.fitted,
                "reference": len(self.reference),
                "shrinkage": self.shrinkage,
                "distance": "squared Mahalanobis to the train split's embeddings",
            }
        )


def fit_novelty(
    train: np.ndarray, held_out: np.ndarray, shrinkage: float = SHRINKAGE
) -> NoveltyStats:
    """Statistics from training embeddings [N, D] and held-out in-domain embeddings [R, D]."""
    if len(train) < 2 or len(held_out) < 1:
        raise NoveltyError(
            f"novelty needs 2 or more train frames and 1 or more val frames, got {len(train)} "
            f"and {len(held_out)}"
        )
    x = np.asarray(train, np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    scale = max(float(np.trace(cov)) / len(cov), 1e-12)
    shrunk = (1 - shrinkage) * cov + shrinkage * scale * np.eye(len(cov))
    precision = np.linalg.inv(shrunk)
    stats = NoveltyStats(
        mean=mean.astype(np.float32),
        precision=((precision + precision.T) / 2).astype(np.float32),
        reference=np.zeros(0, np.float32),
        fitted=len(x),
        shrinkage=shrinkage,
    )
    reference = np.sort(distances(stats, held_out))
    return replace(stats, reference=reference)


def distances(stats: NoveltyStats, embeddings: np.ndarray) -> np.ndarray:
    """float32 [N] squared distances of embeddings [N, D], computed as the graph computes them."""
    centred = torch.from_numpy(np.asarray(embeddings, np.float32)) - torch.from_numpy(stats.mean)
    distance = ((centred @ torch.from_numpy(stats.precision)) * centred).sum(dim=1)
    return distance.numpy()


class Novelty(nn.Module):
    """embedding [B, D] -> novelty [B] in [0, 1] with constant statistics; NaN without them."""

    def __init__(self, stats: NoveltyStats | None) -> None:
        super().__init__()
        self.stats = stats
        self.known = stats is not None
        if stats is not None:
            self.register_buffer("mean", torch.from_numpy(stats.mean.copy()))
            self.register_buffer("precision", torch.from_numpy(stats.precision.copy()))
            self.register_buffer("reference", torch.from_numpy(stats.reference.copy()))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if not self.known:
            return embedding[:, 0] * float("nan")  # [B] NaN: the graph has no statistics
        return novelty_score(embedding, self.mean, self.precision, self.reference)


def split_frames(root: Path, split: str, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """A dataset split's images as uint8 batches [B, H, W, 3], stretched to `size` as
    `deal-client` frames them."""
    samples = LISTERS[detect_layout(root)](root, split)
    if not samples:
        raise NoveltyError(f"{root}: the {split} split has no images")
    for start in range(0, len(samples), BATCH):
        block = samples[start : start + BATCH]
        yield np.stack([decode_image(str(s.image), size) for s in block])


def dataset_novelty(
    embed: Callable[[np.ndarray], np.ndarray], root: Path, size: tuple[int, int]
) -> NoveltyStats:
    """Statistics of a model whose embeddings `embed` gives (uint8 [B, H, W, 3] -> [B, D]) from
    the train split of the dataset at `root` (fitted) and its val split (the reference)."""

    def embeddings(split: str) -> np.ndarray:
        return np.concatenate([embed(batch) for batch in split_frames(root, split, size)])

    return replace(fit_novelty(embeddings("train"), embeddings("val")), data=root.name)
