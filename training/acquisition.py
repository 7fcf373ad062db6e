"""Acquisition over the unlabelled pool: score images with a stage's model, pick the next batch.

One pipeline for every strategy (baal's shape): infer over the candidates (a DataLoader, no
augmentation, batches under no_grad) -> one score per image -> rank. Higher score = picked
first, ties broken by train-split index. Strategies are looked up by name in `STRATEGIES`.

    ds        DEAL: mean of the difficulty map               (scores.difficulty_score)
    de        DEAL: ln-entropy of the difficulty histogram   (scores.difficulty_entropy, `bins`)
    entropy   mean per-pixel softmax entropy                 (scores.softmax_entropy)
    qbc       MC dropout: dropout sampled, batch norm in eval, `passes` passes, per-pixel vote
              entropy of the argmax votes, image mean
    coreset   greedy k-center, cosine distance on scores.pooled_embedding of the decoder
              features, the labelled images as initial centres
    random    seeded uniform scores

DS, DE, entropy and the embedding are the functions the exported graph uses; nothing here
re-implements them. `top_k` and `k_center` are plain numpy so they can be tested on hand-made
inputs (the client's `client/select.py` does the same on scored files, ties by path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dealseg.client.select import Registry

from .data import SegmentationDataset
from .model import DEALNet, normalise
from .scores import difficulty_entropy, difficulty_score, pooled_embedding, softmax_entropy

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class Context:
    """What a strategy may look at: the stage's model, the train split and the labelled set."""

    data: Path  # dataset root
    model: DEALNet | None  # the stage's best-val model (`random` needs none)
    labeled: tuple[int, ...] = ()  # train-split indices already labelled (coreset centres)
    split: str = "train"
    bins: int = 8  # DE histogram bins (the paper: CamVid 8, Cityscapes 10)
    passes: int = 10  # QBC MC-dropout passes
    seed: int = 0  # random scores and QBC dropout masks, together with `stage`
    stage: int = 0
    batch_size: int = 8


@dataclass(frozen=True)
class Selection:
    """The picked train-split indices, best first, with the score each was ranked by."""

    indices: list[int]
    scores: list[float]
    scored: int  # how many candidates the strategy scored


Strategy = Callable[[Context, Sequence[int], int], Selection]
BatchFn = Callable[[DEALNet, torch.Tensor, Context], torch.Tensor]  # [B,3,H,W] -> [B] | [B,D]


# ---------------------------------------------------------------------------------- ranking
def top_k(scores: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first; ties by position; NaN ranks last.

    k larger than the pool returns the whole pool; an empty pool is a ValueError.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) == 0:
        raise ValueError("the pool is empty: there is nothing to select from")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keyed = np.where(np.isnan(s), -np.inf, s)
    return np.lexsort((np.arange(len(s)), -keyed))[:k]


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def k_center(
    emb_pool: np.ndarray, emb_labeled: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center with cosine distance (1 - cos): picked positions, and each pick's distance
    to its nearest centre when it was picked.

    emb_pool [N, D], emb_labeled [L, D] (the initial centres; None or L = 0 for none). Every step
    picks the candidate farthest from all centres, ties by position. Without centres the first
    pick is the candidate farthest from the pool's mean direction. Picks are distinct; k larger
    than the pool returns the whole pool; an empty pool is a ValueError.
    """
    pool = _unit(emb_pool)
    if pool.ndim != 2 or len(pool) == 0:
        raise ValueError("the pool is empty: there is nothing to select from")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(pool)
    centres = np.zeros((0, pool.shape[1])) if emb_labeled is None else _unit(emb_labeled)
    if len(centres):
        dist = 1.0 - (pool @ centres.T).max(axis=1)  # [N]
    else:
        dist = 1.0 - pool @ _unit(pool.sum(axis=0))  # first pick: farthest from the mean
    picks, picked_dist = [], []
    for step in range(min(k, n)):
        i = int(np.argmax(dist))  # first maximum = lowest position
        picks.append(i)
        picked_dist.append(float(dist[i]))
        near = 1.0 - pool @ pool[i]  # [N] distance to the new centre
        dist = near if step == 0 and not len(centres) else np.minimum(dist, near)
        dist[picks] = -np.inf
    return np.asarray(picks, dtype=np.int64), np.asarray(picked_dist)


def pool_subset(
    unlabeled: Sequence[int], fraction: float | None, k: int, seed: int, stage: int
) -> list[int]:
    """The candidates to score: a seeded random `fraction` of the unlabelled pool (at least k).

    None or 1 keeps the whole pool (the paper scores a random 50%, 40% for core-set and QBC).
    """
    pool = sorted(int(i) for i in unlabeled)
    if fraction is None or fraction >= 1.0:
        return pool
    if fraction <= 0.0:
        raise ValueError(f"subset must be a fraction in (0, 1], got {fraction}")
    size = min(len(pool), max(k, round(len(pool) * fraction)))
    rng = np.random.default_rng([seed, stage, 1])
    return sorted(pool[int(i)] for i in rng.choice(len(pool), size=size, replace=False))


# ------------------------------------------------------------------------------- inference
@torch.no_grad()
def infer(ctx: Context, indices: Sequence[int], fn: BatchFn) -> np.ndarray:
    """`fn` over the train-split images `indices`, in order: [N] or [N, D] float64.

    Images are resized to the model's input size (as the exported graph sees them) and
    normalised; the model is in eval mode (a `fn` may switch dropout on, see `mc_dropout`).
    """
    model = ctx.model
    if model is None:
        raise ValueError("this strategy needs the stage's model, but the context has none")
    cfg = model.cfg
    dataset = SegmentationDataset(ctx.data, ctx.split, size=cfg.input_size, indices=indices)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for images, _ in DataLoader(dataset, batch_size=ctx.batch_size):
            outs.append(fn(model, normalise(images, cfg.mean, cfg.std), ctx).float())
    finally:
        model.train(was_training)
    return torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros(0)


def ds_batch(model: DEALNet, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return difficulty_score(model(x).difficulty())


def de_batch(model: DEALNet, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return difficulty_entropy(model(x).difficulty(), ctx.bins)


def entropy_batch(model: DEALNet, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return softmax_entropy(model(x).logits)


def embedding_batch(model: DEALNet, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return pooled_embedding(model(x).features)


@contextmanager
def mc_dropout(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Dropout layers sampling (train mode), everything else, batch norm included, in eval."""
    was_training = model.training
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]
    if not dropouts:
        raise ValueError("qbc needs dropout layers with p > 0; set aspp_dropout/decoder_dropout")
    model.eval()
    for m in dropouts:
        m.train()
    try:
        yield dropouts
    finally:
        model.train(was_training)


