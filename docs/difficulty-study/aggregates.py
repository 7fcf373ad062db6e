"""Image-level aggregates of the difficulty map beyond its mean (DS), judged like `eval` does.

    python docs/difficulty-study/aggregates.py MODEL.onnx EVAL_DIR

Runs MODEL over the frames of EVAL_DIR/eval.json (a `deal-client eval` output of the same model),
reads its `difficulty` output and ranks the frames by the mean of the top q% of each map and by
the share of the map above a threshold; prints Spearman with the error rate and the worst-10%
capture beside `ds` and `entropy` from eval.json. A probe: a winner would become a score in the
graph; none has so far.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dealseg.client.engines import EmbeddedEngine
from dealseg.core.decode import decode_frame
from dealseg.core.metrics import capture_share, spearman, worst_count


def main(model: Path, eval_dir: Path) -> None:
    rows = json.loads((eval_dir / "eval.json").read_text())["images"]
    engine = EmbeddedEngine(model)
    maps = []
    for row in rows:
        frame = decode_frame(row["path"], engine.spec.input_size)
        boxes = np.asarray([frame.box], np.int32)
        out = engine.infer(frame.image[None], ("difficulty",), boxes)
        maps.append(np.sort(out["difficulty"][0].ravel().astype(np.float32) / 255)[::-1])
    error = np.array([row["error_rate"] for row in rows])
    paths, k = [row["path"] for row in rows], worst_count(len(rows), 10)
    scores = {name: np.array([row[name] for row in rows]) for name in ("ds", "entropy")}
    for q in (1, 5, 10, 25, 50):
        scores[f"top {q}%"] = np.array([m[: max(1, m.size * q // 100)].mean() for m in maps])
    for t in (0.3, 0.5, 0.7):
        scores[f"share > {t}"] = np.array([np.mean(m > t) for m in maps])
    print(f"| aggregate ({len(rows)} frames) | Spearman(err) | worst-10% caught |")
    print("|---|---:|---:|")
    for name, values in scores.items():
        caught = capture_share(paths, values, error, k)
        print(f"| {name} | {spearman(values, error):.3f} | {caught:.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
