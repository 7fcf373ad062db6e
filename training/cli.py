"""`deal-train`: synth, fit, eval, refit, attach (and the active-learning loop, `al`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dealseg.core.strategies import names as strategy_names

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import Preset
    from .data import SegmentationDataset
    from .device import Runtime
    from .model import DEALNet


# The key=value OVERRIDES of fit and al: == ModelConfig's and TrainConfig's fields (tested), here
# so that `--help` lists them without importing torch.
MODEL_SETTINGS = (
    "encoder",
    "num_classes",
    "decoder_width",
    "separable",
    "low_level_channels",
    "aspp_rates",
    "aspp_dropout",
    "decoder_dropout",
    "attention_size",
    "pam_block",
    "pam_impl",
    "difficulty_inputs",
    "difficulty_hidden",
    "difficulty_context",
    "input_size",
    "mean",
    "std",
)
TRAIN_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "poly_power",
    "crop",
    "scale",
    "color_jitter",
    "val_every",
    "difficulty_loss",
    "difficulty_weight",
    "seed",
    "threads",
    "pretrained",
    "train_split",
    "val_split",
    "refit_difficulty",
    "refit_loss",
    "refit_l2",
    "samples_per_epoch",
    "partial_labels",
)
SETTINGS_HELP = (
    "OVERRIDES, key=value over the preset (values as JSON: 5, 0.01, [64,80], true; else text). "
    f"Model: {', '.join(MODEL_SETTINGS)}. Training: {', '.join(TRAIN_SETTINGS)}. "
    "Defaults and meanings: training/config.py (TrainConfig) and training/model.py (ModelConfig)."
)


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


data_option = click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Dataset root: CamVid layout, Cityscapes, or images/ + masks/ with a classes.json.",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    envvar="DEAL_DEVICE",
    show_envvar=True,
    help="Where to compute: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N.",
)


def runtime_options(f: Any) -> Any:
    """--device, and for training --amp and --workers: how a run uses its device."""
    f = click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        show_default="0 on the CPU, up to 8 on CUDA",
        help="DataLoader worker processes.",
    )(f)
    f = click.option(
        "--amp/--no-amp",
        default=True,
        show_default=True,
        help="Mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler).",
    )(f)
    return device_option(f)


def make_runtime(device: str, amp: bool = True, workers: int | None = None) -> Runtime:
    """The Runtime of the command's --device/--amp/--workers (a DeviceError is one line)."""
    from .device import Runtime

    return Runtime.for_device(device, amp, workers)


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON {"model": {...}, "train": {...}} over the preset.',
)


def checked_config(
    data: Path, preset: str, config_file: Path | None, overrides: tuple[str, ...]
) -> tuple[Preset, int]:
    """Preset + config file + overrides, and the train split checked up front: (config, size)."""
    from .config import resolve_config
    from .data import SegmentationDataset

    try:
        config = resolve_config(preset, config_file, parse_overrides(overrides))
    except (KeyError, ValueError) as exc:
        raise click.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    train_set = SegmentationDataset(data, config.train.train_split)
    train_set.validate()
    return config, len(train_set)


