"""`deal-train fit`: the paper's optimiser and schedule, validation, checkpoints, resume."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from .checkpoint import load_checkpoint, read_raw, save_checkpoint
from .config import Preset, TrainConfig, with_classes
from .data import Augment, PartialLabels, SegmentationDataset
from .device import CPU, Runtime
from .evaluate import evaluate_model
from .losses import deal_loss
from .model import HEAD_LR_SCALE, DEALNet, DEALOutput, normalise
from .refit import MIN_IMAGES, refit_checkpoint


@dataclass
class FitResult:
    best_path: Path
    best_miou: float
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]]
    difficulty_refit: dict[str, Any] | None = None
    val_images: int = 0  # the validation split best.pt was chosen on (and the head refit on)


def poly_lr(base: float, it: int, max_it: int, power: float) -> float:
    return base * (1 - it / max_it) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group, scale in zip(optimizer.param_groups, (1.0, HEAD_LR_SCALE), strict=True):
        group["lr"] = lr * scale


def as_float(out: DEALOutput) -> DEALOutput:
    """The outputs of an autocast forward pass in float32, for the losses (a float32 pass is
    returned as it is). Upsampling and BCE run in float32: BCE is not autocast-safe."""
    return replace(out, logits=out.logits.float(), difficulty_logits=out.difficulty_logits.float())


def make_optimizer(model: DEALNet, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """The paper's SGD (Nesterov momentum, weight decay; heads and gamma at 10x the lr)."""
    return torch.optim.SGD(
        model.param_groups(train_cfg.lr),
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        nesterov=True,
        weight_decay=train_cfg.weight_decay,
    )


def train_step(
    model: DEALNet,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    train_cfg: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, float]:
    """One optimiser step of `fit` on a batch (images [B, 3, H, W] 0..1, labels [B, H, W]) in
    `runtime`'s device and precision; the loss parts."""
    images = images.to(runtime.device, non_blocking=True)
    labels = labels.to(runtime.device, non_blocking=True)
    with runtime.autocast():
        out = model(normalise(images, model.cfg.mean, model.cfg.std))
    out = as_float(out)
    loss, parts = deal_loss(
        out.full_logits(),
        out.difficulty(),
        labels,
        train_cfg.difficulty_loss,
        train_cfg.difficulty_weight,
        labeled_only=train_cfg.partial_labels,
    )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return parts


