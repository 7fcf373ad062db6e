"""Results of `deal-train al`: one JSON, markdown tables and the paper-style plot.

The first table has one row per strategy and one column per % labelled: test mIoU of the
best-val checkpoint, mean ± std (sample std, ddof 1) over the seeds that reached that stage,
then the area under the curve (the mean mIoU over the labelled range, trapezoids, per seed). The
full-data mIoU and its 95% line come from the optional `--full` reference run. With the data
set at hand, a second table says what each strategy picked: the share of its picks from rare
conditions (the street set's tags.jsonl) and the share of their labelled pixels in rare classes
(those under RARE_CLASS_SHARE of the pool's labelled pixels), beside the pool's own shares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.strategies import color, label

FULL_LINE = 0.95  # the paper's "95% of full" reference
RARE_CLASS_SHARE = 0.02  # a class with less than this share of the pool's pixels is rare


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _summarise(runs: list[dict[str, Any]], stages: int) -> dict[str, list[Any]]:
    """Per stage: mean, std and count of test mIoU over the runs (seeds) that reached it."""
    mean: list[float | None] = []
    std: list[float | None] = []
    count: list[int] = []
    for i in range(stages):
        v = np.array([r["stages"][i]["test_miou"] for r in runs if len(r["stages"]) > i])
        mean.append(float(v.mean()) if len(v) else None)
        std.append(float(v.std(ddof=1)) if len(v) > 1 else None)
        count.append(int(len(v)))
    return {"mean": mean, "std": std, "n": count}


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "n": int(len(v)),
    }


def area_under_curve(runs: list[dict[str, Any]], fractions: Sequence[float]) -> dict[str, Any]:
    """Mean test mIoU over the labelled range (trapezoids), per seed that finished every stage;
    mean ± std over those seeds."""
    x = np.asarray(fractions, dtype=np.float64)
    per_seed = []
    for run in runs:
        if len(run["stages"]) == len(x):
            y = np.array([stage["test_miou"] for stage in run["stages"]])
            per_seed.append(float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0])))
    return _mean_std(per_seed)


def _picked(run: dict[str, Any]) -> list[int]:
    return [i for stage in run["stages"] for i in stage.get("selection", {}).get("indices", [])]


def pick_stats(data: Path, split: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rare-condition and rare-class shares of each strategy's picks (all stages) and the pool's.

    Rare conditions come from the set's tags.jsonl (absent: not reported); rare classes are
    those with less than RARE_CLASS_SHARE of the pool's labelled pixels.
    """
    from .data import SegmentationDataset, load_sample
    from .tags import read_tags

    dataset = SegmentationDataset(data, split)
    counts = np.zeros((len(dataset), dataset.num_classes), dtype=np.int64)  # [N, C] pixels
    for i, sample in enumerate(dataset.samples):
        label = load_sample(sample, dataset.classes)[1]
        counts[i] = np.bincount(label[label < dataset.num_classes], minlength=dataset.num_classes)
    pool_share = counts.sum(0) / max(counts.sum(), 1)
    rare_classes = np.flatnonzero(pool_share < RARE_CLASS_SHARE)
    try:
        tags = read_tags(data)
        names = [str(s.image.relative_to(Path(data))) for s in dataset.samples]
        rare = np.array([tags[n].rare for n in names])
    except (FileNotFoundError, KeyError, ValueError):
        rare = None

    def shares(indices: Sequence[int]) -> tuple[float | None, float]:
        idx = np.asarray(indices, dtype=np.int64)
        picked = counts[idx]
        cls = float(picked[:, rare_classes].sum() / max(picked.sum(), 1))
        return (None if rare is None else float(rare[idx].mean())), cls

    pool_cond, pool_cls = shares(range(len(dataset)))
    by_strategy: dict[str, Any] = {}
    for name in dict.fromkeys(r["strategy"] for r in runs):  # frame picks
        seeds = [shares(_picked(r)) for r in runs if r["strategy"] == name and _picked(r)]
        by_strategy[name] = {
            "rare_condition": None if rare is None else _mean_std([c for c, _ in seeds]),
            "rare_class": _mean_std([k for _, k in seeds]),
        }
    return {
        "rare_classes": [dataset.class_names[c] for c in rare_classes],
        "pool": {"rare_condition": pool_cond, "rare_class": pool_cls},
        "strategies": by_strategy,
    }