class _Group(click.Group):
    """Bad data and bad checkpoints end a command with their one-line message, not a trace."""

    def invoke(self, ctx: click.Context) -> Any:
        from .checkpoint import CheckpointError
        from .data import DataError
        from .device import DeviceError

        try:
            return super().invoke(ctx)
        except (DataError, CheckpointError, DeviceError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dealseg")
def main() -> None:
    """Train and evaluate DEAL segmenters; run the active-learning protocol."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--n",
    "count",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Number of images.",
)
@click.option("--size", default="180x240", show_default=True, help="Image size HxW.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--sequence-length",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Frames per drive (consecutive frames are near-duplicates); 1: independent frames.",
)
@click.option(
    "--rare-scale",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Multiply the rare conditions' rates (night, fog, rain, snow, fisheye, "
    "glare); 0: all clear.",
)
def synth(
    out: Path,
    count: int,
    size: str,
    seed: int,
    workers: int,
    sequence_length: int,
    rare_scale: float,
) -> None:
    """Write drives of procedural street scenes in CamVid layout, with tags.jsonl (deterministic
    by seed); the summary (splits, drives, conditions, class shares) goes to summary.json."""
    from .streets.dataset import condition_rates, write_streets

    try:
        condition_rates(rare_scale)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rare-scale") from None
    summary = write_streets(
        out,
        count,
        parse_size(size),
        seed=seed,
        workers=workers,
        sequence_length=sequence_length,
        rare_scale=rare_scale,
    )
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    click.echo(
        f"wrote {summary['n']} images ({splits}) in {summary['sequences']} drives to {out}; "
        f"summary in {out / 'summary.json'}"
    )


@main.command(epilog=SETTINGS_HELP)
@data_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder: best.pt, last.pt, history.json.",
)
@click.option(
    "--preset",
    default="cpu",
    show_default=True,
    help="paper | paper-cityscapes | paper-288x512 | paper-720x1280 (16:9) | cpu | streets-cpu.",
)
@config_option
@click.option(
    "--fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Train on a seeded random fraction of the train split.",
)
@runtime_options
@click.argument("overrides", nargs=-1)
def fit(
    data: Path,
    out: Path,
    preset: str,
    config_file: Path | None,
    fraction: float,
    device: str,
    amp: bool,
    workers: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Train DEALNet. OVERRIDES are key=value settings, e.g. epochs=5 decoder_width=64."""
    from .train import fit as run_fit

    runtime = make_runtime(device, amp, workers)
    config, pool_size = checked_config(data, preset, config_file, overrides)
    labeled = None
    if fraction < 1.0:
        from .al import initial_labeled

        labeled = initial_labeled(pool_size, fraction, config.train.seed)
    result = run_fit(data, out, config, labeled=labeled, runtime=runtime)
    summary = {
        "best": str(result.best_path),
        "val_miou": result.best_miou,
        "seconds": round(result.seconds, 1),
        "train_images": len(labeled) if labeled else pool_size,
        "val_images": result.val_images,
    }
    if result.difficulty_refit is not None:
        summary["difficulty_refit"] = result.difficulty_refit
    click.echo(json.dumps(summary))


def _checkpoint_and_split(
    checkpoint: Path, data: Path, split: str, device: str
) -> tuple[Checkpoint, DEALNet, SegmentationDataset]:
    """(Checkpoint, its model on --device, the split at the model's input size); mismatches
    are errors."""
    from .checkpoint import load_checkpoint
    from .data import SegmentationDataset

    runtime = make_runtime(device)
    ckpt = load_checkpoint(checkpoint)  # a CheckpointError becomes the group's one-line error
    model = ckpt.build_model().to(runtime.device)
    dataset = SegmentationDataset(data, split, size=ckpt.model_config.input_size)
    if tuple(dataset.class_names) != tuple(ckpt.class_names):
        raise click.ClickException(
            f"{data} has the classes {list(dataset.class_names)} ({dataset.classes.source}), "
            f"the checkpoint {list(ckpt.class_names)}"
        )
    return ckpt, model, dataset


@main.command("eval")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint from `deal-train fit`.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Dataset root (any layout `fit` reads).",
)
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write metrics.json, metrics.md and figure.png here.",
)
@click.option("--threads", type=int, default=0, show_default=True, help="Torch threads (0=all).")
@device_option
def evaluate(
    checkpoint: Path, data: Path, split: str, out: Path | None, threads: int, device: str
) -> None:
    """mIoU, per-class IoU and difficulty-map quality on a split."""
    import torch

    from .evaluate import evaluate_model, format_table

    if threads:
        torch.set_num_threads(threads)
    ckpt, model, dataset = _checkpoint_and_split(checkpoint, data, split, device)
    figure = out / "figure.png" if out else None
    result = evaluate_model(model, dataset, ckpt.model_config, figure=figure)
    result.update({"checkpoint": str(checkpoint), "split": split, "class_names": ckpt.class_names})
    table = format_table(result, ckpt.class_names)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        (out / "metrics.md").write_text(table + "\n")
    click.echo(table)
    if out:
        click.echo(f"\nwrote {out / 'metrics.json'}, {out / 'metrics.md'}, {figure}", err=True)


