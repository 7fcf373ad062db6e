"""Pool-level selection: rank scored images and pick the k most worth labelling. Pure numpy.

The one home of the ranking rules, used by `deal-client` on scored files and by the active-learning
loop in training. Every strategy follows one rule: higher score = picked first, ties broken by path
(ascending, by the path's file-system bytes). Scores read from data (ds, de, entropy) tie only when
equal; distances this module computes (core-set) tie when within `TIE_TOLERANCE`, because the last
bits of a BLAS dot product depend on a row's position in the matrix. Strategies are looked up by
name in `STRATEGIES`; each takes a `Pool` and returns ranked `Pick`s.

    ds, de, entropy   the model's per-image scores (DEAL's difficulty score / difficulty entropy,
                      and the softmax-entropy baseline)
    random            a seeded hash of the path: reproducible and independent of pool order
    coreset           greedy k-center on L2-normalised embeddings, cosine distance; `labeled`
                      embeddings are the initial centres
    ds+coreset, ...   the 4k highest by a score, then k-center among them: hard images that are
                      not near-duplicates of each other (frames of one drive) or of the labelled

`diverse=THRESH` (any strategy) skips an image whose embedding cosine to an already picked image
is above THRESH.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .registry import Registry

SCORE_COLUMNS: tuple[str, ...] = ("ds", "de", "entropy")
TIE_TOLERANCE = 1e-5  # computed cosine distances closer than this are ties (then: by path)
CANDIDATE_FACTOR = 4  # score-then-core-set strategies: k-center among the 4k best by score
_CHUNK_ROWS = 1 << 16  # rows of embeddings processed at a time by coreset / diverse


@dataclass(frozen=True)
class Pool:
    """The scored images to select from, aligned by index.

    paths: [N] image paths; scores: column name -> [N] float; embeddings: [N, D] (an ndarray or a
    memmap of the embeddings side file), needed by `coreset` and `diverse`.
    """

    paths: Sequence[str]
    scores: dict[str, np.ndarray]
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class Pick:
    """One selected image: its index into the pool and the score it was ranked by."""

    index: int
    score: float


@dataclass(frozen=True)
class Options:
    """Knobs shared by all strategies."""

    seed: int = 0  # random: hash key
    labeled: np.ndarray | None = None  # [L, D] embeddings of already-labelled images (coreset)
    diverse: float | None = None  # cosine threshold for near-duplicate suppression
    exclude: np.ndarray | None = None  # [N] bool, True = never pick (e.g. already labelled)


Strategy = Callable[[Pool, int, Options], list[Pick]]


# ---------------------------------------------------------------------------------------- ranking
def _path_keys(paths: Sequence[str], idx: np.ndarray) -> np.ndarray:
    """File-system bytes of paths[idx], as a numpy bytes array that sorts like the paths."""
    return np.array([os.fsencode(paths[int(i)]) for i in idx], dtype=bytes)


def _order(paths: Sequence[str], scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """idx sorted by score descending, then path ascending."""
    if len(idx) == 0:
        return idx
    return idx[np.lexsort((_path_keys(paths, idx), -scores[idx]))]


def top_k(paths: Sequence[str], scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first, ties by path. NaN ranks last.

    O(N) argpartition to find the k-th value, then a full sort of only the candidates that reach
    it (all of them, so a tie at the boundary is broken by path, not by position).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if len(paths) != n:
        raise ValueError(f"{len(paths)} paths but {n} scores")
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    keyed = np.where(np.isnan(scores), -np.inf, scores)
    if k == n:
        candidates = np.arange(n)
    else:
        kth = keyed[np.argpartition(-keyed, k - 1)[k - 1]]  # k-th largest value
        candidates = np.flatnonzero(keyed >= kth)
    return _order(paths, keyed, candidates)[:k]


def _ranked_blocks(paths: Sequence[str], scores: np.ndarray, first: int) -> Iterator[int]:
    """All indices in rank order, computed lazily in growing top-k blocks."""
    done, m = 0, max(first, 1)
    while done < len(scores):
        block = top_k(paths, scores, m)
        yield from (int(i) for i in block[done:])
        done, m = len(block), m * 4


# ----------------------------------------------------------------------------------- embeddings
def _unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float64 (distances far above TIE_TOLERANCE's noise); zero rows stay
    zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _max_cosine(emb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N] max cosine of each row of emb to any of centres [M, D] (-inf when M == 0)."""
    out = np.full(len(emb), -np.inf)
    if len(centres) == 0:
        return out
    c = _unit(centres)
    for s in range(0, len(emb), _CHUNK_ROWS):
        out[s : s + _CHUNK_ROWS] = (_unit(emb[s : s + _CHUNK_ROWS]) @ c.T).max(axis=1)
    return out


