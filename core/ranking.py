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
is above THRESH. `per_group=N` (any strategy) skips an image whose group (`Pool.groups`, e.g. its
camera or drive: `groups_of`) already holds N picks. `balance=WEIGHTS` (any strategy) takes the
CANDIDATE_FACTOR x k best picks of the strategy and keeps the k whose predicted class mix
(`Pool.class_fraction`) comes closest to the target mix WEIGHTS (uniform: all ones). `choose`
returns the picks with what the rules skipped; `pick_ranked` only the picks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .registry import Registry
from .strategies import NOVEL_THRESHOLD

# the per-image scores of a scored pool: the three a strategy ranks by, and novelty (how far from
# the training frames, 0..1), which selection may cap or exclude by (`Options.novel_share`)
SCORE_COLUMNS: tuple[str, ...] = ("ds", "de", "entropy", "novelty")
TIE_TOLERANCE = 1e-5  # computed cosine distances closer than this are ties (then: by path)
CANDIDATE_FACTOR = 4  # score-then-core-set strategies: k-center among the 4k best by score
_CHUNK_ROWS = 1 << 16  # rows of embeddings processed at a time by coreset / diverse


@dataclass(frozen=True)
class Pool:
    """The scored images to select from, aligned by index.

    paths: [N] image paths; scores: column name -> [N] float; embeddings: [N, D] (an ndarray or a
    memmap of the embeddings side file), needed by `coreset` and `diverse`; class_fraction:
    [N, C] predicted class shares, needed by `balance`; groups: [N] int group ids, needed by
    `per_group`.
    """

    paths: Sequence[str]
    scores: dict[str, np.ndarray]
    embeddings: np.ndarray | None = None
    class_fraction: np.ndarray | None = None
    groups: np.ndarray | None = None

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
    per_group: int | None = None  # at most this many picks per group of Pool.groups
    balance: np.ndarray | None = None  # [C] target class weights of the picks' class mix
    novel_share: float | None = None  # at most this share of k off-domain picks (0: none)
    novel_threshold: float = NOVEL_THRESHOLD  # novelty above this is off-domain


@dataclass(frozen=True)
class Skip:
    """An image a rule passed over: a near-duplicate (`of` the pick it is close to, at `cosine`)
    or one of a group that was full."""

    index: int
    reason: str  # "duplicate" | "group"
    of: int | None = None
    cosine: float | None = None


Skips = list[Skip]
Strategy = Callable[..., list[Pick]]  # (pool, k, options, skipped: Skips | None) -> picks


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


def _need_groups(pool: Pool) -> np.ndarray:
    if pool.groups is None or len(pool.groups) != len(pool):
        raise ValueError("a per-group quota needs every image's group, but the pool has none")
    return np.asarray(pool.groups)


def _need_fractions(pool: Pool, classes: int) -> np.ndarray:
    """[N, C] class mixes, each row summing to 1 (a missing or empty row counts as no class)."""
    f = pool.class_fraction
    if f is None or np.shape(f) != (len(pool), classes):
        raise ValueError(f"balance needs each image's {classes} class fractions; the pool has none")
    f = np.nan_to_num(np.asarray(f, dtype=np.float64))
    total = f.sum(axis=1, keepdims=True)
    return np.divide(f, total, out=np.zeros_like(f), where=total > 0)


def groups_of(paths: Sequence[str], pattern: str | None = None) -> tuple[np.ndarray, int]:
    """[N] group ids of `paths` and the number of paths that `pattern` does not match.

    A path's group is its folder; with `pattern` (a regular expression searched in the path), the
    match's first group, or the whole match when the pattern has no group. A path the pattern
    does not match is a group of its own. Raises re.error for a bad pattern.
    """
    regex = None if pattern is None else re.compile(pattern)
    ids: dict[object, int] = {}
    out = np.zeros(len(paths), dtype=np.int64)
    unmatched = 0
    for n, path in enumerate(paths):
        key: object = os.path.dirname(path)
        if regex is not None:
            m = regex.search(path)
            unmatched += m is None
            key = ("alone", n) if m is None else (m.group(1) or "" if regex.groups else m.group(0))
        out[n] = ids.setdefault(key, len(ids))
    return out, unmatched


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