@main.command()
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint from `deal-train fit`.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Dataset root.",
)
@click.option(
    "--split",
    default="val",
    show_default=True,
    help="Held-out split whose error masks the head is fit to (not the test split).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint to write (may be --checkpoint itself).",
)
@click.option(
    "--loss",
    type=click.Choice(["wbce", "bce"]),
    default=None,
    show_default="the checkpoint's refit_loss",
    help="Difficulty loss of the fit.",
)
@click.option(
    "--inputs",
    default=None,
    show_default="the checkpoint's",
    help="A new head reading these parts (e.g. Q+U+UA+DEC; see ModelConfig.difficulty_inputs), "
    "fit from scratch on the checkpoint's segmenter.",
)
@click.option(
    "--hidden",
    type=click.IntRange(min=0),
    default=None,
    show_default="the checkpoint's",
    help="Units of the new head's MLP read-out (0: a 1x1 conv).",
)
@click.option(
    "--context",
    type=click.IntRange(min=0),
    default=None,
    show_default="the checkpoint's",
    help="Size of the new MLP read-out's middle conv (3: each cell sees its 3x3 neighbours).",
)
@click.option(
    "--l2",
    type=click.FloatRange(min=0),
    default=None,
    show_default="the checkpoint's refit_l2",
    help="Penalty on the read-out's weights (weight decay of an MLP read-out).",
)
@click.option("--threads", type=int, default=0, show_default=True, help="Torch threads (0=all).")
@device_option
def refit(
    checkpoint: Path,
    data: Path,
    split: str,
    out: Path,
    loss: str | None,
    inputs: str | None,
    hidden: int | None,
    context: int | None,
    l2: float | None,
    threads: int,
    device: str,
) -> None:
    """Refit the difficulty head's read-out on a held-out split (everything else frozen), or
    fit a new head (--inputs, --hidden) onto the checkpoint's segmenter."""
    import torch

    from .refit import refit_checkpoint

    if threads:
        torch.set_num_threads(threads)
    ckpt, model, dataset = _checkpoint_and_split(checkpoint, data, split, device)
    if (inputs, hidden, context) != (None, None, None):
        cfg = ckpt.model_config
        inputs = cfg.difficulty_inputs if inputs is None else inputs
        hidden = cfg.difficulty_hidden if hidden is None else hidden
        context = cfg.difficulty_context if context is None else context
        try:
            head_model = ckpt.build_model_with_head(inputs, hidden, context)
            model = head_model.to(next(model.parameters()).device)
        except KeyError as exc:
            raise click.BadParameter(str(exc), param_hint="--inputs") from None
    loss = loss or ckpt.train_config.get("refit_loss", "wbce")
    l2 = ckpt.train_config.get("refit_l2", 0.0) if l2 is None else l2
    try:
        record = refit_checkpoint(ckpt, model, dataset, loss, out, l2=l2)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"checkpoint": str(out), "difficulty_refit": record}))


