"""`deal-client eval`: which per-image score best finds the frames the model gets wrong.

    POOL + LABELS ─► each image's mask (core.labels) ─► decode threads: image + checked mask
    ─► engine: the image scores + segmentation ─► per image: error rate, mIoU, scores
    ─► per strategy (each image score, random, oracle): metrics (core.metrics)
    ─► eval.json, risk_coverage.png, the table

The streaming is `run.Scorer`'s, with an `Evaluator` as its loader and sink. A run evaluates the
whole pool afresh (a labelled holdout is small); only the main thread writes files.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.classes import DataError, find_class_file, read_class_file
from dealseg.core.contract import IMAGE_SCORES, ModelSpec
from dealseg.core.decode import Frame, decode_frame
from dealseg.core.files import atomic_write
from dealseg.core.labels import LabelError, LabelIndex, Mask, ignored_values, read_mask
from dealseg.core.metrics import (
    JUDGED,
    WORST_PERCENTS,
    confusion_matrix,
    error_rate,
    judge,
    mean_iou,
    risk_coverage,
)
from dealseg.core.ranking import path_hash

from .engines import Engine
from .records import path_fields
from .scoring import Scorer, ScoreReport
from .settings import ScoreSettings

EVAL_JSON = "eval.json"
RISK_COVERAGE_PNG = "risk_coverage.png"
FORMAT = 1
EVAL_OUTPUTS: tuple[str, ...] = (*IMAGE_SCORES, "segmentation")
RANDOM, ORACLE = "random", "oracle"  # the baselines: a seeded path hash; the true error rate
HEADERS: dict[str, str] = {
    "spearman_error": "rho(err)",
    "spearman_miou": "rho(1-mIoU)",
    **{f"auroc_worst{p}": f"AUROC@{p}%" for p in WORST_PERCENTS},
    "aurc": "AURC",
    "augrc": "AUGRC",
    **{f"capture_worst{p}": f"top{p}%" for p in WORST_PERCENTS},
}


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate_pool` compares (the CLI's --ignore and --seed options)."""

    ignore: tuple[int, ...] = ()  # label values not evaluated, beside 255 and C
    seed: int = 0  # key of the random baseline's path hash


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: its pixel error rate, its mIoU and every image score."""

    path: str
    error_rate: float
    miou: float
    scores: dict[str, float]


@dataclass
class EvalRun:
    """What `evaluate_pool` did: eval.json's content, the failures (path -> reason, in pool
    order) and the streaming report (timing)."""

    doc: dict[str, Any]
    failed: dict[str, str]
    report: ScoreReport


def _resized(segmentation: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """[sh, sw] class ids -> [h, w] (nearest), the label's size."""
    from PIL import Image

    if segmentation.shape == size:
        return segmentation
    image = Image.fromarray(np.ascontiguousarray(segmentation, dtype=np.uint8))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST))


class Evaluator:
    """The `Scorer`'s loader and sink for eval: `load` decodes an image and checks its mask (on
    a decode thread); `append_batch` compares each returned segmentation with its mask."""

    def __init__(
        self, spec: ModelSpec, masks: Mapping[str, str], ignore: frozenset[int], max_pixels: int
    ) -> None:
        self.spec, self.masks, self.ignore, self.max_pixels = spec, masks, ignore, max_pixels
        self.results: list[ImageResult] = []
        self.failed: dict[str, str] = {}
        self._checked: dict[str, Mask] = {}  # decoded, awaiting their batch (single dict ops)

    @property
    def done(self) -> set[str]:
        return set()  # nothing is resumed

    def load(self, path: str) -> Frame:
        """The model input of `path` (stretched); its checked mask is kept for `append_batch`."""
        frame = decode_frame(path, self.spec.input_size, self.max_pixels)
        mask = read_mask(self.masks[path], frame.shown, self.spec.num_classes, self.ignore)
        self._checked[path] = mask
        return frame

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None:
        for i, path in enumerate(paths):
            mask = self._checked.pop(path)
            pred = _resized(out["segmentation"][i], mask.label.shape)
            conf = confusion_matrix(pred, mask.label, self.spec.num_classes, mask.valid)
            scores = {name: float(out[name][i]) for name in IMAGE_SCORES}
            self.results.append(ImageResult(path, error_rate(conf), mean_iou(conf), scores))

    def append_error(self, path: str, reason: str) -> None:
        self.failed[path] = reason


