"""The difficulty head attached to two segmenters that are not dealseg's (training/attach.py).

Two street sets (`deal-train synth`, rewritten in the plain layout, other seeds): the owner's,
on whose train split a small U-Net (NCHW, logits) and an NHWC model with its own normalisation
(BGR 0..255, probabilities at half size) are trained and exported to ONNX, and a labelled set
they never saw; on it `attach` with its defaults: the head on train, the read-out refit on val,
measured on test (nothing was fit on it): the map's pixel
AUROC for the segmenter's error mask, and the Spearman of DS, DE and entropy with each image's
error rate. Writes bench/results/attach.md.
"""

from __future__ import annotations

import argparse
import sys
import time

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

from dealseg.training.attach import AttachConfig, attach  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="64x80")
    parser.add_argument("--steps", type=int, default=200, help="segmenter training steps")
    parser.add_argument("--seed", type=int, default=11)
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
    rows = []
    for i, (label, (net, to_input, nhwc, options, metadata)) in enumerate(segmenters.items()):
        onnx_path = work / f"segmenter{i}-{args.steps}.onnx"
        if not onnx_path.exists():
            net = train_segmenter(net, own, to_input, nhwc, args.steps, seed=args.seed)
            example = torch.zeros(2, *size, 3) if nhwc else torch.zeros(2, 3, *size)
            export_segmenter(net, example, onnx_path, metadata)
        start = time.perf_counter()
        result = attach(onnx_path, data, work / f"head{i}", AttachConfig(seed=args.seed), options)
        t = result.test
        rows.append(
            [
                label,
                f"{t['images']}",
                f"{t['error_rate']:.3f}",
                f"{t['pixel_auroc']:.3f}",
                f"{t['spearman_ds']:.3f}",
                f"{t['spearman_de']:.3f}",
                f"{t['spearman_entropy']:.3f}",
                f"{result.refit['auroc_after']:.3f}" if "auroc_after" in result.refit else "-",
                f"{time.perf_counter() - start:.0f}",
            ]
        )
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
    write_result(
        "attach",
        "Attached difficulty head: held-out (test split) quality",
        markdown_table(headers, rows),
        notes=[
            f"segmenters trained {args.steps} Adam steps (batch 8) on the train split of "
            f"{args.images} street frames {args.size} (seed {args.seed}); the head attached on "
            f"another {args.images} (seed {args.seed + 1}), split train/val/test 0.7/0.1/0.2 "
            "by drive",
            "targets: pixel AUROC >= 0.85; Spearman DS >= Spearman entropy",
        ],
    )


if __name__ == "__main__":
    main()
