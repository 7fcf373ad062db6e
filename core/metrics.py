"""How well a per-image score finds the images a model gets wrong. Pure numpy, torch-free.

The one home of these rules: `deal-train eval` and the difficulty-head refit (training) and
`deal-client eval` (client) import them.

    confusion_matrix, error_rate, mean_iou   one image's prediction against its label
    rank, spearman, auroc                     rank statistics (ties share their mean rank)
    risk_coverage, aurc, augrc                images accepted from the lowest score up
    worst_count, highest, capture_share       the worst k images (highest error rates) and the
                                              share of them a score puts in its own top k
    judge                                     all of the above for one score, by `JUDGED` name

Higher score = harder image (more worth labelling), as in `core.ranking`. The worst k and the top
k are `core.ranking.top_k` picks: ties broken by path, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ranking import top_k

WORST_PERCENTS: tuple[int, ...] = (10, 25)  # the worst 10% and 25% of the evaluated images
# Every metric `judge` reports, and whether a higher value is better.
JUDGED: dict[str, bool] = {
    "spearman_error": True,  # Spearman(score, error rate)
    "spearman_miou": True,  # Spearman(score, 1 - image mIoU)
    **{f"auroc_worst{p}": True for p in WORST_PERCENTS},  # AUROC for the worst p%
    "aurc": False,  # area under the risk-coverage curve
    "augrc": False,  # area under the generalized risk-coverage curve
    **{f"capture_worst{p}": True for p in WORST_PERCENTS},  # share of the worst p% in the top p%
}


# ------------------------------------------------------------------------------ one image
def confusion_matrix(
    pred: np.ndarray, label: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """[C, C] counts, rows = ground truth, columns = prediction, over the pixels `valid` marks
    ([H, W] bool; default: those whose label is a class, 0..C-1)."""
    keep = label < num_classes if valid is None else valid
    idx = label[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both ground truth and prediction."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def error_rate(conf: np.ndarray) -> float:
    """Share of the counted pixels whose prediction differs from the label (NaN if none)."""
    total = int(conf.sum())
    return float(1 - np.trace(conf) / total) if total else float("nan")


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the label or the prediction (NaN if none)."""
    ious = iou_per_class(conf)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


# ------------------------------------------------------------------------ rank statistics
def rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    sorted_vals = values[order]
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    for s, c in zip(start, counts, strict=True):
        if c > 1:
            ranks[order[s : s + c]] = s + (c - 1) / 2
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of `scores` for the bool labels `positive` (Mann-Whitney; ties count 1/2)."""
    scores, positive = np.asarray(scores).reshape(-1), np.asarray(positive, bool).reshape(-1)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rank(scores) + 1  # 1-based
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation over the pairs where both values are finite."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = rank(x[ok]), rank(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------------- risk-coverage
def risk_coverage(
    scores: np.ndarray, errors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, selective risk, generalized risk), each [N], accepting images from the lowest
    score up: after i images, coverage i/N, selective risk = mean error of the accepted,
    generalized risk = sum of their errors / N.

    Images with tied scores are accepted together: each counts with the mean error of its tie
    group, which gives the expected curve over every order of the ties.
    """
    s, e = np.asarray(scores, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    n = len(s)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # [G] first image of each tie group
    sizes = np.diff(np.r_[starts, n])
    e = np.repeat(np.add.reduceat(e, starts) / sizes, sizes)
    accepted = np.arange(1, n + 1)
    total = np.cumsum(e)
    return accepted / n, total / accepted, total / n


def aurc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean selective risk over the coverages 1/N, 2/N,
    ..., 1 (lower is better)."""
    _, risk, _ = risk_coverage(scores, errors)
    return float(risk.mean()) if len(risk) else float("nan")


def augrc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Area under the generalized risk-coverage curve (Traub et al. 2024), by trapezoids from
    (0, 0) through every (i/N, generalized risk) (lower is better). With 0/1 errors it is
    pi^2 / 2 + pi (1 - pi) (1 - AUROC), pi the error rate."""
    _, _, general = risk_coverage(scores, errors)
    n = len(general)
    return float((general.sum() - general[-1] / 2) / n) if n else float("nan")


# ------------------------------------------------------------------------- the worst images
def worst_count(n: int, percent: int) -> int:
    """How many images the worst `percent`% of n are: ceil(n * percent / 100), at least 1."""
    return max(1, -(-n * percent // 100))


def highest(paths: Sequence[str], values: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: the k highest values (`core.ranking.top_k`: ties by path, NaN last)."""
    mask = np.zeros(len(paths), dtype=bool)
    mask[top_k(paths, values, k)] = True
    return mask


def capture_share(paths: Sequence[str], scores: np.ndarray, errors: np.ndarray, k: int) -> float:
    """Share of the k worst images (highest error rates) among the k highest scores."""
    both = highest(paths, scores, k) & highest(paths, errors, k)
    return float(both.sum() / k)


def judge(
    paths: Sequence[str], scores: np.ndarray, errors: np.ndarray, miou: np.ndarray
) -> dict[str, float]:
    """Every `JUDGED` metric of one per-image score against the images' error rates and mIoU
    (all NaN for no images)."""
    n = len(paths)
    if n == 0:
        return dict.fromkeys(JUDGED, float("nan"))
    result = {
        "spearman_error": spearman(scores, errors),
        "spearman_miou": spearman(scores, 1 - np.asarray(miou, dtype=np.float64)),
        "aurc": aurc(scores, errors),
        "augrc": augrc(scores, errors),
    }
    for p in WORST_PERCENTS:
        k = worst_count(n, p)
        result[f"auroc_worst{p}"] = auroc(scores, highest(paths, errors, k))
        result[f"capture_worst{p}"] = capture_share(paths, scores, errors, k)
    return {name: float(result[name]) for name in JUDGED}