def _match(paths: Sequence[str], index: LabelIndex) -> tuple[dict[str, str], dict[str, str]]:
    """(image -> mask path, image -> why it has none)."""
    masks, failed = {}, {}
    for path in paths:
        try:
            masks[path] = index.find(path)
        except LabelError as exc:
            failed[path] = exc.reason
    return masks, failed


def check_label_classes(labels: str, spec: ModelSpec) -> None:
    """The class file of LABELS (in the folder or the one above it: a dataset root) must name
    the model's classes in the model's order; else a ValueError with both lists. Labels
    without a class file are checked mask by mask (no id beyond the model's classes)."""
    folder = Path(labels)
    for where in (folder, folder.parent):
        try:
            found = find_class_file(where)
            table = None if found is None else read_class_file(found)
        except (DataError, OSError) as exc:
            raise ValueError(str(exc)) from None
        if table is None:
            continue
        if table.names != tuple(spec.class_names):
            raise ValueError(
                f"the labels' class file {found} has {table.num_classes} classes "
                f"{list(table.names)}; the model {spec.model_id} has {spec.num_classes} "
                f"{list(spec.class_names)}: evaluate labels of the model's classes"
            )
        return


def evaluate_pool(
    paths: Sequence[str],
    index: LabelIndex,
    engine: Engine,
    out: Path,
    settings: ScoreSettings,
    how: EvalSettings,
    pool: str,
) -> EvalRun:
    """Evaluate every image of `paths` against its mask in `index`; write eval.json and
    risk_coverage.png into `out`. A bad image or label costs one error row.

    Raises EngineError (after its retries) and OSError (`out` cannot be written).
    """
    masks, failed = _match(paths, index)
    ignore = ignored_values(engine.spec.num_classes, how.ignore)
    evaluator = Evaluator(engine.spec, masks, ignore, settings.max_pixels)
    report = Scorer(engine, evaluator, settings, EVAL_OUTPUTS, evaluator.load).run(list(masks))
    position = {p: i for i, p in enumerate(paths)}  # batches may return out of order
    results = sorted(evaluator.results, key=lambda r: position[r.path])
    failed.update(evaluator.failed)
    failed = {p: failed[p] for p in paths if p in failed}
    scores = strategy_scores(results, how.seed)
    summary = {
        "format": FORMAT,
        "model": engine.spec.model_id,
        "pool": path_fields(pool),
        "labels": path_fields(index.root),
        "ignored_values": sorted(ignore),
        "seed": how.seed,
        "counts": {"images": len(paths), "evaluated": len(results), "failed": len(failed)},
        **summarise(results, scores),
    }
    doc = {"summary": summary, "images": image_rows(results), "errors": error_rows(failed)}
    write_outputs(Path(out), doc, results, scores)
    return EvalRun(doc, failed, report)