def _need_embeddings(pool: Pool, why: str) -> np.ndarray:
    if pool.embeddings is None:
        raise ValueError(f"{why} needs embeddings, but the pool has none")
    if len(pool.embeddings) != len(pool):
        raise ValueError(f"{len(pool.embeddings)} embeddings for {len(pool)} images")
    return pool.embeddings


def _farthest(paths: Sequence[str], dist: np.ndarray) -> int | None:
    """Index of the largest distance, ties (within TIE_TOLERANCE) by path; NaN counts as -inf;
    None if every distance is -inf."""
    dist = np.where(np.isnan(dist), -np.inf, dist)
    best = dist.max()
    if best == -np.inf:
        return None
    tied = np.flatnonzero(dist >= best - TIE_TOLERANCE)
    return int(tied[0]) if len(tied) == 1 else int(tied[np.argmin(_path_keys(paths, tied))])


# ----------------------------------------------------------------------------------- strategies
def path_hash(paths: Sequence[str], seed: int) -> np.ndarray:
    """[N] uniform [0, 1) scores from a seeded hash of each path's bytes.

    The same path and seed always get the same score, whatever else is in the pool or its order,
    so shards, merges and re-selections agree. FNV-1a over the bytes, vectorised over paths,
    then the splitmix64 finaliser mixed with the seed.
    """
    raw = np.array([os.fsencode(p) for p in paths], dtype=bytes)  # [N] fixed width, 0-padded
    n, width = len(raw), raw.dtype.itemsize
    lengths = np.char.str_len(raw) if n else np.zeros(0, dtype=np.int64)
    columns = raw.view(np.uint8).reshape(n, width) if width else np.zeros((n, 0), np.uint8)
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(width):
        h = np.where(lengths > j, (h ^ columns[:, j]) * prime, h)
    h ^= np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        h = (h ^ (h >> np.uint64(shift))) * np.uint64(mult)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _column(name: str) -> Callable[[Pool, Options], np.ndarray]:
    def score(pool: Pool, opts: Options) -> np.ndarray:
        if name not in pool.scores:
            raise ValueError(f"the pool has no {name!r} scores")
        return np.asarray(pool.scores[name], dtype=np.float64)

    return score


def _by_score(score_fn: Callable[[Pool, Options], np.ndarray]) -> Strategy:
    """A strategy that ranks by a per-image score, with optional near-duplicate suppression."""

    def strategy(pool: Pool, k: int, opts: Options) -> list[Pick]:
        scores = score_fn(pool, opts)
        if opts.diverse is None:
            return [Pick(int(i), float(scores[i])) for i in top_k(pool.paths, scores, k)]
        emb = _need_embeddings(pool, "--diverse")
        picks: list[Pick] = []
        picked = np.zeros((0, emb.shape[1]))  # [P, D] unit rows
        for i in _ranked_blocks(pool.paths, scores, 4 * k):
            if len(picks) >= k:
                break
            e = _unit(emb[i])
            if len(picked) and float((picked @ e).max()) > opts.diverse:
                continue  # near-duplicate of an image already picked
            picks.append(Pick(i, float(scores[i])))
            picked = np.vstack([picked, e[None]])
        return picks

    return strategy


def coreset(pool: Pool, k: int, opts: Options) -> list[Pick]:
    """Greedy k-center: repeatedly pick the image farthest (1 - cosine) from every centre.

    Centres start as `opts.labeled`; without them the first pick is the image farthest from the
    pool's mean direction (its score is that distance). A pick's score is its distance to the
    nearest centre when picked. With `diverse`, stops once every remaining image has cosine above
    the threshold to some centre.
    """
    emb = _need_embeddings(pool, "coreset")
    n, d = emb.shape
    labeled = np.zeros((0, d)) if opts.labeled is None else opts.labeled
    dist = 1.0 - _max_cosine(emb, labeled)  # [N]; +inf without centres
    picks: list[Pick] = []

    def take(i: int, score: float) -> None:
        nonlocal dist
        picks.append(Pick(i, score))
        dist = np.minimum(dist, 1.0 - _max_cosine(emb, emb[i][None]))
        dist[i] = -np.inf

    if len(labeled) == 0 and k > 0:
        mean = np.zeros(d, dtype=np.float64)
        for s in range(0, n, _CHUNK_ROWS):
            mean += _unit(emb[s : s + _CHUNK_ROWS]).sum(axis=0)
        from_mean = 1.0 - _max_cosine(emb, mean[None])
        i = _farthest(pool.paths, from_mean)
        if i is not None:
            take(i, float(from_mean[i]))
    while len(picks) < min(k, n):
        i = _farthest(pool.paths, dist)
        if i is None or (opts.diverse is not None and dist[i] < 1.0 - opts.diverse):
            break
        take(i, float(dist[i]))
    return picks


