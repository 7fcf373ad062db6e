"""Acquisition over the unlabelled pool: score images with a stage's model, pick the next batch.

One pipeline for every strategy (baal's shape): infer over the candidates (a DataLoader, no
augmentation, batches under no_grad) -> one score per image -> rank with the client's ranking
rules (`dealseg.core.ranking`: higher score = picked first, ties broken by the image's path).
Strategies are looked up by name in `STRATEGIES`; what each needs (the stage's model or not)
is its descriptor's (`dealseg.core.strategies`).

    ds        DEAL: mean of the difficulty map               (scores.difficulty_score)
    de        DEAL: ln-entropy of the difficulty histogram   (scores.difficulty_entropy, `bins`)
    entropy   mean per-pixel softmax entropy                 (scores.softmax_entropy)
    qbc       MC dropout: dropout sampled, batch norm in eval, `passes` passes, per-pixel vote
              entropy of the argmax votes, image mean
    coreset   greedy k-center, cosine distance on scores.pooled_embedding of the decoder
              features, the labelled images as initial centres
    ds+coreset, de+coreset, entropy+coreset
              the best candidates by that score, then k-center among them (the client's)
    random    seeded uniform scores

DS, DE, entropy and the embedding are the functions the exported graph uses, and top-k and
k-center are the client's own: nothing here re-implements them, so the loop and `deal-client`
pick the same frames from the same scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dealseg.core.ranking import Options, Pool, coreset, pick_ranked, top_k
from dealseg.core.registry import Registry
from dealseg.core.strategies import DESCRIPTORS

from .data import SegmentationDataset
from .model import DEALNet, DEALOutput, normalise
from .scores import difficulty_entropy, difficulty_score, pooled_embedding, softmax_entropy

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class StageContext:
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
class StagePicks:
    """The picked train-split indices, best first, with the score each was ranked by."""

    indices: list[int]
    scores: list[float]
    scored: int  # how many candidates the strategy scored


class Strategy(Protocol):
    """Picks k of the candidates."""

    def __call__(self, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks: ...


BatchFn = Callable[[DEALNet, torch.Tensor, StageContext], torch.Tensor]  # [B,3,H,W] -> [B] | [B,D]
ScoreFn = Callable[[DEALOutput, StageContext], torch.Tensor]  # one forward pass's outputs -> [B]


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
def infer(ctx: StageContext, indices: Sequence[int], fn: BatchFn) -> np.ndarray:
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
    device = next(model.parameters()).device
    outs = []
    try:
        for images, _ in DataLoader(dataset, batch_size=ctx.batch_size):
            x = normalise(images.to(device), cfg.mean, cfg.std)
            outs.append(fn(model, x, ctx).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros(0)


def ds_from(out: DEALOutput, ctx: StageContext) -> torch.Tensor:
    return difficulty_score(out.difficulty())


def de_from(out: DEALOutput, ctx: StageContext) -> torch.Tensor:
    return difficulty_entropy(out.difficulty(), ctx.bins)


def entropy_from(out: DEALOutput, ctx: StageContext) -> torch.Tensor:
    return softmax_entropy(out.logits)


def ds_batch(model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return ds_from(model(x), ctx)


def de_batch(model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return de_from(model(x), ctx)


def entropy_batch(model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return entropy_from(model(x), ctx)


def embedding_batch(model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
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


def qbc_batch(model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
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


def _torch_seed(ctx: StageContext) -> int:
    return int(np.random.SeedSequence([ctx.seed, ctx.stage]).generate_state(1)[0])


# ------------------------------------------------------------------------------ strategies
def image_paths(ctx: StageContext, indices: Sequence[int]) -> list[str]:
    """The image file of each train-split index: the key that breaks ties between equal scores."""
    dataset = SegmentationDataset(ctx.data, ctx.split, indices=indices)
    return [str(sample.image) for sample in dataset.samples]


def _ranked(ctx: StageContext, candidates: Sequence[int], scores: np.ndarray, k: int) -> StagePicks:
    order = top_k(image_paths(ctx, candidates), scores, k)
    return StagePicks(
        [int(candidates[i]) for i in order], [float(scores[i]) for i in order], len(candidates)
    )


class ImageScore:
    """Rank candidates by one score per image computed batch-wise by `batch_fn`."""

    def __init__(self, batch_fn: BatchFn, seeded: bool = False) -> None:
        self.batch_fn = batch_fn
        self.seeded = seeded  # fix torch's RNG (dropout masks) from the context's seed and stage

    def __call__(self, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks:
        with torch.random.fork_rng(devices=[], enabled=self.seeded):
            if self.seeded:
                torch.manual_seed(_torch_seed(ctx))
            return _ranked(ctx, candidates, infer(ctx, candidates, self.batch_fn), k)


class RandomScore:
    """Seeded uniform scores: a reproducible random batch, different per seed and stage."""

    def __call__(self, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks:
        rng = np.random.default_rng([ctx.seed, ctx.stage, 2])
        return _ranked(ctx, candidates, rng.random(len(candidates)), k)


class KCenter:
    """Greedy k-center (the client's core-set) on pooled decoder features, the labelled images
    as the first centres; score = distance to the nearest centre when picked."""

    def __call__(self, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks:
        emb = infer(ctx, candidates, embedding_batch)  # [N, D]
        centres = infer(ctx, ctx.labeled, embedding_batch) if ctx.labeled else None  # [L, D]
        pool = Pool(image_paths(ctx, candidates), {}, emb)
        picks = coreset(pool, k, Options(labeled=centres))
        return StagePicks(
            [int(candidates[p.index]) for p in picks], [p.score for p in picks], len(candidates)
        )


class ScoreThenKCenter:
    """The client's `<score>+coreset`: the best candidates by a score, then k-center among them
    on pooled decoder features, the labelled images as the first centres (core.ranking)."""

    def __init__(self, score: str, score_from: ScoreFn) -> None:
        self.score, self.score_from = score, score_from

    def _score_and_embed(self, model: DEALNet, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        """[B, 1 + D]: the score, then the embedding, from one forward pass."""
        out = model(x)
        return torch.cat([self.score_from(out, ctx)[:, None], pooled_embedding(out.features)], 1)

    def __call__(self, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks:
        scored = infer(ctx, candidates, self._score_and_embed)  # [N, 1 + D]
        centres = infer(ctx, ctx.labeled, embedding_batch) if ctx.labeled else None  # [L, D]
        pool = Pool(image_paths(ctx, candidates), {self.score: scored[:, 0]}, scored[:, 1:])
        picks = pick_ranked(pool, f"{self.score}+coreset", k, Options(labeled=centres))
        return StagePicks(
            [int(candidates[p.index]) for p in picks], [p.score for p in picks], len(candidates)
        )


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    ds=ImageScore(ds_batch),
    de=ImageScore(de_batch),
    entropy=ImageScore(entropy_batch),
    qbc=ImageScore(qbc_batch, seeded=True),
    coreset=KCenter(),
    random=RandomScore(),
    **{
        f"{name}+coreset": ScoreThenKCenter(name, score_from)
        for name, score_from in (("ds", ds_from), ("de", de_from), ("entropy", entropy_from))
    },
)


def needs_model(name: str) -> bool:
    """Whether strategy `name` looks at the stage's model (its descriptor says)."""
    return "model" in DESCRIPTORS[name].needs


def acquire(name: str, ctx: StageContext, candidates: Sequence[int], k: int) -> StagePicks:
    """Pick the k candidates (train-split indices) most worth labelling by strategy `name`."""
    strategy = STRATEGIES[name]
    pool = sorted({int(i) for i in candidates})
    if not pool:
        raise ValueError("the unlabelled pool is empty: there is nothing to select from")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return strategy(ctx, pool, k)