class _Admission:
    """Whether a ranked image may join the picks: not a near-duplicate of a pick (`diverse`) and
    not of a group that holds `per_group` picks already. An admitted image counts as picked; one
    turned away is recorded in `skipped`."""

    def __init__(self, pool: Pool, opts: Options, k: int, skipped: Skips | None) -> None:
        self.diverse, self.quota = opts.diverse, opts.per_group
        self.skipped = [] if skipped is None else skipped
        self.emb = None if self.diverse is None else _need_embeddings(pool, "--diverse")
        self.groups = None if self.quota is None else _need_groups(pool)
        width = 0 if self.emb is None else self.emb.shape[1]
        self.picked = np.zeros((max(k, 0), width))  # [k, D] unit rows of the picks so far
        self.picked_at: list[int] = []  # their pool indices
        self.counts: dict[int, int] = {}  # group -> picks

    def admit(self, i: int) -> bool:
        group = None if self.groups is None else int(self.groups[i])
        if group is not None and self.counts.get(group, 0) >= (self.quota or 0):
            self.skipped.append(Skip(i, "group"))
            return False
        if self.emb is not None:
            e = _unit(self.emb[i])
            n = len(self.picked_at)
            if n:
                cosine = self.picked[:n] @ e
                j = int(np.argmax(cosine))
                if float(cosine[j]) > (self.diverse or 0.0):
                    self.skipped.append(Skip(i, "duplicate", self.picked_at[j], float(cosine[j])))
                    return False
            self.picked[n] = e
        self.picked_at.append(i)
        if group is not None:
            self.counts[group] = self.counts.get(group, 0) + 1
        return True


def _walk(
    pool: Pool, scores: np.ndarray, k: int, opts: Options, skipped: Skips | None
) -> list[int]:
    """The first k indices of the ranking by `scores` that `_Admission` lets through."""
    admission = _Admission(pool, opts, k, skipped)
    picked: list[int] = []
    for i in _ranked_blocks(pool.paths, scores, 4 * k):
        if len(picked) >= k:
            break
        if admission.admit(i):
            picked.append(i)
    return picked


def _by_score(score_fn: Callable[[Pool, Options], np.ndarray]) -> Strategy:
    """A strategy that ranks by a per-image score, with optional near-duplicate suppression and
    per-group quotas."""

    def strategy(pool: Pool, k: int, opts: Options, skipped: Skips | None = None) -> list[Pick]:
        scores = score_fn(pool, opts)
        if opts.diverse is None and opts.per_group is None:
            return [Pick(int(i), float(scores[i])) for i in top_k(pool.paths, scores, k)]
        return [Pick(i, float(scores[i])) for i in _walk(pool, scores, k, opts, skipped)]

    return strategy