@main.command()
@click.option(
    "--segmenter",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Your ONNX segmentation model: one float image input, per-pixel class scores out.",
)
@data_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: head.pt (for `deal-export attach`) and attach.json.",
)
@click.option("--input", "input_name", default=None, help="Input tensor (when it has several).")
@click.option(
    "--input-layout",
    type=click.Choice(["nchw", "nhwc"]),
    default=None,
    show_default="the model's metadata, else read off the input's shape",
    help="Layout of the image input.",
)
@click.option(
    "--input-size",
    default=None,
    show_default="the input's fixed H and W",
    help="HxW to feed a model whose spatial axes are dynamic.",
)
@click.option(
    "--channel-order",
    type=click.Choice(["rgb", "bgr"]),
    default=None,
    show_default="metadata, else rgb",
    help="Channel order the model expects.",
)
@click.option(
    "--pixel-range",
    type=click.Choice(["1", "255"]),
    default=None,
    show_default="metadata, else 1",
    help="A white pixel before normalisation: input = (pixel / (255 / range) - mean) / std.",
)
@click.option(
    "--mean",
    default=None,
    show_default="metadata, else 0,0,0",
    help="3 values in the model's channel order and pixel range, e.g. 0.485,0.456,0.406.",
)
@click.option(
    "--std", default=None, show_default="metadata, else 1,1,1", help="3 values, like --mean."
)
@click.option("--output", "output_name", default=None, help="Output tensor (when it has several).")
@click.option(
    "--output-layout",
    type=click.Choice(["nchw", "nhwc"]),
    default=None,
    show_default="metadata, else the axis with the data set's class count",
    help="Layout of the class scores.",
)
@click.option(
    "--output-kind",
    type=click.Choice(["logits", "probabilities"]),
    default=None,
    show_default="metadata, else probabilities when a grey frame's scores sum to 1",
    help="What the output holds.",
)
@click.option("--threads", type=int, default=0, show_default=True, help="Torch threads (0=all).")
@click.argument("overrides", nargs=-1)
def attach(
    segmenter: Path,
    data: Path,
    out: Path,
    threads: int,
    overrides: tuple[str, ...],
    **io: str | None,
) -> None:
    """Train the DEAL difficulty head on YOUR frozen segmenter's output: γ and the read-out on
    the train split, the read-out refit on val, measured on test. OVERRIDES are key=value
    settings of training/attach.py's AttachConfig, e.g. steps=500 attention_size=[30,40]."""
    import torch

    from .attach import AttachConfig
    from .attach import attach as run_attach

    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = AttachConfig.from_dict(parse_overrides(overrides))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    options = {key.removesuffix("_name"): value for key, value in io.items()}
    try:
        result = run_attach(segmenter, data, out, cfg, options)
    except (ValueError, KeyError) as exc:  # an AttachError, or a refit without errors to fit
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None
    click.echo(json.dumps(result.summary()))


