"""Results of `deal-train al`: one JSON, a markdown table and the paper-style plot.

The table has one row per strategy and one column per % labelled: test mIoU of the best-val
checkpoint, mean ± std (sample std, ddof 1) over the seeds that reached that stage; the
full-data mIoU and its 95% line come from the optional `--full` reference run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Names as the paper's figures spell them; unknown strategies show their key.
LABELS = {
    "ds": "DEAL (DS)",
    "de": "DEAL (DE)",
    "entropy": "Entropy",
    "qbc": "QBC",
    "coreset": "Core-set",
    "random": "Random",
}
COLORS = {
    "ds": "tab:red",
    "de": "tab:orange",
    "entropy": "tab:blue",
    "qbc": "tab:green",
    "coreset": "tab:purple",
    "random": "tab:gray",
}
FULL_LINE = 0.95  # the paper's "95% of full" reference


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


def collect(out: Path, strategies: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """The state.json of the named strategies and seeds under `out` as one results dict.

    Holds the protocol and the preset configs, a per-strategy summary, the full-data reference
    (if run) and every run's complete state (labelled sets, metrics, selections, timings).
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
    return {
        "protocol": settings,
        "config": config,  # the first run's; every run differs only in train.seed (+ AL seed)
        "strategies": [s for s in strategies if any(r["strategy"] == s for r in runs)],
        "seeds": sorted({r["seed"] for r in runs}),
        "fractions": [n / settings["pool_size"] for n in settings["sizes"]],
        "summary": {
            s: _summarise([r for r in runs if r["strategy"] == s], stages) for s in strategies
        },
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
    head = "| strategy | " + " | ".join(f"{f * 100:.0f}%" for f in fractions) + " |"
    lines = [
        f"Test mIoU (%) of each stage's best-val checkpoint, mean ± std over seeds "
        f"{', '.join(map(str, seeds))}; pool of {proto['pool_size']} images, labelled "
        f"{', '.join(map(str, proto['sizes']))}.",
        "",
        head,
        "|---|" + "---:|" * len(fractions),
    ]
    for name in results["strategies"]:
        s = results["summary"][name]
        rows = zip(s["mean"], s["std"], s["n"], strict=True)
        cells = [_cell(m, d, n, len(seeds)) for m, d, n in rows]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    full = results.get("full")
    if full:
        lines += [
            "",
            f"Full data (100%, {proto['pool_size']} images, seed "
            f"{', '.join(str(r['seed']) for r in full['runs'])}): {full['test_miou'] * 100:.1f} "
            f"mIoU; {FULL_LINE:.0%} of full = {full['test_miou'] * FULL_LINE * 100:.1f}.",
        ]
    return "\n".join(lines)


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
        color = COLORS.get(name)
        ax.plot(x, mean, marker="o", markersize=4, color=color, label=LABELS.get(name, name))
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
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
    ax.set_xticks(x, [f"{v:.0f}" for v in x])
    ax.set_xlabel("% of labelled images")
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