def coreset(pool: Pool, k: int, opts: Options, skipped: Skips | None = None) -> list[Pick]:
    """Greedy k-center: repeatedly pick the image farthest (1 - cosine) from every centre.

    Centres start as `opts.labeled`; without them the first pick is the image farthest from the
    pool's mean direction (its score is that distance). A pick's score is its distance to the
    nearest centre when picked. With `diverse`, stops once every remaining image has cosine above
    the threshold to some centre; with `per_group`, a group's images drop out once it holds that
    many picks. (`skipped` is not written: the greedy passes over no image one by one.)
    """
    emb = _need_embeddings(pool, "coreset")
    n, d = emb.shape
    labeled = np.zeros((0, d)) if opts.labeled is None else opts.labeled
    dist = 1.0 - _max_cosine(emb, labeled)  # [N]; +inf without centres
    groups = None if opts.per_group is None else _need_groups(pool)
    counts: dict[int, int] = {}  # group -> picks
    picks: list[Pick] = []

    def take(i: int, score: float) -> None:
        nonlocal dist
        picks.append(Pick(i, score))
        dist = np.minimum(dist, 1.0 - _max_cosine(emb, emb[i][None]))
        dist[i] = -np.inf
        if groups is not None:
            group = int(groups[i])
            counts[group] = counts.get(group, 0) + 1
            if counts[group] >= (opts.per_group or 0):
                dist[groups == group] = -np.inf

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
    With `per_group`, the candidates are the best by the score with at most that many per group
    (so any k of them keep the quota).
    """

    def strategy(pool: Pool, k: int, opts: Options, skipped: Skips | None = None) -> list[Pick]:
        scores = score_fn(pool, opts)
        emb = _need_embeddings(pool, "a score-then-core-set strategy")
        if opts.per_group is None:
            candidates = top_k(pool.paths, scores, CANDIDATE_FACTOR * k)
        else:
            quota_only = replace(opts, diverse=None)
            walked = _walk(pool, scores, CANDIDATE_FACTOR * k, quota_only, skipped)
            candidates = np.array(walked, dtype=np.int64)
            opts = replace(opts, per_group=None)
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

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a)[keep]

    sub = Pool(
        paths=_Take(pool.paths, keep),
        scores={name: np.asarray(col)[keep] for name, col in pool.scores.items()},
        embeddings=rows(pool.embeddings),
        class_fraction=rows(pool.class_fraction),
        groups=rows(pool.groups),
    )
    return sub, keep


def _balanced(mix: np.ndarray, picks: list[Pick], k: int, weights: np.ndarray) -> list[Pick]:
    """k of `picks` (ranked) taken one at a time: each the one that brings the picks' mean class
    mix closest (L2) to the target `weights / sum(weights)`; ties within TIE_TOLERANCE go to the
    better ranked. `mix` is the pool's [N, C] class mixes."""
    f = mix[[p.index for p in picks]]  # [M, C]
    target = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    mass, left, chosen = np.zeros(len(target)), np.ones(len(picks), dtype=bool), []
    for step in range(1, min(k, len(picks)) + 1):
        # |(mass + f) / step - target|^2 * step^2: the mix after taking f, against the target
        cost = np.where(left, ((f - (step * target - mass)) ** 2).sum(axis=1), np.inf)
        best = int(np.flatnonzero(cost <= cost.min() + TIE_TOLERANCE)[0])
        chosen.append(picks[best])
        mass, left[best] = mass + f[best], False
    return chosen


@dataclass
class Choice:
    """What `choose` picked, best first; what the rules skipped on the way; the images it could
    pick from (the pool less the excluded)."""

    picks: list[Pick]
    skipped: Skips = field(default_factory=list)
    pool_size: int = 0
    available: int = 0
    novel_excluded: int = 0  # off-domain images left out (Options.novel_share)

    def shortfall(self, k: int, opts: Options) -> list[str]:
        """Why fewer than k images were picked (empty when k were)."""
        if len(self.picks) >= k:
            return []
        why = []
        if self.available < k:
            excluded = self.pool_size - self.available
            why.append(
                f"{self.available} images to pick from"
                + (f" ({excluded} of {self.pool_size} excluded)" if excluded else "")
            )
            if self.novel_excluded:
                why.append(
                    f"{self.novel_excluded} of them off-domain (novelty above "
                    f"{opts.novel_threshold:g}; --keep-novel or --max-novel-share picks them)"
                )
        duplicates = sum(s.reason == "duplicate" for s in self.skipped)
        full = sum(s.reason == "group" for s in self.skipped)
        if duplicates:
            why.append(f"{duplicates} near-duplicates skipped (cosine above {opts.diverse})")
        if full:
            why.append(f"{full} images of full groups skipped (at most {opts.per_group} a group)")
        rules = [f"cosine above {opts.diverse} to a pick"] if opts.diverse is not None else []
        rules += [f"a group holding {opts.per_group} picks"] if opts.per_group is not None else []
        if not why and rules:  # k-center rules images out without passing over them
            why.append("every other image has " + " or ".join(rules))
        return why