def vote_entropy(votes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-pixel ln-entropy of the class votes of T passes, image mean: [T, B, h, w] -> [B]."""
    counts = F.one_hot(votes, num_classes).sum(dim=0).to(torch.float32)  # [B, h, w, C]
    p = counts / votes.shape[0]
    per_pixel = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=-1)
    return per_pixel.flatten(1).mean(dim=1)


def qbc_batch(model: DEALNet, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Vote entropy of `ctx.passes` MC-dropout passes at stride 4.

    The paper's dropout layers are the decoder's (the encoders have none), so the encoder runs
    once per batch and only the decoder and segmentation head are sampled.
    """
    with mc_dropout(model):
        low, high = model.encoder(x)
        votes = [
            model.segmentation_head(model.decoder(low, high)[0]).argmax(1)
            for _ in range(ctx.passes)
        ]
    return vote_entropy(torch.stack(votes), model.cfg.num_classes)  # votes [T, B, h, w]


def _torch_seed(ctx: Context) -> int:
    return int(np.random.SeedSequence([ctx.seed, ctx.stage]).generate_state(1)[0])


# ------------------------------------------------------------------------------ strategies
def _ranked(candidates: Sequence[int], scores: np.ndarray, k: int) -> Selection:
    order = top_k(scores, k)
    return Selection(
        [int(candidates[i]) for i in order], [float(scores[i]) for i in order], len(candidates)
    )


class ImageScore:
    """Rank candidates by one score per image computed batch-wise by `batch_fn`."""

    def __init__(self, batch_fn: BatchFn, seeded: bool = False) -> None:
        self.batch_fn = batch_fn
        self.seeded = seeded  # fix torch's RNG (dropout masks) from the context's seed and stage

    def __call__(self, ctx: Context, candidates: Sequence[int], k: int) -> Selection:
        with torch.random.fork_rng(devices=[], enabled=self.seeded):
            if self.seeded:
                torch.manual_seed(_torch_seed(ctx))
            return _ranked(candidates, infer(ctx, candidates, self.batch_fn), k)


def random_strategy(ctx: Context, candidates: Sequence[int], k: int) -> Selection:
    """Seeded uniform scores: a reproducible random batch, different per seed and stage."""
    rng = np.random.default_rng([ctx.seed, ctx.stage, 2])
    return _ranked(candidates, rng.random(len(candidates)), k)


def coreset_strategy(ctx: Context, candidates: Sequence[int], k: int) -> Selection:
    """Greedy k-center on pooled decoder features; score = distance to the nearest centre."""
    emb = infer(ctx, candidates, embedding_batch)  # [N, D]
    centres = infer(ctx, ctx.labeled, embedding_batch) if ctx.labeled else None  # [L, D]
    picks, dist = k_center(emb, centres, k)
    return Selection([int(candidates[i]) for i in picks], [float(d) for d in dist], len(candidates))


STRATEGIES: dict[str, Strategy] = Registry(
    ds=ImageScore(ds_batch),
    de=ImageScore(de_batch),
    entropy=ImageScore(entropy_batch),
    qbc=ImageScore(qbc_batch, seeded=True),
    coreset=coreset_strategy,
    random=random_strategy,
)


def select(name: str, ctx: Context, candidates: Sequence[int], k: int) -> Selection:
    """Pick the k candidates (train-split indices) most worth labelling by strategy `name`."""
    strategy = STRATEGIES[name]
    pool = sorted({int(i) for i in candidates})  # ties by position are then ties by index
    if not pool:
        raise ValueError("the unlabelled pool is empty: there is nothing to select from")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return strategy(ctx, pool, k)
