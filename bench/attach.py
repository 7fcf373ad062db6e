"""The difficulty head attached to two segmenters that are not dealseg's (training/attach.py).

Two street sets (`deal-train synth`, rewritten in the plain layout, other seeds): the owner's,
on whose train split a small U-Net (NCHW, logits) and an NHWC model with its own normalisation
(BGR 0..255, probabilities at half size) are trained and exported to ONNX, and a labelled set
they never saw; on it `attach` with its defaults: the head on train, the read-out refit on val,
measured on test (nothing was fit on it): the map's pixel
AUROC for the segmenter's error mask, and the Spearman of DS, DE and entropy with each image's
error rate. With `--eval N` (the default 2,000) the heads are also measured on N more frames
from a third street set that neither the segmenters nor the heads saw: a Spearman over a few
dozen test images moves by about 0.1 between sets, over 2,000 by about 0.02. Writes
bench/results/attach.md (attach-N.md with `--images N` other than 600).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import CACHE, ROOT, markdown_table, write_result

sys.path.insert(0, str(ROOT / "tests"))
from foreign_segmenters import (  # noqa: E402 - the tests' segmenters, built the same way
    NHWC_METADATA,
    UNET_OPTIONS,
    NHWCNet,
    UNet,
    export_segmenter,
    nhwc_input,
    street_set,
    train_segmenter,
    unet_input,
)

from dealseg.training.attach import (  # noqa: E402
    AttachConfig,
    AttachedSegmenter,
    attach,
    load_head,
    measure,
)
from dealseg.training.data import SegmentationDataset  # noqa: E402


def eval_set(count: int, size: tuple[int, int], seed: int) -> Path:
    """`count` street frames of a third set, every one listed in all.txt (one split)."""
    work = CACHE / f"attach-eval-{count}-{size[0]}x{size[1]}-{seed}"
    plain = work / "plain"
    if not (plain / "all.txt").exists():
        street_set(work, count, size, seed)
        stems = sorted(p.stem for p in (plain / "images").iterdir())
        (plain / "all.txt").write_text("\n".join(stems) + "\n")
    return plain


def measure_on(head_path: Path, segmenter: Path, data: Path) -> dict:
    head = load_head(head_path)
    model = AttachedSegmenter(segmenter, head.io, head.build_head(), head.build_pixel())
    return measure(model, SegmentationDataset(data, "all", size=head.io.input_size))


def _cells(label: str, t: dict) -> list[str]:
    """A measurement's table cells: images, error rate, pixel AUROC, the three Spearmans."""
    keys = ("error_rate", "pixel_auroc", "spearman_ds", "spearman_de", "spearman_entropy")
    return [label, f"{t['images']}", *(f"{t[k]:.3f}" for k in keys)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", default="64x80")
    parser.add_argument("--steps", type=int, default=200, help="segmenter training steps")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--eval", type=int, default=2000, help="frames of a third set (0: none)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    work = CACHE / f"attach-{args.images}-{args.size}-{args.seed}"
    own, data = work / "own" / "plain", work / "labelled" / "plain"
    if not own.exists():  # the owner's frames, which the segmenters are trained on
        street_set(work / "own", args.images, size, args.seed)
    if not data.exists():  # frames they never saw, labelled to attach the head
        street_set(work / "labelled", args.images, size, args.seed + 1)
    segmenters = {
        "U-Net (NCHW logits, options)": (UNet(11, 8), unet_input, False, UNET_OPTIONS, {}),
        "NHWC BGR 0..255, probabilities (metadata)": (
            NHWCNet(11),
            nhwc_input,
            True,
            {},
            NHWC_METADATA,
        ),
    }
    third = eval_set(args.eval, size, args.seed + 3) if args.eval else None
    rows, third_rows = [], []
    for i, (label, (net, to_input, nhwc, options, metadata)) in enumerate(segmenters.items()):
        onnx_path = work / f"segmenter{i}-{args.steps}.onnx"
        if not onnx_path.exists():
            net = train_segmenter(net, own, to_input, nhwc, args.steps, seed=args.seed)
            example = torch.zeros(2, *size, 3) if nhwc else torch.zeros(2, 3, *size)
            export_segmenter(net, example, onnx_path, metadata)
        start = time.perf_counter()
        result = attach(onnx_path, data, work / f"head{i}", AttachConfig(seed=args.seed), options)
        rows.append(
            [
                *_cells(label, result.test),
                f"{result.refit['auroc_after']:.3f}" if "auroc_after" in result.refit else "-",
                f"{time.perf_counter() - start:.0f}",
            ]
        )
        if third is not None:
            third_rows.append(_cells(label, measure_on(result.head_path, onnx_path, third)))
    headers = [
        "segmenter",
        "test images",
        "test error rate",
        "pixel AUROC",
        "Spearman DS",
        "Spearman DE",
        "Spearman entropy",
        "val AUROC (refit)",
        "attach s",
    ]
    body = markdown_table(headers, rows)
    if third_rows:
        body += (
            f"\n\nThe same heads on {args.eval} frames of a third street set "
            f"(seed {args.seed + 3}), which no segmenter or head saw:\n\n"
            + markdown_table(headers[:7], third_rows)
        )
    write_result(
        "attach",
        "Attached difficulty head: held-out (test split) quality",
        body,
        notes=[
            f"segmenters trained {args.steps} Adam steps (batch 8) on the train split of "
            f"{args.images} street frames {args.size} (seed {args.seed}); the head attached on "
            f"another {args.images} (seed {args.seed + 1}), split train/val/test 0.7/0.1/0.2 "
            "by drive",
            "targets: pixel AUROC >= 0.85; Spearman DS >= Spearman entropy",
        ],
        result=None if args.images == 600 else f"attach-{args.images}",
    )


if __name__ == "__main__":
    main()
