"""`deal-train fit`: the paper's optimiser and schedule, validation, checkpoints, resume."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_checkpoint, read_raw, save_checkpoint
from .config import Preset, TrainConfig, with_classes
from .data import Augment, SegmentationDataset
from .evaluate import evaluate_model
from .losses import deal_loss
from .model import HEAD_LR_SCALE, DEALNet, normalise
from .refit import refit_checkpoint


@dataclass
class FitResult:
    best_path: Path
    best_miou: float
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]]
    difficulty_refit: dict[str, Any] | None = None


def poly_lr(base: float, it: int, max_it: int, power: float) -> float:
    return base * (1 - it / max_it) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group, scale in zip(optimizer.param_groups, (1.0, HEAD_LR_SCALE), strict=True):
        group["lr"] = lr * scale


def train_one_epoch(
    model: DEALNet,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    preset: Preset,
    first_iter: int,
    max_iter: int,
    progress: tqdm,
) -> dict[str, float]:
    cfg = preset.train
    model.train()
    totals: dict[str, float] = {}
    for i, (images, labels) in enumerate(loader):
        set_lr(optimizer, poly_lr(cfg.lr, first_iter + i, max_iter, cfg.poly_power))
        out = model(normalise(images, preset.model.mean, preset.model.std))
        loss, parts = deal_loss(
            out.full_logits(), out.difficulty(), labels, cfg.difficulty_loss, cfg.difficulty_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
        progress.update(1)
        progress.set_postfix(loss=f"{parts['loss']:.3f}", dif=f"{parts['dif']:.3f}")
    n = max(len(loader), 1)
    return {k: v / n for k, v in totals.items()}


def fit(
    data: Path,
    out: Path,
    preset: Preset,
    labeled: Sequence[int] | None = None,
    quiet: bool = False,
) -> FitResult:
    """Train on `data` (CamVid layout or Cityscapes), keep the best-val checkpoint in `out`.

    `labeled` restricts training to those indices of the train split (active learning). If
    `out/last.pt` exists from an interrupted run with the same configuration, training resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    augment = Augment(crop=cfg.crop, scale=cfg.scale, color_jitter=cfg.color_jitter)
    size = preset.model.input_size  # a no-op for data already at the model's size (CamVid)
    train_set = SegmentationDataset(
        data, cfg.train_split, size=size, augment=augment, indices=labeled
    )
    val_set = SegmentationDataset(data, cfg.val_split, size=size)
    preset = with_classes(preset, train_set.num_classes)
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"{len(train_set)} training images is fewer than one batch of {cfg.batch_size}; "
            "lower batch_size"
        )
    model = DEALNet(preset.model, pretrained=cfg.pretrained)
    optimizer = torch.optim.SGD(
        model.param_groups(cfg.lr),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
    )
    run_state = {
        "model": preset.model.to_dict(),
        "train": cfg.to_dict(),
        "labeled": list(labeled) if labeled is not None else None,
    }
    start_epoch, best, history = 0, -1.0, []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists():
        raw = read_raw(last_path)
        if raw.get("run_state") == run_state:
            model.load_state_dict(raw["state_dict"])
            optimizer.load_state_dict(raw["optimizer"])
            start_epoch, best, history = raw["epoch"], raw["best_miou"], list(raw["history"])
            if not quiet:
                print(f"resuming {out} at epoch {start_epoch}", file=sys.stderr)
    (out / "config.json").write_text(json.dumps(run_state, indent=2))

    def make_loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        return DataLoader(
            train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g
        )

    iters_per_epoch = len(train_set) // cfg.batch_size
    max_iter = cfg.epochs * iters_per_epoch
    t0 = time.time()
    progress = tqdm(
        total=max_iter,
        initial=start_epoch * iters_per_epoch,
        disable=quiet,
        desc=f"fit {out.name}",
        unit="it",
        file=sys.stderr,
    )
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000003 + epoch)  # augmentation stream, resumable per epoch
        stats = train_one_epoch(
            model,
            make_loader(epoch),
            optimizer,
            preset,
            epoch * iters_per_epoch,
            max_iter,
            progress,
        )
        record: dict[str, Any] = {"epoch": epoch + 1, **stats}
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            metrics = evaluate_model(model, val_set, preset.model, difficulty=False)
            record["val_miou"] = metrics["miou"]
            if metrics["miou"] > best:
                best = metrics["miou"]
                save_checkpoint(
                    best_path,
                    model,
                    train_set.class_names,
                    train_set.palette,
                    cfg.to_dict(),
                    {"val_miou": best, "epoch": epoch + 1},
                    epoch + 1,
                )
            if not quiet:
                progress.write(
                    f"epoch {epoch + 1}: loss {stats['loss']:.3f} "
                    f"val mIoU {metrics['miou'] * 100:.1f} (best {best * 100:.1f})",
                    file=sys.stderr,
                )
        history.append(record)
        save_checkpoint(
            last_path,
            model,
            train_set.class_names,
            train_set.palette,
            cfg.to_dict(),
            {},
            epoch + 1,
            extra={
                "optimizer": optimizer.state_dict(),
                "best_miou": best,
                "history": history,
                "run_state": run_state,
            },
        )
    progress.close()
    (out / "history.json").write_text(json.dumps(history, indent=2))
    refit = refit_best(best_path, val_set, cfg, quiet) if cfg.refit_difficulty else None
    return FitResult(best_path, best, cfg.epochs - start_epoch, time.time() - t0, history, refit)


def refit_best(
    best_path: Path, val_set: SegmentationDataset, cfg: TrainConfig, quiet: bool = False
) -> dict[str, Any]:
    """Refit the kept checkpoint's difficulty head on `val_set` once (a resumed run keeps it)."""
    ckpt = load_checkpoint(best_path)
    done = ckpt.metrics.get("difficulty_refit")
    if done is None:
        done = refit_checkpoint(
            ckpt, ckpt.build_model(), val_set, cfg.difficulty_loss, best_path, seed=cfg.seed
        )
    if not quiet:
        print(
            f"difficulty head refit on {done['split']} ({done['pixels']:,} pixels): AUROC "
            f"{done['auroc_before']:.3f} -> {done['auroc_after']:.3f}"
            + (" (kept the trained head)" if done["kept_old"] else ""),
            file=sys.stderr,
        )
    return done