def write_outputs(
    out: Path, doc: dict[str, Any], results: Sequence[ImageResult], scores: dict[str, np.ndarray]
) -> None:
    """eval.json and risk_coverage.png (a curve per strategy, in the summary's order)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False)
    atomic_write(out / EVAL_JSON, text.encode())
    errors = np.array([r.error_rate for r in results], np.float64)
    curves = {
        s["strategy"]: (*risk_coverage(scores[s["strategy"]], errors)[:2], s["aurc"])
        for s in doc["summary"]["strategies"]
    }
    title = f"{doc['summary']['model']}, {len(results)} images"
    plot_risk_coverage(out / RISK_COVERAGE_PNG, curves, title)


# ------------------------------------------------------------------------------- summary
def strategy_scores(results: Sequence[ImageResult], seed: int) -> dict[str, np.ndarray]:
    """name -> [N] score of each strategy: every image score, `random` and `oracle`."""
    paths = [r.path for r in results]
    scores = {n: np.array([r.scores[n] for r in results], np.float64) for n in IMAGE_SCORES}
    errors = np.array([r.error_rate for r in results], np.float64)
    return {**scores, RANDOM: path_hash(paths, seed), ORACLE: errors}


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summarise(results: Sequence[ImageResult], scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Every strategy's metrics, sorted by Spearman with the error rate (best first, NaN last),
    and the best strategies per metric (the oracle aside: it is the upper bound)."""
    paths = [r.path for r in results]
    errors = np.array([r.error_rate for r in results], np.float64)
    miou = np.array([r.miou for r in results], np.float64)
    judged = {name: judge(paths, s, errors, miou) for name, s in scores.items()}

    def by_spearman(name: str) -> tuple[float, str]:
        value = judged[name]["spearman_error"]
        return (-value if math.isfinite(value) else math.inf, name)

    return {
        "worst_percents": list(WORST_PERCENTS),
        "strategies": [
            {"strategy": n, **{k: _number(v) for k, v in judged[n].items()}}
            for n in sorted(judged, key=by_spearman)
        ],
        "best": {metric: _best(judged, metric) for metric in JUDGED},
    }


def _best(judged: Mapping[str, Mapping[str, float]], metric: str) -> list[str]:
    """The strategies (oracle aside) with the best value of `metric`, within 1e-9."""
    sign = 1.0 if JUDGED[metric] else -1.0
    values = {n: sign * m[metric] for n, m in judged.items() if n != ORACLE}
    finite = [v for v in values.values() if math.isfinite(v)]
    if not finite:
        return []
    top = max(finite)
    return sorted(n for n, v in values.items() if math.isfinite(v) and v >= top - 1e-9)


def _text(reason: str) -> str:
    """Strict UTF-8 text: lone surrogates (bytes of odd names) as \\udcNN."""
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


def image_rows(results: Sequence[ImageResult]) -> list[dict[str, Any]]:
    return [
        {
            **path_fields(r.path),
            "error_rate": _number(r.error_rate),
            "miou": _number(r.miou),
            **{name: _number(v) for name, v in r.scores.items()},
        }
        for r in results
    ]


def error_rows(failed: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{**path_fields(path), "error": _text(reason)} for path, reason in failed.items()]


def format_table(summary: Mapping[str, Any]) -> str:
    """The strategies as rows (the summary's order), the metrics as columns, the best value of
    each column marked with *."""
    names = [s["strategy"] for s in summary["strategies"]]
    width = max(len("strategy"), *map(len, names))
    lines = [("strategy".ljust(width) + "".join(f"{h:>12} " for h in HEADERS.values())).rstrip()]
    for row in summary["strategies"]:
        cells = []
        for metric in HEADERS:
            value, mark = row[metric], "*" if row["strategy"] in summary["best"][metric] else " "
            cells.append(f"{'-' if value is None else f'{value:.3f}':>12}{mark}")
        lines.append((row["strategy"].ljust(width) + "".join(cells)).rstrip())
    lines.append(
        "* best per column (AURC, AUGRC: lowest; others: highest), the oracle aside: it ranks by "
        "the true error rate, the upper bound"
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------------- figure
def plot_risk_coverage(
    path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]], title: str
) -> None:
    """A risk-coverage curve per strategy, name -> (coverage, risk, AURC), as the PNG `path`
    (matplotlib's Agg canvas; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {ORACLE: ("k", "--"), RANDOM: ("0.5", ":")}
    for name, (coverage, risk, area) in curves.items():
        color, line = styles.get(name, (None, "-"))
        shown = "-" if area is None else f"{area:.3f}"
        ax.plot(coverage, risk, line, color=color, label=f"{name} (AURC {shown})")
    ax.set_xlabel("coverage: share of images accepted, lowest score first")
    ax.set_ylabel("risk: mean pixel error rate of the accepted")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="strategy", fontsize="small")
    ax.set_title(f"risk-coverage: {title}", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())