def _check(pool: Pool, k: int, opts: Options) -> None:
    if len(pool) == 0:
        raise ValueError("the pool is empty: no image was scored successfully, nothing to select")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if opts.diverse is not None and not -1.0 <= opts.diverse <= 1.0:
        raise ValueError(f"--diverse is a cosine threshold in [-1, 1], got {opts.diverse}")
    if opts.novel_share is not None and not 0.0 <= opts.novel_share <= 1.0:
        raise ValueError(f"--max-novel-share is a share in [0, 1], got {opts.novel_share}")
    if opts.per_group is not None and opts.per_group < 1:
        raise ValueError(f"a per-group quota is at least 1, got {opts.per_group}")
    if opts.balance is not None:
        w = np.asarray(opts.balance, dtype=np.float64)
        with np.errstate(over="ignore"):
            total = w.sum()
        if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or total <= 0:
            raise ValueError("balance weights are finite, >= 0 and not all 0")
        if not np.isfinite(total):
            raise ValueError("balance weights sum to more than a float holds: scale them down")
        _need_fractions(pool, len(w))


def novel(pool: Pool, threshold: float) -> np.ndarray:
    """[N] bool: the images whose novelty is above `threshold` (off-domain); an unknown novelty
    (NaN: a model without novelty statistics, scores from before them) is never above."""
    values = pool.scores.get("novelty")
    if values is None:
        return np.zeros(len(pool), bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(values, np.float64) > threshold


def _novel_excluded(pool: Pool, strategy: str, k: int, opts: Options) -> tuple[Options, int]:
    """`opts` with the off-domain images over the cap excluded, and how many that excludes: of
    those above the threshold, only the floor(novel_share * k) that `strategy` ranks first among
    them may be picked."""
    if opts.novel_share is None:
        return opts, 0
    off = novel(pool, opts.novel_threshold)
    exclude = np.zeros(len(pool), bool) if opts.exclude is None else np.asarray(opts.exclude)
    cap = int(np.floor(opts.novel_share * k + 1e-9))
    candidates = off & ~exclude
    if cap > 0 and candidates.any():
        sub, keep = _without(pool, ~candidates)
        plain = replace(opts, diverse=None, per_group=None, balance=None, novel_share=None)
        allowed = keep[[p.index for p in STRATEGIES[strategy](sub, cap, plain, None)]]
        candidates[allowed] = False
    return replace(opts, exclude=exclude | candidates), int(candidates.sum())


def choose(pool: Pool, strategy: str, k: int, options: Options | None = None) -> Choice:
    """Rank `pool` by `strategy` and pick the top k, best first, with what the rules skipped.

    k larger than the pool returns every (non-excluded) image; an empty pool is a ValueError.
    """
    fn = STRATEGIES[strategy]
    opts = options or Options()
    _check(pool, k, opts)
    opts, novel_excluded = _novel_excluded(pool, strategy, k, opts)
    want = k if opts.balance is None else CANDIDATE_FACTOR * k
    skipped: Skips = []
    if opts.exclude is None or not np.any(opts.exclude):
        picks, available = fn(pool, want, opts, skipped), len(pool)
    else:
        sub, keep = _without(pool, opts.exclude)
        found = fn(sub, want, opts, skipped) if len(sub) else []
        picks = [Pick(int(keep[p.index]), p.score) for p in found]
        skipped = [
            Skip(int(keep[s.index]), s.reason, None if s.of is None else int(keep[s.of]), s.cosine)
            for s in skipped
        ]
        available = len(sub)
    if opts.balance is not None:
        mix = _need_fractions(pool, len(opts.balance))
        picks = _balanced(mix, picks, k, opts.balance)
    return Choice(picks, skipped, len(pool), available, novel_excluded)


def pick_ranked(pool: Pool, strategy: str, k: int, options: Options | None = None) -> list[Pick]:
    """Rank `pool` by `strategy` and return the top k picks, best first (`choose`'s picks)."""
    return choose(pool, strategy, k, options).picks