class Trainer:
    """One `fit` run: `preset`'s data, model and optimiser, and the run's files in `out`.

    out/last.pt   every epoch: weights, optimiser, best val mIoU, history (resume point)
    out/best.pt   the best-val checkpoint (readable with torch.load(weights_only=True))
    out/config.json, out/history.json
    """

    def __init__(
        self,
        data: Path,
        out: Path,
        preset: Preset,
        labeled: Sequence[int] | None,
        quiet: bool,
        runtime: Runtime = CPU,
        partial: PartialLabels | None = None,
    ) -> None:
        train_cfg = preset.train
        if partial is not None:  # the frames with bought regions, and those with guesses
            labeled = sorted({int(i) for i in partial.picked} | set(partial.pseudo or ()))
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        torch.manual_seed(train_cfg.seed)
        augment = Augment(
            crop=train_cfg.crop, scale=train_cfg.scale, color_jitter=train_cfg.color_jitter
        )
        size = preset.model.input_size  # a no-op for data already at the model's size (CamVid)
        self.train_set = SegmentationDataset(
            data,
            train_cfg.train_split,
            size=size,
            augment=augment,
            indices=labeled,
            partial=partial,
        )
        self.val_set = SegmentationDataset(data, train_cfg.val_split, size=size)
        self.preset = preset = with_classes(preset, self.train_set.num_classes)
        self.train_cfg, self.out, self.quiet, self.runtime = train_cfg, out, quiet, runtime
        if len(self.train_set) == 0:
            raise ValueError("no training images: the labelled set is empty")
        if not train_cfg.samples_per_epoch and len(self.train_set) < train_cfg.batch_size:
            raise ValueError(
                f"{len(self.train_set)} training images is fewer than one batch of "
                f"{train_cfg.batch_size}; lower batch_size"
            )
        self.model = DEALNet(preset.model, pretrained=train_cfg.pretrained).to(runtime.device)
        self.optimizer = make_optimizer(self.model, train_cfg)
        self.scaler = runtime.grad_scaler()
        self.run_state = {
            "model": preset.model.to_dict(),
            "train": train_cfg.to_dict(),
            "labeled": list(labeled) if labeled is not None else None,
            **({"partial": partial.to_dict()} if partial is not None else {}),
        }
        self.start_epoch, self.best, self.history = 0, -1.0, []
        self.last_path, self.best_path = out / "last.pt", out / "best.pt"
        self.samples_per_epoch = train_cfg.samples_per_epoch or len(self.train_set)
        self.iters_per_epoch = self.samples_per_epoch // train_cfg.batch_size
        self.max_iter = train_cfg.epochs * self.iters_per_epoch

    def resume(self) -> None:
        """Continue from last.pt when it was written by a run of the same configuration."""
        if not self.last_path.exists():
            return
        raw = read_raw(self.last_path)
        if raw.get("run_state") != self.run_state:
            return
        self.model.load_state_dict(raw["state_dict"])
        self.optimizer.load_state_dict(raw["optimizer"])
        self.start_epoch, self.best = raw["epoch"], raw["best_miou"]
        self.history = list(raw["history"])
        if not self.quiet:
            print(f"resuming {self.out} at epoch {self.start_epoch}", file=sys.stderr)

    def train_epoch(self, epoch: int, progress: tqdm) -> dict[str, float]:
        """One pass over the training set; its shuffling and augmentation are seeded by epoch.
        Returns the mean loss parts and the throughput in images per second."""
        train_cfg = self.train_cfg
        torch.manual_seed(
            train_cfg.seed * 1000003 + epoch
        )  # augmentation stream, resumable per epoch
        shuffle = torch.Generator().manual_seed(train_cfg.seed * 100003 + epoch)
        # One shuffled pass, or (samples_per_epoch) fresh shuffles until that many samples.
        sampler = RandomSampler(
            self.train_set, num_samples=self.samples_per_epoch, generator=shuffle
        )
        loader = DataLoader(
            self.train_set,
            batch_size=train_cfg.batch_size,
            sampler=sampler,
            drop_last=True,
            generator=shuffle,
            **self.runtime.loader_options(),
        )
        self.model.train()
        first = epoch * self.iters_per_epoch
        totals: dict[str, float] = {}
        start = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            set_lr(
                self.optimizer,
                poly_lr(train_cfg.lr, first + i, self.max_iter, train_cfg.poly_power),
            )
            parts = self.step(images, labels)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
            progress.update(1)
            progress.set_postfix(loss=f"{parts['loss']:.3f}", dif=f"{parts['dif']:.3f}")
        seconds = time.perf_counter() - start
        n = max(len(loader), 1)
        images_seen = len(loader) * train_cfg.batch_size
        return {**{k: v / n for k, v in totals.items()}, "img_per_s": images_seen / seconds}

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a batch (images [B, 3, H, W] 0..1, labels [B, H, W])."""
        return train_step(
            self.model, self.optimizer, self.scaler, self.runtime, self.train_cfg, images, labels
        )

    def validate_and_save(self, epoch: int, stats: dict[str, float], progress: tqdm) -> None:
        """Validate when due (keeping best.pt), record the epoch, write last.pt."""
        train_cfg, model = self.train_cfg, self.model
        names, palette = self.train_set.class_names, self.train_set.palette
        record: dict[str, Any] = {"epoch": epoch + 1, **stats}
        if (epoch + 1) % train_cfg.val_every == 0 or epoch + 1 == train_cfg.epochs:
            metrics = evaluate_model(model, self.val_set, self.preset.model, difficulty=False)
            record["val_miou"] = metrics["miou"]
            if metrics["miou"] > self.best:
                self.best = metrics["miou"]
                metrics_saved = {"val_miou": self.best, "epoch": epoch + 1}
                save_checkpoint(
                    self.best_path,
                    model,
                    names,
                    palette,
                    train_cfg.to_dict(),
                    metrics_saved,
                    epoch + 1,
                )
            if not self.quiet:
                progress.write(
                    f"epoch {epoch + 1}: loss {stats['loss']:.3f} "
                    f"val mIoU {metrics['miou'] * 100:.1f} (best {self.best * 100:.1f}), "
                    f"{stats['img_per_s']:.1f} img/s",
                    file=sys.stderr,
                )
        self.history.append(record)
        resume_point = {
            "optimizer": self.optimizer.state_dict(),
            "best_miou": self.best,
            "history": self.history,
            "run_state": self.run_state,
        }
        save_checkpoint(
            self.last_path, model, names, palette, train_cfg.to_dict(), {}, epoch + 1, resume_point
        )

    def run(self) -> FitResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume()
        if not self.quiet:
            print(
                f"fit {self.out} on {self.runtime.describe()}: {len(self.train_set)} training "
                f"images, {len(self.val_set)} validation images",
                file=sys.stderr,
            )
            if len(self.val_set) < MIN_IMAGES:
                print(
                    f"warning: {len(self.val_set)} validation images choose best.pt by a noisy "
                    "mIoU; give the validation split more images",
                    file=sys.stderr,
                )
        (self.out / "config.json").write_text(json.dumps(self.run_state, indent=2))
        t0 = time.time()
        progress = tqdm(
            total=self.max_iter,
            initial=self.start_epoch * self.iters_per_epoch,
            disable=self.quiet,
            desc=f"fit {self.out.name}",
            unit="it",
            file=sys.stderr,
        )
        for epoch in range(self.start_epoch, self.train_cfg.epochs):
            stats = self.train_epoch(epoch, progress)
            self.validate_and_save(epoch, stats, progress)
        progress.close()
        (self.out / "history.json").write_text(json.dumps(self.history, indent=2))
        refit = None
        if self.train_cfg.refit_difficulty:
            refit = refit_best(
                self.best_path, self.val_set, self.train_cfg, self.quiet, self.runtime.device
            )
        epochs_run = self.train_cfg.epochs - self.start_epoch
        return FitResult(
            self.best_path,
            self.best,
            epochs_run,
            time.time() - t0,
            self.history,
            refit,
            len(self.val_set),
        )


def fit(
    data: Path,
    out: Path,
    preset: Preset,
    labeled: Sequence[int] | None = None,
    quiet: bool = False,
    runtime: Runtime = CPU,
    partial: PartialLabels | None = None,
) -> FitResult:
    """Train on `data` (any layout of `data.py`), keep the best-val checkpoint in `out`.

    `labeled` restricts training to those indices of the train split (active learning);
    `partial` trains on the pixels of bought regions only (the frames it names, and the frames
    it has guesses for, on their guessed pixels too). If
    `out/last.pt` exists from an interrupted run with the same configuration, training resumes,
    on any device. `runtime` says where and in what precision the run computes.
    """
    return Trainer(data, out, preset, labeled, quiet, runtime, partial).run()


def refit_best(
    best_path: Path,
    val_set: SegmentationDataset,
    train_cfg: TrainConfig,
    quiet: bool = False,
    device: torch.device = CPU.device,
) -> dict[str, Any]:
    """Refit the kept checkpoint's difficulty head on `val_set` once (a resumed run keeps it).
    A split too small for the refit keeps the trained head: the record says why (`skipped`)."""
    ckpt = load_checkpoint(best_path)
    done = ckpt.metrics.get("difficulty_refit")
    if done is None:
        try:
            done = refit_checkpoint(
                ckpt,
                ckpt.build_model().to(device),
                val_set,
                train_cfg.refit_loss,
                best_path,
                seed=train_cfg.seed,
                l2=train_cfg.refit_l2,
            )
        except ValueError as exc:
            done = {"split": val_set.split, "skipped": str(exc)}
    if quiet:
        return done
    if "skipped" in done:
        print(f"warning: the difficulty head is not refit: {done['skipped']}", file=sys.stderr)
    else:
        print(
            f"difficulty head refit on {done['fit_images']} {done['split']} images "
            f"({done['pixels']:,} pixels), judged on {done['held_apart_images']} held apart: AUROC "
            f"{done['auroc_before']:.3f} -> {done['auroc_after']:.3f}"
            + (" (kept the trained head)" if done["kept_old"] else ""),
            file=sys.stderr,
        )
    return done
