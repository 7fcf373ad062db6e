"""`deal-client`'s options: the option groups its commands share, their callbacks, and the
typed settings they become (`client/settings.py`), built once per command.

Nothing heavy is imported here at module level, so `deal-client --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dealseg.core import strategies

if TYPE_CHECKING:
    from .fleet import RaySettings
    from .settings import EngineSettings, ScoreSettings, SelectSettings, TritonSettings

STRATEGY_NAMES = strategies.names(unit="frame", client=True)

DEFAULT_STRATEGY = strategies.DEFAULT_STRATEGY
REGION_NAMES = strategies.names(unit="region", client=True)
DEFAULT_REGION = strategies.DEFAULT_REGION_STRATEGY

DEFAULT_MAX_PIXELS = 89_478_485  # == decode.DEFAULT_MAX_PIXELS (tested), Pillow's own limit

RESIZE_MODES = ("stretch", "letterbox", "crop")  # == decode.RESIZE_MODES (tested)

SCORE_FORMATS = ("jsonl", "parquet")


class OutDir(click.Path):
    """A local folder, or a prefix in object storage (s3://, gs://) as an
    `objects.ObjectPath`; `refuse` (with `{uri}`), when given, is why this one must be local."""

    def __init__(
        self, exists: bool = False, file_okay: bool = False, refuse: str | None = None
    ) -> None:
        super().__init__(exists=exists, file_okay=file_okay, path_type=Path)
        self.refuse = refuse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .objects import ObjectPath, is_object_uri

        if isinstance(value, ObjectPath):
            return value
        if is_object_uri(str(value)):
            if self.refuse is not None:
                self.fail(self.refuse.format(uri=value), param, ctx)
            try:
                return ObjectPath(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


def shard_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    from dealseg.core.pool import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _headers(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict:
    headers = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        headers[key.strip()] = val
    return headers


def _class_weights(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, float]:
    import math

    weights = {}
    for item in value:
        name, sep, text = item.rpartition("=")
        try:
            weight = float(text)
        except ValueError:
            weight = -1.0
        if not sep or not name or not (math.isfinite(weight) and weight >= 0):
            raise click.BadParameter(f"{item!r} is not CLASS=WEIGHT with a weight >= 0")
        weights[name] = weight
    return weights


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    import re

    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"{value!r} is not a regular expression: {exc}") from None
    return value


# ---------------------------------------------------------------------------- option groups
def selection_options(require_k: bool) -> Callable[[Callable], Callable]:
    def decorate(f: Callable) -> Callable:
        for option in reversed(
            [
                click.option(
                    "--top-k",
                    "-k",
                    "top_k",
                    type=click.IntRange(min=1),
                    default=None,
                    help="How many images to select" + (" (or --regions)." if require_k else "."),
                ),
                click.option(
                    "--strategy",
                    "-s",
                    type=click.Choice(STRATEGY_NAMES + REGION_NAMES, case_sensitive=False),
                    default=None,
                    show_default=f"{DEFAULT_STRATEGY}; with --regions {DEFAULT_REGION}",
                    help="Ranking: the paper's difficulty score (ds) or difficulty entropy "
                    "(de), softmax entropy, seeded random, or k-center core-set; with "
                    "--regions a region strategy.",
                ),
                click.option(
                    "--regions",
                    "budget",
                    default=None,
                    metavar="BUDGET",
                    help="Buy regions inside frames instead of whole frames: a share of the "
                    "pool's pixels (5%) or a count of regions (300). score: keeps every "
                    "frame's cells (--region-size) with their mean difficulty.",
                ),
                click.option(
                    "--temperature",
                    type=click.FloatRange(0, min_open=True),
                    default=1.0,
                    show_default=True,
                    help="--regions sampling: probability proportional to score ** (1 / T).",
                ),
                click.option(
                    "--max-per-frame",
                    type=click.IntRange(min=1),
                    default=None,
                    help="--regions: at most this many regions of one frame.",
                ),
                click.option(
                    "--frame-cost",
                    type=click.IntRange(min=0),
                    default=0,
                    show_default=True,
                    metavar="PIXELS",
                    help="--regions: labelling cost of opening a frame, in pixels, charged "
                    "against a pixel budget.",
                ),
                click.option(
                    "--diverse",
                    type=click.FloatRange(0.0, 1.0),
                    default=None,
                    help="Skip an image whose embedding cosine to an already selected "
                    "one is above this threshold (e.g. 0.95).",
                ),
                click.option(
                    "--labeled",
                    type=click.Path(exists=True, path_type=Path),
                    default=None,
                    help="Already-labelled images, never selected and the core-set's first "
                    "centres: a text file of paths, a scores.jsonl of a run on them, "
                    "or a .npy of embeddings [L, D].",
                ),
                click.option(
                    "--balance",
                    is_flag=True,
                    help="Among the 4k best by the strategy, pick the k whose predicted class "
                    "mix comes closest to uniform (or to --class-weight).",
                ),
                click.option(
                    "--class-weight",
                    "class_weights",
                    multiple=True,
                    callback=_class_weights,
                    metavar="CLASS=W",
                    help="Target weight of a class for --balance (implies it; repeatable; "
                    "classes not named weigh 1).",
                ),
                click.option(
                    "--per-group",
                    type=click.IntRange(min=1),
                    default=None,
                    metavar="N",
                    help="At most N picks per group of images (per folder, or per --group-by).",
                ),
                click.option(
                    "--group-by",
                    callback=_regex,
                    default=None,
                    metavar="REGEX",
                    help="A path's group for --per-group: the first (...) group of this regular "
                    "expression's match in the path, or the whole match; e.g. '/(cam\\d+)/' "
                    "[default: the image's folder].",
                ),
                click.option(
                    "--exclude-novel/--keep-novel",
                    default=True,
                    show_default=True,
                    help="Pick no off-domain frame (novelty above --novel-threshold: a test "
                    "pattern, a covered lens, a photo), or rank them like any other; with "
                    "--regions, open none of them.",
                ),
                click.option(
                    "--max-novel-share",
                    type=click.FloatRange(0.0, 1.0),
                    default=None,
                    metavar="S",
                    help="Instead of excluding them, let at most this share of the k picks be "
                    "off-domain (the best ranked of them).",
                ),
                click.option(
                    "--novel-threshold",
                    type=click.FloatRange(0.0, 1.0),
                    default=strategies.NOVEL_THRESHOLD,
                    show_default=True,
                    metavar="T",
                    help="Novelty above T is off-domain: further from the training frames than "
                    "a share T of held-out in-domain frames.",
                ),
                click.option(
                    "--seed",
                    type=int,
                    default=0,
                    show_default=True,
                    help="Seed of the random strategy.",
                ),
                click.option(
                    "--json",
                    "as_json",
                    is_flag=True,
                    help="Print selection.json on stdout instead of a table.",
                ),
            ]
        ):
            f = option(f)
        return f

    return decorate


def triton_options(f: Callable) -> Callable:
    for option in reversed(
        [
            click.option(
                "--model-name",
                default=None,
                envvar="DEAL_MODEL_NAME",
                show_envvar=True,
                show_default="deal",
                help="The model on the Triton server (`deal-export onnx --name`).",
            ),
            click.option(
                "--model-version",
                type=click.IntRange(min=1),
                default=None,
                envvar="DEAL_MODEL_VERSION",
                show_envvar=True,
                show_default="the highest version the server has loaded",
                help="The model version on the Triton server; every request asks for it.",
            ),
            click.option(
                "--protocol",
                type=click.Choice(["grpc", "http"]),
                default="grpc",
                show_default=True,
                envvar="DEAL_PROTOCOL",
                show_envvar=True,
                help="Triton protocol for --url.",
            ),
            click.option("--ssl", is_flag=True, help="Use TLS to talk to Triton."),
            click.option(
                "--shm",
                is_flag=True,
                help="Pass the tensors through system shared memory (/dev/shm) instead of the "
                "socket: for a Triton server on this host.",
            ),
            click.option(
                "--root-certs",
                type=click.Path(exists=True, dir_okay=False),
                default=None,
                help="PEM root certificates for --ssl (implies --ssl).",
            ),
            click.option(
                "--header",
                "headers",
                multiple=True,
                callback=_headers,
                metavar="KEY=VALUE",
                help="Extra request header (repeatable).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=30.0,
                show_default=True,
                help="Seconds per request to Triton.",
            ),
            click.option(
                "--retries",
                type=click.IntRange(min=0),
                default=3,
                show_default=True,
                help="Retries of a request after a transient error (backoff 0.5 s, x2).",
            ),
        ]
    ):
        f = option(f)
    return f


def engine_options(f: Callable) -> Callable:
    """The engine (--model or --url with the Triton options) and how images stream to it."""
    for option in reversed(
        [
            click.option(
                "--model",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                default=None,
                envvar="DEAL_MODEL",
                show_envvar=True,
                help="ONNX model run in-process "
                "[default: the shipped model_repository/deal/1/model.onnx].",
            ),
            click.option(
                "--url",
                "urls",
                multiple=True,
                envvar="DEAL_URL",
                show_envvar=True,
                metavar="HOST:PORT",
                help="Triton server(s) to use instead of the in-process model (repeatable; "
                "requests are spread over them).",
            ),
            triton_options,
            click.option(
                "--batch-size",
                type=click.IntRange(1, 1024),
                default=8,
                show_default=True,
                help="Images per inference request.",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(1, 256),
                default=2,
                show_default=True,
                help="Inference requests in flight.",
            ),
            click.option(
                "--workers",
                type=click.IntRange(1, 256),
                default=4,
                show_default=True,
                help="Image decoding threads.",
            ),
            click.option(
                "--max-pixels",
                type=click.IntRange(min=1),
                default=DEFAULT_MAX_PIXELS,
                show_default=True,
                help="Refuse images with more pixels (decompression-bomb guard).",
            ),
            click.option(
                "--progress/--no-progress",
                default=True,
                show_default=True,
                help="Progress bar on stderr.",
            ),
        ]
    ):
        f = option(f)
    return f


_FLAGS = {"k": "--top-k", "urls": "--url", "balance": "--class-weight", "format": "--format"}

T = TypeVar("T")


def checked(build: Callable[[], T]) -> T:
    """build() of the run's settings; a SettingsError is a usage error naming the option."""
    from .settings import SettingsError

    try:
        return build()
    except SettingsError as exc:
        flag = _FLAGS.get(exc.name, "--" + exc.name.replace("_", "-"))
        raise click.UsageError(f"{flag}: {exc}") from None


def triton_settings(o: dict[str, Any]) -> TritonSettings:
    """The Triton options (their names are `settings.TritonSettings`' fields)."""
    from .settings import TritonSettings

    names = [f.name for f in fields(TritonSettings)]
    return checked(lambda: TritonSettings(**{n: o[n] for n in names}))


def engine_settings(urls: tuple[str, ...], model: Path | None, o: dict[str, Any]) -> EngineSettings:
    """--model or --url with the Triton options, as `settings.EngineSettings`."""
    from .settings import EngineSettings

    return checked(lambda: EngineSettings(model, urls, triton_settings(o)))


def score_settings(o: dict[str, Any]) -> ScoreSettings:
    from .settings import ScoreSettings

    return checked(
        lambda: ScoreSettings(
            o["batch_size"],
            o["concurrency"],
            o["workers"],
            o["max_pixels"],
            o["progress"],
            o.get("resize", "stretch"),
            o.get("fmt") or "jsonl",
            f"cell:{o['region_size']}" if o.get("budget") and "region_size" in o else None,
            o.get("topic"),
            o.get("image_column"),
            o.get("every"),
            o.get("fps"),
        )
    )


def select_settings(
    o: dict[str, Any], strategy: str | None = None, k: int | None = None
) -> SelectSettings:
    from .settings import SelectSettings

    balance = o["class_weights"] if o["balance"] or o["class_weights"] else None
    budget = o.get("budget")
    k = k or o["top_k"]
    if budget is None and k is None:
        raise click.MissingParameter(param_hint="'--top-k' / '-k'", param_type="option")
    if budget is not None and k is not None:
        raise click.UsageError("--top-k picks frames, --regions buys regions: give one")
    strategy = (
        strategy or o["strategy"] or (DEFAULT_REGION if budget else DEFAULT_STRATEGY)
    ).lower()
    return checked(
        lambda: SelectSettings(
            strategy,
            k or 1,
            o["seed"],
            o["diverse"],
            o["labeled"],
            balance,
            o["per_group"],
            o["group_by"],
            budget,
            o["temperature"],
            o["max_per_frame"],
            o["frame_cost"],
            novel_share_of(o["exclude_novel"], o["max_novel_share"]),
            o["novel_threshold"],
        )
    )


def log_options(f: Callable) -> Callable:
    """--topic, --image-column, --every, --fps: which frames of the pool's drive logs are
    scored (client/logs.py)."""
    for option in reversed(
        [
            click.option(
                "--topic",
                default=None,
                metavar="TOPIC",
                help="The image topic of the pool's MCAP files and ROS 2 bags (sensor_msgs "
                "Image or CompressedImage); a missing or wrong one lists the log's image topics.",
            ),
            click.option(
                "--image-column",
                default=None,
                metavar="NAME",
                help="The column of encoded images (JPEG, PNG bytes) of the pool's Parquet "
                "tables; a missing or wrong one lists the table's image columns.",
            ),
            click.option(
                "--every",
                type=click.IntRange(min=1),
                default=None,
                metavar="N",
                help="Score every N-th frame of each log (frames 0, N, 2N, ...).",
            ),
            click.option(
                "--fps",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="F",
                help="Score at most F frames a second of each log, by the frames' timestamps.",
            ),
        ]
    ):
        f = option(f)
    return f


def novel_share_of(exclude: bool, share: float | None) -> float | None:
    """The share of off-domain picks --exclude-novel/--keep-novel and --max-novel-share allow."""
    if share is not None:
        return share
    return 0.0 if exclude else None


def ray_options(f: Callable) -> Callable:
    """The Ray path (--ray) and its actor pool; defaults fit one machine."""
    for option in reversed(
        [
            click.option(
                "--ray",
                "ray_address",
                is_flag=False,
                flag_value="local",
                default=None,
                envvar="DEAL_RAY",
                show_envvar=True,
                metavar="[ADDRESS]",
                help="Score on a Ray cluster, the scorer in Ray actors (needs dealseg[ray]; writes "
                "Parquet): alone (after POOL) a local cluster on this machine; 'auto' the "
                "cluster this machine belongs to; 'ray://HOST:10001' a remote head.",
            ),
            click.option(
                "--actors",
                type=click.IntRange(1, 4096),
                default=None,
                help="--ray: scoring actors, each holding its engine (an ONNX Runtime session "
                "or a Triton client)  [default: as many as the cluster's CPUs hold at "
                "--cpus-per-actor: one per CPU, the fastest on one machine]",
            ),
            click.option(
                "--cpus-per-actor",
                type=click.FloatRange(min=0.0),
                default=1.0,
                show_default=True,
                help="--ray: CPUs reserved per scoring actor (rounded up: its ONNX Runtime "
                "threads).",
            ),
            click.option(
                "--gpus-per-actor",
                type=click.FloatRange(min=0.0),
                default=0.0,
                show_default=True,
                help="--ray: GPUs reserved per scoring actor (fractions share a GPU).",
            ),
        ]
    ):
        f = option(f)
    return f


def ray_settings(o: dict[str, Any]) -> RaySettings | None:
    """--ray and its actor pool as `fleet.RaySettings`; None without --ray."""
    if o["ray_address"] is None:
        return None
    from .fleet import RaySettings

    address = None if o["ray_address"] == "local" else o["ray_address"]
    return RaySettings(address, o["actors"], o["cpus_per_actor"], o["gpus_per_actor"])


def path_map_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from .handoff import PathMap

    try:
        return PathMap.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
