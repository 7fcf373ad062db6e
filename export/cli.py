"""`deal-export`: onnx (export, check, compare), attach, reexport, tensorrt, trt-check,
repository, quantize."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dealseg.training.novelty import NoveltyStats


def parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 180x240)") from None
    return h, w


def graph_options(f: Any) -> Any:
    """--max-batch, --bins, --name, --version: what every exported graph is made with."""
    for option in reversed(
        [
            click.option(
                "--max-batch",
                type=click.IntRange(min=1),
                default=16,
                show_default=True,
                help="Largest batch the dynamic batch axis is exported for.",
            ),
            click.option(
                "--bins",
                type=click.IntRange(min=2),
                default=8,
                show_default=True,
                help="DE histogram bins (the paper: 8 CamVid, 10 Cityscapes).",
            ),
            click.option(
                "--name",
                "model_name",
                default="deal",
                show_default=True,
                help="Model name written into the metadata: the model's folder in a Triton "
                "repository.",
            ),
            click.option(
                "--version",
                "model_version",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Model version written into the metadata: its version folder in the "
                "repository.",
            ),
        ]
    ):
        f = option(f)
    return f


novelty_data_option = click.option(
    "--novelty-data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A dataset (any layout `deal-train fit` reads) whose train split the novelty score is "
    "fitted on and whose val split calibrates it (novelty 0.99 = further than 99%% of the val "
    "frames). Without it the graph's novelty is NaN (unknown).",
)


def novelty_note(stats: NoveltyStats | None) -> str:
    """One line on the statistics a graph was given."""
    if stats is None:
        return "novelty: none (no --novelty-data; the graph's novelty is NaN)"
    return (
        f"novelty: fitted on {stats.fitted} train frames, calibrated on "
        f"{len(stats.reference)} val frames"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dealseg")
def main() -> None:
    """Export DEAL models: ONNX graph, TensorRT engine, Triton model repository."""


@main.command()
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint from `deal-train fit`.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output model.onnx.",
)
@click.option(
    "--input-size", default=None, help="HxW the graph takes (default: the checkpoint's input_size)."
)
@graph_options
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Compare ONNX Runtime with PyTorch on random images and real photos.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    envvar="DEAL_DEVICE",
    show_envvar=True,
    help="Where the PyTorch side of the comparison runs: auto, cpu, cuda or cuda:N.",
)
@novelty_data_option
def onnx(
    checkpoint: Path,
    out: Path,
    input_size: str | None,
    max_batch: int,
    bins: int,
    model_name: str,
    model_version: int,
    compare: bool,
    device: str,
    novelty_data: Path | None,
) -> None:
    """Export a checkpoint to ONNX, run onnx.checker, then compare ORT against PyTorch."""
    from dealseg.training.checkpoint import CheckpointError
    from dealseg.training.data import DataError
    from dealseg.training.device import DeviceError, resolve_device
    from dealseg.training.novelty import Novelty

    from .novelty import export_with_novelty
    from .onnx_export import export_graph, prepare_graph

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        where = resolve_device(device)
        size, version = parse_size(input_size), str(model_version)
        graph, spec = prepare_graph(checkpoint, size, bins, version, model_name)
    except (CheckpointError, DeviceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    def export(stats: NoveltyStats | None, path: Path) -> None:
        graph.novelty = Novelty(stats)
        export_graph(graph, spec, path, max_batch)

    try:
        stats = export_with_novelty(export, out, novelty_data)
    except (DataError, ValueError) as exc:
        raise click.ClickException(f"--novelty-data {novelty_data}: {exc}") from None
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), model id {spec.model_id}")
    click.echo(novelty_note(stats))
    if not compare:
        return
    from .compare import compare as run_compare
    from .compare import random_images, real_photos

    images = {**random_images(4, spec.input_size), **real_photos()}
    report = run_compare(graph, out, images, device=where)
    click.echo(report.table())
    if report.degenerate:
        click.echo(
            f"warning: the model's scores are degenerate over the {report.images} comparison "
            f"images: {'; '.join(report.degenerate)}: it ranks nothing (untrained, or its "
            "difficulty head broken)",
            err=True,
        )
    if report.failures:
        raise click.ClickException(
            "ONNX Runtime and PyTorch disagree:\n  " + "\n  ".join(report.failures)
        )
    click.echo("parity: OK")


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="An exported model.onnx (with its dealseg.model_config metadata), e.g. the shipped "
    "model_repository/deal/1/model.onnx.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output model.onnx (may be --model itself: it is replaced only when all checks pass).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Largest batch the dynamic batch axis is exported for.",
)
@novelty_data_option
def reexport(model_path: Path, out: Path, max_batch: int, novelty_data: Path | None) -> None:
    """Export a graph again with today's exporter, from its own weights and ModelConfig; its
    metadata and model id are kept, its contract raised to today's (every weight is checked bit
    for bit), and its novelty statistics kept unless --novelty-data fits new ones."""
    from dealseg.core.contract import ContractError
    from dealseg.training.data import DataError
    from dealseg.training.novelty import NoveltyError

    from .reexport import ReexportError
    from .reexport import reexport as run_reexport

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        report = run_reexport(model_path, out, max_batch, novelty_data)
    except (ReexportError, ContractError, DataError, NoveltyError) as exc:
        raise click.ClickException(str(exc)) from None
    worst = max(report.max_abs.values())
    raised = report.was.contract_version != report.spec.contract_version
    click.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), model id {report.spec.model_id}"
        + (
            f", contract {report.was.contract_version} -> {report.spec.contract_version}"
            if raised
            else ""
        )
        + f": {report.weights} weights unchanged; outputs vs {model_path} on real photos: "
        f"max abs difference {worst:.2e}"
    )
    click.echo(novelty_note(report.novelty))


@main.command()
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="model.onnx from `deal-export onnx`.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output engine, e.g. model.plan.",
)
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels (inputs/outputs stay as declared).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--opt-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--workspace-gib",
    type=float,
    default=4.0,
    show_default=True,
    help="Builder workspace memory pool.",
)
def tensorrt(
    onnx_path: Path,
    out: Path,
    fp16: bool,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_gib: float,
) -> None:
    """Build a TensorRT engine with an explicit-batch profile, then check it against ORT."""
    import numpy as np

    from .tensorrt import BatchProfile, TensorRTUnavailable, build_engine, parity_vs_onnxruntime

    try:
        profile = BatchProfile(min_batch, opt_batch, max_batch)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        build_engine(onnx_path, out, profile, fp16=fp16, workspace_gib=workspace_gib)
        from dealseg.core.modelfile import read_onnx_spec

        h, w = read_onnx_spec(onnx_path).input_size
        images = np.random.default_rng(0).integers(0, 256, (opt_batch, h, w, 3), dtype=np.uint8)
        click.echo(json.dumps(parity_vs_onnxruntime(out, onnx_path, images), indent=2))
    except TensorRTUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}")


@main.command("trt-check")
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="model.onnx from `deal-export onnx` (or its INT8 version from `deal-export quantize`).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The Triton config.pbtxt whose batching the profile follows (1 to max_batch_size) "
    "[default: the config.pbtxt two folders up, as in NAME/VERSION/model.onnx, else 1/8/16].",
)
@click.option(
    "--plan",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the TensorRT-RTX engine here (it runs on RTX-class GPUs only).",
)
def trt_check(onnx_path: Path, config_path: Path | None, plan: Path | None) -> None:
    """Parse and build the graph with TensorRT-RTX on this host, no GPU needed: every node
    TensorRT refuses is named. An engine for a data-centre GPU still needs `deal-export
    tensorrt` on that host."""
    from dealseg.serving.repository import batch_profile

    from .tensorrt import BatchProfile, GraphRefused, TensorRTUnavailable, check_with_tensorrt_rtx

    beside = onnx_path.resolve().parents[1] / "config.pbtxt"
    config_path = config_path or (beside if beside.is_file() else None)
    try:
        profile = BatchProfile(*batch_profile(config_path)) if config_path else BatchProfile()
        report = check_with_tensorrt_rtx(onnx_path, profile, plan)
    except (GraphRefused, TensorRTUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"TensorRT-RTX parsed and built {onnx_path}: {report.layers} layers, batch "
        f"{profile.min_batch}/{profile.opt_batch}/{profile.max_batch}"
        f"{f' (from {config_path})' if config_path else ''}, engine "
        f"{report.engine_bytes / 1e6:.1f} MB in {report.seconds:.1f} s"
        + (f", written to {plan}" if plan else "")
    )


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="model.onnx from `deal-export onnx`.",
)
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Triton model repository to write the model into, as NAME/VERSION/ beside the "
    "versions already there.",
)
@click.option(
    "--name",
    "model_name",
    default=None,
    show_default="the model's own (`deal-export onnx --name`)",
    help="Serve the model under this name (its metadata is stamped to match).",
)
@click.option(
    "--version",
    "model_version",
    type=click.IntRange(min=1),
    default=None,
    show_default="the model's own (`deal-export onnx --version`)",
    help="Serve it as this version (its metadata is stamped to match).",
)
@click.option("--force", is_flag=True, help="Replace the version if the repository has it.")
@click.option(
    "--version-policy",
    default="all",
    show_default=True,
    help="Which versions Triton serves: all, latest:N or specific:N[,M...].",
)
@click.option(
    "--target",
    type=click.Choice(["python-cpu", "onnxruntime", "tensorrt"]),
    default="python-cpu",
    show_default=True,
    help="python-cpu: Python backend running ONNX Runtime (anywhere); onnxruntime: "
    "Triton's onnxruntime_onnx platform (GPU); tensorrt: tensorrt_plan.",
)
@click.option(
    "--plan",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Engine for --target tensorrt (else build it on the GPU host).",
)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--preferred-batch-sizes",
    default="",
    help="Comma-separated dynamic-batching preferred sizes, e.g. 4,8,16 [default: none: "
    "Triton's guidance, the batcher then forms the largest batch it can within the delay; "
    "set them only where perf_analyzer measures better].",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="Dynamic batcher max queue delay (microseconds).",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model instances (instance_group count).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads for python-cpu (0 = all cores).",
)
@click.option(
    "--trt-accelerator",
    is_flag=True,
    help="onnxruntime target: enable the TensorRT execution accelerator.",
)
def repository(
    model_path: Path,
    repo: Path,
    model_name: str | None,
    model_version: int | None,
    force: bool,
    version_policy: str,
    target: str,
    plan: Path | None,
    max_batch_size: int,
    preferred_batch_sizes: str,
    max_queue_delay_us: int,
    instances: int,
    threads: int,
    trt_accelerator: bool,
) -> None:
    """Write the model into a Triton model repository (config.pbtxt + version folder)."""
    from dealseg.core.contract import ContractError
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.serving.repository import versions_of, write_repository

    from .onnx_export import check_name
    from .onnxfile import stamped

    try:
        sizes = tuple(int(s) for s in preferred_batch_sizes.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{preferred_batch_sizes!r}: expected e.g. 4,8,16") from None
    try:
        name = model_name and check_name(model_name)
        with stamped(model_path, read_onnx_spec(model_path), name, model_version) as served:
            spec = read_onnx_spec(served)
            model_dir = write_repository(
                served,
                repo,
                target,
                plan=plan,
                force=force,
                max_batch_size=max_batch_size,
                preferred_batch_sizes=sizes,
                max_queue_delay_us=max_queue_delay_us,
                instances=instances,
                intra_op_threads=threads,
                trt_accelerator=trt_accelerator,
                version_policy=version_policy,
            )
    except (ContractError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    versions = ", ".join(versions_of(model_dir))
    click.echo(
        f"wrote {model_dir / spec.model_version} and {model_dir / 'config.pbtxt'} ({target}): "
        f"model {spec.model_id}; versions {versions}, policy {version_policy}"
    )


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="FP32 model.onnx from `deal-export onnx`.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output INT8 model, e.g. model-int8.onnx.",
)
@click.option(
    "--calibration",
    required=True,
    help="Calibration POOL: a folder of images, or a text file of image paths (as "
    "`deal-client score` takes it); use images like the ones you will score.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Calibration images, spread evenly over the pool.",
)
@click.option(
    "--weight-bits",
    type=click.Choice(["auto", "7", "8"]),
    default="auto",
    show_default=True,
    help="Bits of the 1x1 and stem convolutions' weights: 8 needs a CPU with VNNI where the "
    "model runs (without it the INT8 sums saturate), 7 is safe everywhere; auto: 8 if this CPU "
    "has VNNI, else 7 (always 8 with --format tensorrt).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["cpu", "tensorrt"]),
    default="cpu",
    show_default=True,
    help="cpu: ONNX Runtime's fast CPU format (UINT8 activations, INT32 biases); tensorrt: "
    "TensorRT's (INT8 activations symmetric about zero, FP32 biases), for "
    "`deal-export tensorrt` / `trt-check`.",
)
def quantize(
    model_path: Path, out: Path, calibration: str, count: int, weight_bits: str, fmt: str
) -> None:
    """Static INT8 (QDQ) quantization of the segmenter; heads and scores stay FP32."""
    from .quantize import QuantizeError, quantize_model

    try:
        report = quantize_model(model_path, out, calibration, count, weight_bits, fmt)
    except QuantizeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {out} ({report.bytes_out / 1e6:.1f} MB, from {report.bytes_in / 1e6:.1f} MB): "
        f"{report.quantized_convs} convolutions INT8, calibrated on {report.calibration_images} "
        f"images, {report.weight_bits}-bit weights; {len(report.fp32_nodes)} nodes of the heads "
        "and scores kept FP32"
    )


@main.command()
@click.option(
    "--head",
    "head_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="head.pt from `deal-train attach`.",
)
@click.option(
    "--segmenter",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The ONNX segmenter the head was trained on (checked by its sha256).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output model.onnx: the segmenter wrapped, with the dealseg contract.",
)
@graph_options
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Check the graph on random images and real photos: its segmentation equals the "
    "segmenter's argmax, its scores the PyTorch head's.",
)
@novelty_data_option
def attach(
    head_path: Path,
    segmenter: Path,
    out: Path,
    max_batch: int,
    bins: int,
    model_name: str,
    model_version: int,
    check: bool,
    novelty_data: Path | None,
) -> None:
    """Wrap a segmenter and the difficulty head trained on it (`deal-train attach`) into one
    ONNX graph with the dealseg contract."""
    import numpy as np

    from dealseg.training.attach import AttachError
    from dealseg.training.checkpoint import CheckpointError

    from .attach import check_attached, export_attached
    from .novelty import carried_novelty

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        spec = export_attached(
            head_path, segmenter, out, bins, max_batch, str(model_version), model_name, novelty_data
        )
    except (AttachError, CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), model id {spec.model_id}")
    click.echo(novelty_note(carried_novelty(out)))
    if not check:
        return
    from .compare import random_images, real_photos, resize

    images = {**random_images(4, spec.input_size), **real_photos()}
    frames = np.stack([resize(image, spec.input_size) for image in images.values()])
    report = check_attached(out, segmenter, head_path, frames)
    click.echo(
        f"{report.frames} images: {report.argmax_mismatches} segmentation pixels unlike the "
        "segmenter's argmax; max abs diff vs PyTorch "
        + ", ".join(f"{k} {v:.1e}" for k, v in report.max_abs.items())
    )
    if report.failures:
        raise click.ClickException(
            "the wrapped graph disagrees:\n  " + "\n  ".join(report.failures)
        )
    click.echo("check: OK")


if __name__ == "__main__":
    sys.exit(main())