def _score_then_coreset(score_fn: Callable[[Pool, Options], np.ndarray]) -> Strategy:
    """The CANDIDATE_FACTOR x k images with the highest score, then greedy k-center among them:
    hard images that are not near-duplicates of each other nor of the labelled images.

    The k-center starts from the labelled images, or without them from the highest-scoring
    candidate (picked first). A pick's score is the base score; picks come in k-center order.
    """

    def strategy(pool: Pool, k: int, opts: Options) -> list[Pick]:
        scores = score_fn(pool, opts)
        emb = _need_embeddings(pool, "a score-then-core-set strategy")
        candidates = top_k(pool.paths, scores, CANDIDATE_FACTOR * k)
        if len(candidates) == 0:
            return []
        if opts.labeled is None or len(opts.labeled) == 0:  # the hardest candidate comes first
            first, candidates = candidates[:1], candidates[1:]
            opts, k = replace(opts, labeled=np.asarray(emb[first])), k - 1
        else:
            first = candidates[:0]
        sub = Pool(_Take(pool.paths, candidates), {}, np.asarray(emb)[candidates])
        chosen = [*first, *(candidates[p.index] for p in coreset(sub, k, opts))]
        return [Pick(int(i), float(scores[i])) for i in chosen]

    return strategy


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    ds=_by_score(_column("ds")),
    de=_by_score(_column("de")),
    entropy=_by_score(_column("entropy")),
    random=_by_score(lambda pool, opts: path_hash(pool.paths, opts.seed)),
    coreset=coreset,
    **{f"{name}+coreset": _score_then_coreset(_column(name)) for name in ("ds", "de", "entropy")},
)


# What each strategy's score says, in one line (shown under the selection table).
MEANINGS: dict[str, str] = {
    "ds": "ds = mean of the difficulty map: for dealseg's own models the expected share of "
    "the frame's pixels the model gets wrong",
    "de": "de = entropy of the difficulty map's histogram: how mixed easy and hard regions are",
    "entropy": "entropy = mean per-pixel softmax entropy: how unsure the segmenter is",
    "random": "random = a seeded hash of the path: a reproducible random sample",
    "coreset": "coreset = distance to the nearest picked or labelled frame: frames unlike those",
    "ds+coreset": "ds of the frame, picked among the hardest by ds so that no two are alike",
    "de+coreset": "de of the frame, picked among the highest by de so that no two are alike",
    "entropy+coreset": "entropy of the frame, picked among the most uncertain so that no two "
    "are alike",
}


class _Take(Sequence[str]):
    """paths[keep[i]] without copying the paths."""

    def __init__(self, paths: Sequence[str], keep: np.ndarray) -> None:
        self.paths, self.keep = paths, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i):  # type: ignore[override]
        return self.paths[int(self.keep[i])]


def _without(pool: Pool, exclude: np.ndarray) -> tuple[Pool, np.ndarray]:
    """The pool minus excluded images, and the original index of each remaining one."""
    keep = np.flatnonzero(~np.asarray(exclude, dtype=bool))
    sub = Pool(
        paths=_Take(pool.paths, keep),
        scores={name: np.asarray(col)[keep] for name, col in pool.scores.items()},
        embeddings=None if pool.embeddings is None else np.asarray(pool.embeddings)[keep],
    )
    return sub, keep


def select(pool: Pool, strategy: str, k: int, options: Options | None = None) -> list[Pick]:
    """Rank `pool` by `strategy` and return the top k picks, best first.

    k larger than the pool returns every (non-excluded) image; an empty pool is a ValueError.
    """
    fn = STRATEGIES[strategy]
    if len(pool) == 0:
        raise ValueError("the pool is empty: no image was scored successfully, nothing to select")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    opts = options or Options()
    if opts.diverse is not None and not -1.0 <= opts.diverse <= 1.0:
        raise ValueError(f"--diverse is a cosine threshold in [-1, 1], got {opts.diverse}")
    if opts.exclude is None or not np.any(opts.exclude):
        return fn(pool, k, opts)
    sub, keep = _without(pool, opts.exclude)
    if len(sub) == 0:
        return []
    return [Pick(int(keep[p.index]), p.score) for p in fn(sub, k, opts)]
