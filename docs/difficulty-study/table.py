"""The difficulty-score study's tables from the `deal-client eval` outputs, one per folder.

    python docs/difficulty-study/table.py SHIPPED runs/study/eval-tune runs/study/eval \
        > docs/difficulty-study/variants.md

One row per variant (its `ds`; SHIPPED names the variant the shipped model is), then the other
scores the shipped graph serves (`entropy`, `de`), random and the oracle. The pixel AUROC of
each variant's map (the held-out set's 280 train-split frames) comes from `deal-train eval`
(metrics.json beside eval.json) when it was run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("spearman_error", "Spearman(err)"),
    ("spearman_miou", "Spearman(1-mIoU)"),
    ("auroc_worst10", "AUROC worst 10%"),
    ("auroc_worst25", "AUROC worst 25%"),
    ("aurc", "AURC"),
    ("augrc", "AUGRC"),
    ("capture_worst10", "worst-10% caught"),
    ("capture_worst25", "worst-25% caught"),
)


def row(name: str, metrics: dict, pixel_auroc: float | None) -> str:
    cells = [f"{metrics[key]:.3f}" for key, _ in COLUMNS]
    pixel = "-" if pixel_auroc is None else f"{pixel_auroc:.3f}"
    return f"| {name} | " + " | ".join(cells) + f" | {pixel} |"


def table(folder: Path, shipped: str) -> None:
    runs = sorted(p.parent for p in folder.glob("*/eval.json"))
    frames = json.loads((runs[0] / "eval.json").read_text())["summary"]["counts"]["evaluated"]
    print(f"### {folder.name}: {frames} frames\n")
    header = "| variant (score) | " + " | ".join(t for _, t in COLUMNS) + " | pixel AUROC |"
    print(header)
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    baselines = {}
    for run in runs:
        summary = json.loads((run / "eval.json").read_text())["summary"]
        by_name = {s["strategy"]: s for s in summary["strategies"]}
        metrics_file = run / "metrics.json"
        pixel = (
            json.loads(metrics_file.read_text())["difficulty_auroc"]
            if metrics_file.is_file()
            else None
        )
        label = f"{run.name} (ds{', shipped' if run.name == shipped else ''})"
        print(row(label, by_name["ds"], pixel))
        if run.name == shipped:
            baselines = by_name
    for name in ("entropy", "de", "random", "oracle"):
        if name in baselines:
            label = f"{name} ({'shipped graph' if name in ('entropy', 'de') else 'reference'})"
            print(row(label, baselines[name], None))
    print()


if __name__ == "__main__":
    for argument in sys.argv[2:]:
        table(Path(argument), sys.argv[1])
