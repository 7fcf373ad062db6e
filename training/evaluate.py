"""`deal-train eval`: mIoU from a dataset confusion matrix, and the difficulty map's quality."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dealseg.core.colors import DIFFICULTY_LABEL, DIFFICULTY_LUT, difficulty_rgb
from dealseg.core.metrics import auroc as auroc  # re-exported: its home moved to core
from dealseg.core.metrics import confusion_matrix, iou_per_class, spearman

from .data import decode_label
from .losses import IGNORE_INDEX
from .model import DEALNet, ModelConfig, normalise
from .scores import difficulty_score

AUROC_BINS = 2048


def auroc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC of a score binned into histograms of positives and negatives (ties count 1/2)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


@torch.no_grad()
def evaluate_model(
    model: DEALNet,
    dataset: Dataset,
    cfg: ModelConfig,
    difficulty: bool = True,
    batch_size: int = 4,
    figure: Path | None = None,
    figure_count: int = 4,
) -> dict[str, Any]:
    """Segmentation metrics, and with `difficulty` the quality of the difficulty map.

    Runs on the model's device; the metrics are counted on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c = cfg.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    pos_hist = np.zeros(AUROC_BINS, dtype=np.int64)
    neg_hist = np.zeros(AUROC_BINS, dtype=np.int64)
    class_dif_sum, class_count = np.zeros(c), np.zeros(c)
    image_ds: list[float] = []
    image_miou: list[float] = []
    shown: list[tuple[np.ndarray, ...]] = []
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        out = model(normalise(images.to(device), cfg.mean, cfg.std))
        pred = out.full_logits().argmax(1).cpu().numpy()
        lab = labels.numpy()
        dif = out.difficulty().cpu() if difficulty else None
        for i in range(len(pred)):
            img_conf = confusion_matrix(pred[i], lab[i], c)
            conf += img_conf
            if dif is None:
                continue
            d = dif[i].numpy()
            valid = lab[i] != IGNORE_INDEX
            wrong = (pred[i] != lab[i]) & valid
            bins = np.clip((d * AUROC_BINS).astype(np.int64), 0, AUROC_BINS - 1)
            pos_hist += np.bincount(bins[wrong], minlength=AUROC_BINS)
            neg_hist += np.bincount(bins[valid & ~wrong], minlength=AUROC_BINS)
            class_dif_sum += np.bincount(lab[i][valid], weights=d[valid], minlength=c)
            class_count += np.bincount(lab[i][valid], minlength=c)
            image_miou.append(float(np.nanmean(iou_per_class(img_conf))))
            if len(shown) < figure_count:
                shown.append((images[i].permute(1, 2, 0).numpy(), lab[i], pred[i], d))
        if dif is not None:
            image_ds.extend(difficulty_score(dif).tolist())
    if was_training:
        model.train()
    ious = iou_per_class(conf)
    result: dict[str, Any] = {
        "miou": float(np.nanmean(ious)),
        "pixel_accuracy": float(np.diag(conf).sum() / max(conf.sum(), 1)),
        "iou_per_class": [None if np.isnan(v) else float(v) for v in ious],
        "images": int(len(dataset)),
    }
    if difficulty:
        class_dif = np.where(class_count > 0, class_dif_sum / np.maximum(class_count, 1), np.nan)
        result.update(
            {
                "difficulty_auroc": auroc_from_histograms(pos_hist, neg_hist),
                "error_rate": float(pos_hist.sum() / max(pos_hist.sum() + neg_hist.sum(), 1)),
                "spearman_ds_vs_1_minus_miou": spearman(image_ds, [1 - m for m in image_miou]),
                "difficulty_per_class": [None if np.isnan(v) else float(v) for v in class_dif],
                "spearman_class_difficulty_vs_1_minus_iou": spearman(class_dif, 1 - ious),
            }
        )
        if figure is not None and shown:
            names = getattr(dataset, "class_names", None)
            save_figure(figure, shown, getattr(dataset, "palette", None), names)
    return result


def save_figure(
    path: Path,
    rows: list[tuple[np.ndarray, ...]],
    palette: Sequence[Sequence[int]] | None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Image, ground truth, prediction, difficulty map: one row per image (the paper's figure),
    with the difficulty colour bar and the class legend (core.colors' colours, as deal-client's
    maps and report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    pal = palette or [[0, 0, 0]]
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(12, 2.4 * len(rows) + 0.8), squeeze=False, layout="constrained"
    )
    for r, (img, lab, pred, dif) in enumerate(rows):
        panels = [np.clip(img, 0, 1), decode_label(lab, pal), decode_label(pred, pal)]
        for a, (ax, panel) in enumerate(zip(axes[r], [*panels, difficulty_rgb(dif)], strict=True)):
            ax.imshow(panel)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(["image", "ground truth", "prediction", "difficulty"][a])
    heat = ScalarMappable(cmap=ListedColormap(DIFFICULTY_LUT / 255.0))
    fig.colorbar(heat, ax=axes[:, 3].tolist(), label=DIFFICULTY_LABEL, fraction=0.05)
    if class_names:
        patches = [
            Patch(color=np.asarray(c) / 255.0, label=n)
            for n, c in zip(class_names, pal, strict=False)
        ]
        fig.legend(
            handles=patches, loc="outside lower center", ncol=min(len(patches), 6), fontsize=8
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(result: dict[str, Any], class_names: Sequence[str]) -> str:
    """A readable markdown table of per-class IoU and mean difficulty plus the summary lines."""
    dif = result.get("difficulty_per_class") or [None] * len(class_names)
    lines = ["| class | IoU | mean difficulty |", "|---|---|---|"]
    for name, iou, d in zip(class_names, result["iou_per_class"], dif, strict=True):
        iou_s = "-" if iou is None else f"{iou * 100:.1f}"
        d_s = "-" if d is None else f"{d:.3f}"
        lines.append(f"| {name} | {iou_s} | {d_s} |")
    lines.append(f"| **mIoU** | **{result['miou'] * 100:.1f}** | |")
    lines.append("")
    lines.append(f"pixel accuracy {result['pixel_accuracy'] * 100:.1f}%, {result['images']} images")
    if "difficulty_auroc" in result:
        lines.append(
            f"difficulty AUROC (error mask) {result['difficulty_auroc']:.3f}; "
            f"Spearman(DS, 1-image mIoU) {result['spearman_ds_vs_1_minus_miou']:.3f}; "
            f"Spearman(class difficulty, 1-class IoU) "
            f"{result['spearman_class_difficulty_vs_1_minus_iou']:.3f}"
        )
    return "\n".join(lines)
