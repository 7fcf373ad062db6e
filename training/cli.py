"""`deal-train`: synth, fit, eval (and the active-learning loop, `al`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse (numbers, lists, booleans), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value (e.g. epochs=5)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 180x240)") from None
    if h < 32 or w < 32:
        raise click.BadParameter(f"{value!r}: height and width must be at least 32")
    return h, w


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate DEAL segmenters; run the active-learning protocol."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--n", "count", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Number of images.")
@click.option("--size", default="180x240", show_default=True, help="Image size HxW.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes.")
def synth(out: Path, count: int, size: str, seed: int, workers: int) -> None:
    """Write procedural street scenes in CamVid layout (deterministic by seed)."""
    from .synth import write_streets

    summary = write_streets(out, count, parse_size(size), seed=seed, workers=workers)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Dataset root (CamVid layout or Cityscapes).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder: best.pt, last.pt, history.json.")
@click.option("--preset", default="cpu", show_default=True, help="paper | cpu.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help='JSON {"model": {...}, "train": {...}} over the preset.')
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True, help="Train on a seeded random fraction of the train split.")
@click.argument("overrides", nargs=-1)
def fit(data: Path, out: Path, preset: str, config_file: Path | None, fraction: float,
        overrides: tuple[str, ...]) -> None:
    """Train DEALNet. OVERRIDES are key=value settings, e.g. epochs=5 decoder_width=64."""
    from .config import resolve_config
    from .data import SegmentationDataset, validate
    from .train import fit as run_fit

    try:
        cfg = resolve_config(preset, config_file, parse_overrides(overrides))
    except (KeyError, ValueError) as exc:
        raise click.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    train_set = SegmentationDataset(data, cfg.train.train_split)
    validate(train_set.samples, train_set.num_classes)
    labeled = None
    if fraction < 1.0:
        from .al import initial_labeled

        labeled = initial_labeled(len(train_set), fraction, cfg.train.seed)
    result = run_fit(data, out, cfg, labeled=labeled)
    click.echo(json.dumps({"best": str(result.best_path), "val_miou": result.best_miou,
                           "seconds": round(result.seconds, 1),
                           "train_images": len(labeled) if labeled else len(train_set)}))


@main.command("eval")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Checkpoint from `deal-train fit`.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Dataset root.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write metrics.json, metrics.md and figure.png here.")
@click.option("--threads", type=int, default=0, show_default=True, help="Torch threads (0=all).")
def evaluate(checkpoint: Path, data: Path, split: str, out: Path | None, threads: int) -> None:
    """mIoU, per-class IoU and difficulty-map quality on a split."""
    import torch

    from .checkpoint import CheckpointError, load_checkpoint
    from .data import SegmentationDataset
    from .evaluate import evaluate_model, format_table

    if threads:
        torch.set_num_threads(threads)
    try:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.build_model()
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    dataset = SegmentationDataset(data, split)
    if dataset.num_classes != ckpt.model_config.num_classes:
        raise click.ClickException(
            f"{data} has {dataset.num_classes} classes, the checkpoint {ckpt.model_config.num_classes}"
        )
    figure = out / "figure.png" if out else None
    result = evaluate_model(model, dataset, ckpt.model_config, figure=figure)
    result.update({"checkpoint": str(checkpoint), "split": split,
                   "class_names": ckpt.class_names})
    table = format_table(result, ckpt.class_names)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        (out / "metrics.md").write_text(table + "\n")
    click.echo(table)
    if out:
        click.echo(f"\nwrote {out / 'metrics.json'}, {out / 'metrics.md'}, {figure}", err=True)


if __name__ == "__main__":
    sys.exit(main())