def collect(
    out: Path, strategies: Sequence[str], seeds: Sequence[int], data: Path | None = None
) -> dict[str, Any]:
    """The state.json of the named strategies and seeds under `out` as one results dict.

    Holds the protocol and the preset configs, a per-strategy summary and area under the
    curve, the full-data reference (if run), what the strategies picked (with `data`, the data
    set's root) and every run's complete state (labelled sets, metrics, selections, timings).
    """
    out = Path(out)
    runs: list[dict[str, Any]] = []
    for name in strategies:
        paths = sorted((out / name).glob("seed*/state.json"))
        runs += [s for s in map(_read, paths) if s["seed"] in seeds]
    if not runs:
        raise ValueError(f"no active-learning runs (*/seed*/state.json) under {out}")
    settings = dict(runs[0]["settings"])
    config = {"model": settings.pop("model"), "train": settings.pop("train")}
    for key in ("strategy", "seed"):
        settings.pop(key)
    stages = len(settings["sizes"])
    full_runs = [
        {"seed": int(p.parent.name.removeprefix("seed")), **_read(p)["result"]}
        for p in sorted((out / "full").glob("seed*/result.json"))
    ]
    for r in full_runs:
        r.pop("history", None)
    fractions = [n / settings["pool_size"] for n in settings["sizes"]]
    return {
        "protocol": settings,
        "config": config,  # the first run's; every run differs only in train.seed (+ AL seed)
        "strategies": [s for s in strategies if any(r["strategy"] == s for r in runs)],
        "seeds": sorted({r["seed"] for r in runs}),
        "fractions": fractions,
        "summary": {
            s: _summarise([r for r in runs if r["strategy"] == s], stages) for s in strategies
        },
        "area": {
            s: area_under_curve([r for r in runs if r["strategy"] == s], fractions)
            for s in strategies
        },
        "picks": None if data is None else pick_stats(data, settings["train_split"], runs),
        "full": (
            {"test_miou": float(np.mean([r["test_miou"] for r in full_runs])), "runs": full_runs}
            if full_runs
            else None
        ),
        "runs": runs,
    }


def _cell(mean: float | None, std: float | None, n: int, seeds: int) -> str:
    if mean is None:
        return "-"
    text = f"{mean * 100:.1f}" + ("" if std is None else f" ± {std * 100:.1f}")
    return text + (f" (n={n})" if n < seeds else "")


def format_table(results: dict[str, Any]) -> str:
    """Markdown: rows = strategy, columns = % labelled, test mIoU (%) mean ± std over seeds."""
    fractions, seeds = results["fractions"], results["seeds"]
    proto = results["protocol"]
    span = f"{fractions[0] * 100:.0f}-{fractions[-1] * 100:.0f}%"
    head = "| strategy | " + " | ".join(f"{f * 100:.0f}%" for f in fractions)
    lines = [
        f"Test mIoU (%) of each stage's best-val checkpoint, mean ± std over seeds "
        f"{', '.join(map(str, seeds))}; pool of {proto['pool_size']} images, labelled "
        f"{', '.join(map(str, proto['sizes']))}; area = mean mIoU over {span} (per seed).",
        "",
        head + " | area |",
        "|---|" + "---:|" * (len(fractions) + 1),
    ]
    for name in results["strategies"]:
        s, area = results["summary"][name], results.get("area", {}).get(name)
        rows = zip(s["mean"], s["std"], s["n"], strict=True)
        cells = [_cell(m, d, n, len(seeds)) for m, d, n in rows]
        cells.append("-" if area is None else _cell(area["mean"], area["std"], area["n"], 0))
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    lines += _picks_table(results)
    full = results.get("full")
    if full:
        lines += [
            "",
            f"Full data (100%, {proto['pool_size']} images, seed "
            f"{', '.join(str(r['seed']) for r in full['runs'])}): {full['test_miou'] * 100:.1f} "
            f"mIoU; {FULL_LINE:.0%} of full = {full['test_miou'] * FULL_LINE * 100:.1f}.",
        ]
    return "\n".join(lines)