def _csv(kind: type) -> Any:
    """A click callback parsing `a,b,c` into a list of `kind`."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[Any]:
        try:
            items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list") from None
        if not items or len(set(items)) != len(items):
            raise click.BadParameter(f"{value!r}: give at least one value, each once")
        return items

    return parse


@main.command("al", epilog=SETTINGS_HELP)
@data_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder: per-stage fits, state.json per strategy and seed, results.*",
)
@click.option(
    "--strategies",
    default="ds,de,random,entropy",
    show_default=True,
    callback=_csv(str),
    help="Comma-separated: "
    + ", ".join(strategy_names(unit="frame"))
    + " (frames); "
    + ", ".join(strategy_names(unit="region"))
    + " (regions, with --unit region).",
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    callback=_csv(int),
    help="Comma-separated seeds (initial labelled set, training, random picks).",
)
@click.option(
    "--preset", default="streets-cpu", show_default=True, help="streets-cpu | cpu | paper."
)
@config_option
@click.option(
    "--init",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.10,
    show_default=True,
    help="Initial labelled fraction of the train split.",
)
@click.option(
    "--step",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.05,
    show_default=True,
    help="Fraction of the train split added per stage.",
)
@click.option(
    "--max",
    "max_fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.40,
    show_default=True,
    help="Last stage's labelled fraction.",
)
@click.option(
    "--subset",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    show_default=True,
    help="Score only a seeded random fraction of the unlabelled pool (paper: 0.5).",
)
@click.option(
    "--bins",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="DE histogram bins (paper: CamVid 8, Cityscapes 10).",
)
@click.option(
    "--full/--no-full",
    default=False,
    show_default=True,
    help="Also train on the whole train split (each seed) for the % of full line.",
)
@click.option(
    "--report-only",
    is_flag=True,
    help="Write results.* from the stages the state.json files already record (later stages "
    "blank) and train nothing: where a long run stands.",
)
@click.option(
    "--unit",
    type=click.Choice(["frame", "region"]),
    default="frame",
    show_default=True,
    help="frame: the paper's protocol (--init/--step/--max of the frames). region: the "
    "label-cost study, stages at --budgets of the pool's pixels; region strategies buy "
    "regions, frame strategies whole frames. Set samples_per_epoch=N.",
)
@click.option(
    "--budgets",
    default="0.5,1,2,4",
    show_default=True,
    callback=_csv(float),
    help="--unit region: % of the pool's pixels labelled at each stage (stage 0 random); "
    "budgets added after a study's last one extend it.",
)
@click.option(
    "--regions",
    default="cell:12",
    show_default=True,
    help="--unit region: cell:N (N x N pixel cells) or slic:N (about N superpixels a frame).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="--unit region: the sampling strategies' temperature (score ** (1 / T)).",
)
@click.option(
    "--pseudo-labels",
    "pseudo_threshold",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="--unit region: from stage 1, train every frame also on the previous stage's model's "
    "predictions where its confidence reaches this, outside what was bought (0: off).",
)
@click.option(
    "--through",
    type=float,
    default=None,
    help="--unit region: stop every seed after the stage at this budget (%, one of "
    "--budgets), so that all seeds reach it before any goes further; rerun without it to go on.",
)
@runtime_options
@click.argument("overrides", nargs=-1)
def al(
    data: Path,
    out: Path,
    strategies: list[str],
    seeds: list[int],
    preset: str,
    config_file: Path | None,
    init: float,
    step: float,
    max_fraction: float,
    subset: float | None,
    bins: int,
    full: bool,
    report_only: bool,
    unit: str,
    budgets: list[float],
    regions: str,
    temperature: float,
    pseudo_threshold: float,
    through: float | None,
    device: str,
    amp: bool,
    workers: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Run the paper's active-learning protocol and report mIoU vs % labelled.

    Every stage trains for the same samples seen: samples_per_epoch (the pool's size unless
    set) x epochs. OVERRIDES are key=value settings over the preset, e.g. epochs=2
    decoder_width=32.
    """
    from .acquisition import STRATEGIES
    from .al import Protocol, report_al, run_al
    from .report import format_table

    if unit == "region":
        _label_cost(
            data,
            out,
            strategies,
            seeds,
            preset,
            config_file,
            budgets,
            regions,
            temperature,
            pseudo_threshold,
            through,
            full,
            report_only,
            make_runtime(device, amp, workers),
            overrides,
        )
        return
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; choose from {', '.join(sorted(STRATEGIES))}",
            param_hint="--strategies",
        )
    runtime = make_runtime(device, amp, workers)
    config, _ = checked_config(data, preset, config_file, overrides)
    try:
        protocol = Protocol(
            init=init, step=step, max_fraction=max_fraction, subset=subset, bins=bins
        )
        if report_only:
            results = report_al(out, strategies, seeds, data)
        else:
            results = run_al(
                data, out, config, strategies, seeds, protocol, full=full, runtime=runtime
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_table(results))
    click.echo(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}", err=True
    )


def _label_cost(
    data: Path,
    out: Path,
    strategies: list[str],
    seeds: list[int],
    preset: str,
    config_file: Path | None,
    budgets: list[float],
    regions: str,
    temperature: float,
    pseudo_threshold: float,
    through: float | None,
    full: bool,
    report_only: bool,
    runtime: Any,
    overrides: tuple[str, ...],
) -> None:
    """`deal-train al --unit region`: the label-cost study (training/label_cost.py)."""
    from .label_cost import LabelCostProtocol, run_label_cost
    from .report import report_label_cost

    config, _ = checked_config(data, preset, config_file, overrides)
    try:
        protocol = LabelCostProtocol(
            budgets=tuple(b / 100 for b in budgets),
            regions=regions,
            temperature=temperature,
            pseudo_threshold=pseudo_threshold,
        )
        if not report_only:
            run_label_cost(
                data,
                out,
                config,
                strategies,
                seeds,
                protocol,
                full,
                runtime=runtime,
                through=None if through is None else through / 100,
            )
        table = report_label_cost(out, strategies, seeds, data)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(table)
    click.echo(f"wrote {out / 'results.md'}, {out / 'results.png'}", err=True)


if __name__ == "__main__":
    sys.exit(main())