def _share(value: dict[str, Any] | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "-" if value["mean"] is None else _cell(value["mean"], value["std"], value["n"], 0)
    return f"{value * 100:.1f}"


def _picks_table(results: dict[str, Any]) -> list[str]:
    """What each strategy picked over all stages: rare-condition frames, rare-class pixels."""
    picks = results.get("picks")
    if not picks:
        return []
    lines = [
        "",
        f"Share (%) of the picked frames from rare conditions, and of their labelled pixels in "
        f"rare classes ({', '.join(picks['rare_classes']) or 'none'}), mean ± std over seeds:",
        "",
        "| strategy | rare-condition frames | rare-class pixels |",
        "|---|---:|---:|",
    ]
    for name in results["strategies"]:
        p = picks["strategies"].get(name)
        if p:
            cond, cls = _share(p["rare_condition"]), _share(p["rare_class"])
            lines.append(f"| {label(name)} | {cond} | {cls} |")
    pool = picks["pool"]
    pool_row = f"| (the pool) | {_share(pool['rare_condition'])} | {_share(pool['rare_class'])} |"
    return [*lines, pool_row]


def plot(results: dict[str, Any], path: Path) -> None:
    """mIoU vs % labelled, one line per strategy with a ±std band, dashed 95%-of-full line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array(results["fractions"]) * 100
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name in results["strategies"]:
        s = results["summary"][name]
        mean = np.array([np.nan if m is None else m * 100 for m in s["mean"]])
        std = np.array([0.0 if d is None else d * 100 for d in s["std"]])
        shade = color(name)
        ax.plot(x, mean, marker="o", markersize=4, color=shade, label=label(name))
        ax.fill_between(x, mean - std, mean + std, color=shade, alpha=0.15, linewidth=0)
    full = results.get("full")
    if full:
        level = full["test_miou"] * FULL_LINE * 100
        ax.axhline(level, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            f"{FULL_LINE:.0%} of full ({level:.1f})",
            (x[0], level),
            xytext=(0, 4),
            textcoords="offset points",
            fontsize=9,
        )
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(results.get("x_label", "% of labelled images"))
    ax.set_ylabel("mIoU (%)")
    seeds = results["seeds"]
    ax.set_title(f"Test mIoU vs labelled data ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any]) -> dict[str, Path]:
    """results.json, results.md and results.png in `out`; returns their paths."""
    out = Path(out)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["md"].write_text(format_table(results) + "\n")
    plot(results, paths["png"])
    return paths


def pool_class_shares(data: Path, split: str) -> tuple[list[str], np.ndarray]:
    """The split's class names and each class's share of its labelled pixels [C]."""
    from .data import SegmentationDataset, load_sample

    dataset = SegmentationDataset(data, split)
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    for sample in dataset.samples:
        label = load_sample(sample, dataset.classes)[1]
        counts += np.bincount(label[label < dataset.num_classes], minlength=dataset.num_classes)
    return list(dataset.class_names), counts / max(counts.sum(), 1)


def bought_stats(runs: list[dict[str, Any]], rare: np.ndarray) -> dict[str, Any]:
    """Of the pixels each run bought after stage 0 (its own choices): the share the choosing
    model got wrong and the share in the `rare` classes; mean ± std over the runs."""
    errors, rare_share = [], []
    for run in runs:
        picks = [s["selection"] for s in run["stages"] if "selection" in s]
        pixels = sum(p["pixels"] for p in picks)
        if not pixels:
            continue
        labelled = np.sum([p["class_pixels"] for p in picks], axis=0)
        errors.append(sum(p["error_pixels"] for p in picks) / pixels)
        rare_share.append(float(labelled[rare].sum() / max(labelled.sum(), 1)))
    return {"errors": _mean_std(errors), "rare_class": _mean_std(rare_share)}


def collect_label_cost(
    out: Path, strategies: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """The label-cost study's state.json files under `out` as one results dict (the shape
    `plot` reads: fractions are the budgets)."""
    out = Path(out)
    runs = []
    for name in strategies:
        runs += [
            s
            for s in map(_read, sorted((out / name).glob("seed*/state.json")))
            if s["seed"] in seeds
        ]
    if not runs:
        raise ValueError(f"no label-cost runs (*/seed*/state.json) under {out}")
    settings = dict(runs[0]["settings"])
    budgets = [float(b) for b in settings["budgets"]]
    full_runs = [
        {"seed": int(p.parent.name.removeprefix("seed")), **_read(p)["result"]}
        for p in sorted((out / "full").glob("seed*/result.json"))
        if int(p.parent.name.removeprefix("seed")) in seeds
    ]
    for r in full_runs:
        r.pop("history", None)
    present = [s for s in strategies if any(r["strategy"] == s for r in runs)]
    return {
        "protocol": {
            **{k: settings[k] for k in ("budgets", "regions", "temperature", "pool_size")},
            "pseudo_threshold": settings.get("pseudo_threshold", 0.0),
        },
        "config": {"model": settings["model"], "train": settings["train"]},
        "strategies": present,
        "units": {r["strategy"]: r["settings"]["unit"] for r in runs},
        "seeds": sorted({r["seed"] for r in runs}),
        "fractions": budgets,
        "x_label": "% of the pool's pixels labelled",
        "summary": {
            s: _summarise([r for r in runs if r["strategy"] == s], len(budgets)) for s in present
        },
        "full": (
            {
                "test_miou": float(np.mean([r["test_miou"] for r in full_runs])),
                "std": float(np.std([r["test_miou"] for r in full_runs], ddof=1))
                if len(full_runs) > 1
                else None,
                "runs": full_runs,
            }
            if full_runs
            else None
        ),
        "runs": runs,
    }


def format_label_cost(results: dict[str, Any], names: Sequence[str], shares: np.ndarray) -> str:
    """Markdown: test mIoU per strategy and budget (mean ± std, % of full), then what the
    strategies bought."""
    budgets, seeds = results["fractions"], results["seeds"]
    proto, full = results["protocol"], results["full"]
    lines = [
        f"Test mIoU (%) of each stage's best-val checkpoint, mean ± std over seeds "
        f"{', '.join(map(str, seeds))} (n = seeds that reached the stage, when fewer); pool "
        f"of {proto['pool_size']} frames, regions {proto['regions']}, sampling temperature "
        f"{proto['temperature']:g}; stage 0 is a random start shared by each unit's strategies"
        + (
            f"; from stage 1 every frame also trains on the previous stage's model's predictions "
            f"of confidence >= {proto['pseudo_threshold']:g} outside what was bought."
            if proto["pseudo_threshold"]
            else "."
        ),
        "",
        "| strategy | unit | " + " | ".join(f"{b * 100:g}%" for b in budgets) + " |",
        "|---|---|" + "---:|" * len(budgets),
    ]
    for name in results["strategies"]:
        s = results["summary"][name]
        cells = [
            _cell(m, d, n, len(seeds)) for m, d, n in zip(s["mean"], s["std"], s["n"], strict=True)
        ]
        if full:
            cells = [
                c if m is None else f"{c} ({m / full['test_miou'] * 100:.0f}%)"
                for c, m in zip(cells, s["mean"], strict=True)
            ]
        unit = results["units"][name]
        lines.append(f"| {label(name)} | {unit} | " + " | ".join(cells) + " |")
    if full:
        spread = "" if full["std"] is None else f" ± {full['std'] * 100:.1f}"
        lines += [
            "",
            f"Full data (every pixel of the {proto['pool_size']} frames, the same recipe, seeds "
            f"{', '.join(str(r['seed']) for r in full['runs'])}): "
            f"{full['test_miou'] * 100:.1f}{spread} mIoU; (x%) = share of it.",
        ]
    rare = np.flatnonzero(shares < RARE_CLASS_SHARE)
    lines += [
        "",
        "Of the pixels each strategy bought after stage 0, the share its choosing model got "
        f"wrong and the share in rare classes ({', '.join(names[c] for c in rare) or 'none'}; "
        f"the pool: {shares[rare].sum() * 100:.1f}%), mean ± std over seeds:",
        "",
        "| strategy | errors | rare-class pixels |",
        "|---|---:|---:|",
    ]
    for name in results["strategies"]:
        st = bought_stats([r for r in results["runs"] if r["strategy"] == name], rare)
        lines.append(f"| {label(name)} | {_share(st['errors'])} | {_share(st['rare_class'])} |")
    return "\n".join(lines)


def report_label_cost(
    out: Path, strategies: Sequence[str], seeds: Sequence[int], data: Path
) -> str:
    """results.md and results.png of the label-cost study in `out` (`data`: the data set's
    root, for the pool's class shares); returns the table."""
    out = Path(out)
    results = collect_label_cost(out, strategies, seeds)
    split = results["runs"][0]["settings"]["train_split"]
    names, shares = pool_class_shares(data, split)
    table = format_label_cost(results, names, shares)
    (out / "results.md").write_text(table + "\n")
    plot(results, out / "results.png")
    return table
