"""`deal-client`: score an image pool with the DEAL model and select what to label next.

Commands are thin: they parse options and call plain functions of `run`, `store`, `select`.
Heavy modules (numpy, Pillow, onnxruntime, tritonclient, tqdm) are imported inside the commands
so that `deal-client --help` answers at once.

Exit codes: 0 all scored (or evaluated); 3 finished but some inputs failed (each listed on
stderr); 1 fatal; 2 usage; 130 interrupted (files stay valid; re-run to resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_FAILED_INPUTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STRATEGY_NAMES = (  # == core.ranking.STRATEGIES (tested)
    "ds",
    "de",
    "entropy",
    "random",
    "coreset",
    "ds+coreset",
    "de+coreset",
    "entropy+coreset",
)
DEFAULT_STRATEGY = "entropy"  # == core.ranking.DEFAULT_STRATEGY (tested)
DEFAULT_MAX_PIXELS = 89_478_485  # == decode.DEFAULT_MAX_PIXELS (tested), Pillow's own limit
RESIZE_MODES = ("stretch", "letterbox", "crop")  # == decode.RESIZE_MODES (tested)
SCORE_FORMATS = ("jsonl", "parquet")


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int]:
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
    if not math.isfinite(sum(weights.values())):
        raise click.BadParameter(
            f"the weights sum to more than a float holds ({' '.join(value)}): scale them down"
        )
    return weights


def _check_class_weights(how: Any, names: Any) -> None:
    """--class-weight names classes of the model (a usage error otherwise)."""
    from .run import balance_weights

    if how.balance:
        try:
            balance_weights(names, how.balance)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--class-weight") from None


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    import re

    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _stderr(message: str) -> None:
    click.echo(message, err=True)


# Control characters as escapes on the terminal: a name must not move the cursor or split a line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def _display(path: str) -> str:
    """A path printable on any terminal: bytes that are not UTF-8 and control characters shown
    as escapes (\\xNN, \\n)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_ESCAPES)


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
                    required=require_k,
                    help="How many images to select.",
                ),
                click.option(
                    "--strategy",
                    "-s",
                    type=click.Choice(STRATEGY_NAMES, case_sensitive=False),
                    default=None if not require_k else DEFAULT_STRATEGY,
                    show_default=True,
                    help="Ranking: the paper's difficulty score (ds) or difficulty entropy "
                    "(de), softmax entropy, seeded random, or k-center core-set.",
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


def _triton_factory(urls: tuple[str, ...], o: dict[str, Any]) -> Callable[[], Any]:
    """A picklable maker of the Triton engine of --url (the Ray path builds one per actor)."""
    import functools

    from dealseg.core.contract import MODEL_NAME

    from .engines import TritonEngine

    return functools.partial(
        TritonEngine,
        urls,
        o["protocol"],
        model_name=o["model_name"] or MODEL_NAME,
        model_version=None if o["model_version"] is None else str(o["model_version"]),
        ssl=o["ssl"],
        root_certs=o["root_certs"],
        headers=o["headers"],
        timeout=o["timeout"],
        retries=o["retries"],
        shm=o["shm"],
    )


def _triton(urls: tuple[str, ...], o: dict[str, Any]) -> Any:
    """The Triton engine for --url; a --url that names no usable endpoint is a usage error."""
    from .engines import EndpointError

    try:
        return _triton_factory(urls, o)()
    except EndpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None


def _select_settings(o: dict[str, Any], strategy: str | None = None, k: int | None = None) -> Any:
    from .run import SelectSettings

    if o["group_by"] is not None and o["per_group"] is None:
        raise click.UsageError("--group-by names the groups of --per-group N: give both")
    balance = o["class_weights"] if o["balance"] or o["class_weights"] else None
    return SelectSettings(
        strategy or o["strategy"],
        k or o["top_k"],
        o["seed"],
        o["diverse"],
        o["labeled"],
        balance,
        o["per_group"],
        o["group_by"],
    )


def _print_selection(doc: dict[str, Any], as_json: bool) -> None:
    from dealseg.core.ranking import MEANINGS

    from .store import record_path

    if as_json:
        click.echo(json.dumps(doc, indent=1, ensure_ascii=True))
        return
    click.echo(f"{'rank':>4}  {'score':>10}  path  [{doc['strategy']}, top {doc['k']}]")
    for r in doc["rows"]:
        score = "nan" if r["score"] is None else f"{r['score']:.6f}"
        click.echo(f"{r['rank']:>4}  {score:>10}  {_display(record_path(r))}")
    click.echo(f"score: {MEANINGS[doc['strategy']]}; higher = more worth labelling")


def _short(doc: dict[str, Any]) -> bool:
    """Whether fewer than k were selected; if so, say how many and why on stderr."""
    if doc["selected"] >= doc["k"]:
        return False
    why = "; ".join(doc.get("shortfall") or []) or "the pool is smaller"
    _stderr(f"selected {doc['selected']} of the {doc['k']} asked: {why}")
    return True


def _list_failures(failed: dict[str, str]) -> None:
    for path, reason in failed.items():
        _stderr(f"failed: {_display(path)}: {reason}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dealseg")
def main() -> None:
    """Score an image pool with the DEAL model and pick the images most worth labelling."""


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
                help="Score on a Ray cluster with Ray Data (needs dealseg[ray]; writes "
                "Parquet): alone (after POOL) a local cluster on this machine; 'auto' the "
                "cluster this machine belongs to; 'ray://HOST:10001' a remote head.",
            ),
            click.option(
                "--actors",
                type=click.IntRange(1, 4096),
                default=1,
                show_default=True,
                help="--ray: scoring actors, each holding its engine (an ONNX Runtime session "
                "or a Triton client).",
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


# ---------------------------------------------------------------------------------- score
@main.command()
@click.argument("pool")
@selection_options(require_k=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deal-out"),
    show_default=True,
    envvar="DEAL_OUT",
    show_envvar=True,
    help="Output folder; re-running on it resumes.",
)
@engine_options
@click.option(
    "--shard",
    callback=_shard,
    default=None,
    metavar="I/N",
    help="Score only slice I of N (0 <= I < N; by a hash of each path); "
    "combine the outputs with `deal-client merge`.",
)
@click.option(
    "--maps",
    is_flag=True,
    help="Also write image | difficulty | segmentation PNGs of the selection to OUT/maps/.",
)
@click.option(
    "--report",
    "html",
    is_flag=True,
    help="Also write OUT/report.html, the selection for a person to look at (implies --maps).",
)
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="stretch",
    show_default=True,
    envvar="DEAL_RESIZE",
    show_envvar=True,
    help="How a picture becomes the model's frame: stretch to it, letterbox (fit, pad; the "
    "padding is in no score) or crop (fill, cut the middle out).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(SCORE_FORMATS),
    default=None,
    envvar="DEAL_FORMAT",
    show_envvar=True,
    help="Scores in OUT: scores.jsonl + embeddings.f32 (a line per image as it is scored), or "
    "scores.parquet/ (part files of one table: path, status, error, scores, class_<name> "
    "shares, embedding, model, run) for pandas, DuckDB or Spark [default: jsonl; parquet "
    "with --ray].",
)
@ray_options
@click.pass_context
def score(
    ctx: click.Context, pool: str, urls: tuple[str, ...], model: Path | None, **o: Any
) -> None:
    """Score every image of POOL and select the --top-k most worth labelling.

    POOL is a folder (searched recursively), a text file of image paths or URIs, - (paths on
    stdin), or an s3:// or gs:// prefix (credentials from the AWS_* / GOOGLE_* variables).
    Outputs in --out: scores.jsonl (one record per input) and embeddings.f32, or scores.parquet/
    (--format parquet, --ray), selection.txt and selection.json. Without --url the model runs
    in-process with ONNX Runtime; with --ray, on a Ray cluster.
    """
    _one_engine(urls, model, o)
    if o["ray_address"] is not None:
        if o["fmt"] == "jsonl":
            raise click.UsageError("--ray writes Parquet: drop --format jsonl")
        o["fmt"] = "parquet"
    after = f"results so far are in {o['out']}; run again to resume"
    ctx.exit(_interruptible(lambda: _score(pool, urls, model, o), after))


def _one_engine(urls: tuple[str, ...], model: Path | None, o: dict[str, Any]) -> None:
    if model is not None and urls:
        raise click.UsageError("--model and --url exclude each other: use one engine")
    if not urls and o["shm"]:
        raise click.UsageError("--shm is a transport to a Triton server: give its --url")
    if not urls and (o["model_name"] or o["model_version"]):
        raise click.UsageError(
            "--model-name and --model-version pick a model on the Triton server at --url; "
            "in-process, give the model file with --model"
        )


def _interruptible(run: Callable[[], int], after: str) -> int:
    """run()'s exit code; Ctrl-C or SIGTERM: a line saying what is left (`after`), 130."""
    with _sigterm_interrupts():
        try:
            return run()
        except KeyboardInterrupt as exc:
            how = f" ({exc.args[0]})" if exc.args else ""
            _stderr(f"interrupted{how}: {after}")
            return EXIT_INTERRUPTED


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does: files left valid, a message, exit 130."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _engine(urls: tuple[str, ...], model: Path | None, o: dict[str, Any]) -> Any:
    """The engine of --url or --model, its --batch-size checked against the server's limit."""
    from .engines import EmbeddedEngine, EngineError

    try:
        engine = _triton(urls, o) if urls else EmbeddedEngine(model)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    limit = engine.max_batch_size
    if limit and o["batch_size"] > limit:
        engine.close()
        raise click.BadParameter(
            f"{o['batch_size']} is more than the server's max_batch_size {limit}; "
            f"use --batch-size {limit} or less",
            param_hint="--batch-size",
        )
    return engine


def _score_settings(o: dict[str, Any]) -> Any:
    from .run import ScoreSettings

    return ScoreSettings(
        o["batch_size"],
        o["concurrency"],
        o["workers"],
        o["max_pixels"],
        o["progress"],
        o.get("resize", "stretch"),
        o.get("fmt") or "jsonl",
    )


def _score(pool: str, urls: tuple[str, ...], model: Path | None, o: dict[str, Any]) -> int:
    from .engines import EngineError
    from .fleet import RayUnavailable
    from .run import score_pool
    from .store import StoreError

    out: Path = o["out"]
    paths = _pool_paths(pool, o["shard"])
    engine = _engine(urls, model, o)
    if o["resize"] == "letterbox" and not engine.spec.takes_valid_box:
        engine.close()
        raise click.BadParameter(
            f"model {engine.spec.model_id} uses contract {engine.spec.contract_version}: it "
            "cannot leave letterbox padding out of its scores; re-export it with `deal-export "
            "onnx`, or use --resize stretch or crop",
            param_hint="--resize",
        )
    scoring = _ray_scoring(urls, engine, o)
    try:
        where = "" if scoring is None else f" on Ray ({o['ray_address']}, {o['actors']} actors)"
        _stderr(
            f"deal-client: {len(paths)} images, model {engine.spec.model_id} via "
            f"{engine.describe()}{where}, out {out}"
        )
        how = _select_settings(o)
        _check_class_weights(how, engine.spec.class_names)
        settings = _score_settings(o)
        run = score_pool(paths, engine, out, settings, how, o["maps"], o["html"], scoring)
    except (StoreError, RayUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except EngineError as exc:
        raise click.ClickException(f"{exc}{_resume_hint(out)}") from None
    except OSError as exc:
        raise click.ClickException(f"{_os_error(exc, out)}{_resume_hint(out)}") from None
    finally:
        engine.close()
    return _report(run, out, o["as_json"])


def _ray_scoring(urls: tuple[str, ...], engine: Any, o: dict[str, Any]) -> Any:
    """`score_pool`'s scorer for --ray (None without it): each actor builds the engine of
    --url, or opens --model in ONNX Runtime with --cpus-per-actor threads."""
    if o["ray_address"] is None:
        return None
    import functools
    import math

    from .engines import EmbeddedEngine
    from .fleet import RayScoring, RaySettings, RayUnavailable, import_ray

    try:
        import_ray()  # before anything is written
    except RayUnavailable as exc:
        engine.close()
        raise click.ClickException(str(exc)) from None
    threads = max(1, math.ceil(o["cpus_per_actor"]))
    make = (
        _triton_factory(urls, o)
        if urls
        else functools.partial(EmbeddedEngine, str(engine.path), threads)
    )
    address = None if o["ray_address"] == "local" else o["ray_address"]
    return RayScoring(
        make, RaySettings(address, o["actors"], o["cpus_per_actor"], o["gpus_per_actor"])
    )


def _pool_paths(pool: str, shard: tuple[int, int]) -> list[str]:
    from dealseg.core.pool import IMAGE_EXTENSIONS, PoolError

    from .remote import AccessDenied
    from .run import list_paths

    try:
        paths = list_paths(pool, shard)
    except PoolError as exc:
        raise click.BadParameter(str(exc), param_hint="POOL") from None
    except AccessDenied as exc:
        raise click.ClickException(str(exc)) from None
    if not paths:
        raise click.ClickException(
            f"POOL {pool} holds no images ({' '.join(sorted(IMAGE_EXTENSIONS))})"
            + (f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
        )
    return paths


def _resume_hint(out: Path) -> str:
    """The second line of a failed scoring run: where its results are, when it wrote any."""
    from .store import META

    if not (Path(out) / META).is_file():
        return ""
    return f"\nresults so far are in {out}; run the same command again to resume"


def _os_error(exc: OSError, out: Path) -> str:
    """One line for a file the run could not write (a full disk, a read-only folder, a link
    that leads nowhere)."""
    where = exc.filename or out
    if os.path.islink(where) and not os.path.exists(where):
        return f"cannot write {where}: a symbolic link that leads nowhere (a loop, or no target)"
    return f"cannot write {where}: {exc.strerror or exc}"


def _report(run: Any, out: Path, as_json: bool) -> int:
    """Failures, the selection and the summary line; the exit code."""
    report, doc = run.report, run.selection
    _list_failures(report.failed)
    for path, reason in run.map_failures.items():
        _stderr(f"warning: no map for {_display(path)}: {reason}")
    if doc is None:
        _stderr(f"no selection: {run.no_selection}")
    else:
        _print_selection(doc, as_json)
    short = doc is not None and _short(doc)
    if run.html is not None:
        _stderr(f"report: {run.html}")
    _stderr(
        f"deal-client: {report.total} images: {report.scored} scored, {report.resumed} already "
        f"done, {len(report.failed)} failed, {report.seconds:.1f} s ({report.rate:.1f} img/s); "
        + (
            f"top {doc['selected']} by {doc['strategy']} in {out / 'selection.txt'}"
            if doc is not None
            else "no selection"
        )
    )
    return EXIT_FAILED_INPUTS if report.failed or doc is None or short else EXIT_OK


# --------------------------------------------------------------------------------- select
@main.command("select")
@click.argument("scores", type=click.Path(exists=True, path_type=Path))
@selection_options(require_k=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of this selection: selection.txt/.json, maps/, report.html [default: the "
    "folder of SCORES]. One holding a selection of other settings is refused without --force.",
)
@click.option("--force", is_flag=True, help="Replace a selection of other settings in --out.")
@click.option(
    "--maps/--no-maps",
    default=None,
    help="Draw the maps of the picks, running the model on them (--model or --url) "
    "[default: if --out had maps].",
)
@click.option(
    "--report",
    "html",
    is_flag=True,
    help="Write OUT/report.html (implies --maps unless --no-maps) [default: rewritten if "
    "--out had one].",
)
@engine_options
@click.pass_context
def select_command(
    ctx: click.Context,
    scores: Path,
    out: Path | None,
    urls: tuple[str, ...],
    model: Path | None,
    **o: Any,
) -> None:
    """Re-select from SCORES (an out dir, its scores.jsonl or its scores.parquet) without
    re-scoring.

    Exits 3 when fewer than --top-k images could be selected (the reason on stderr).
    """
    _one_engine(urls, model, o)
    ctx.exit(_interruptible(lambda: _select(scores, out, urls, model, o), "nothing changed"))


def _select(
    scores: Path, out: Path | None, urls: tuple[str, ...], model: Path | None, o: dict[str, Any]
) -> int:
    from .report import REPORT_HTML
    from .run import check_replace, draw, run_selection
    from .store import MAPS, StoreError, load_table

    how = _select_settings(o)
    try:
        table = load_table(scores)
        out = out or table.out
        _check_class_weights(how, table.class_names)
        if not o["force"]:
            check_replace(out, table, how)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    html = o["html"] or (out / REPORT_HTML).is_file()
    maps = o["maps"] if o["maps"] is not None else html or (out / MAPS).is_dir()
    engine = _maps_engine(table, urls, model, o) if maps else None
    try:
        doc = run_selection(table, out, how)
        failed, page = draw(engine, table, out, doc, _score_settings(o), html)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    finally:
        if engine is not None:
            engine.close()
    _print_selection(doc, o["as_json"])
    for path, reason in failed.items():
        _stderr(f"warning: no map for {_display(path)}: {reason}")
    if page is not None:
        _stderr(f"report: {page}")
    return EXIT_FAILED_INPUTS if _short(doc) else EXIT_OK


def _maps_engine(table: Any, urls: tuple[str, ...], model: Path | None, o: dict) -> Any:
    """The engine that draws maps: it must serve the model that scored the table."""
    engine = _engine(urls, model, o)
    if engine.spec.model_id != table.meta["model"]:
        served = engine.spec.model_id
        engine.close()
        raise click.UsageError(
            f"the maps need the model that scored {table.out} ({table.meta['model']}), not "
            f"{served}: pass its --model or --url, or --no-maps"
        )
    return engine


# ---------------------------------------------------------------------------------- merge
@main.command()
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the merged scores and selection.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(SCORE_FORMATS),
    default=None,
    help="Scores in --out [default: the inputs' format when they agree, else jsonl].",
)
@selection_options(require_k=False)
def merge(inputs: tuple[Path, ...], out: Path, fmt: str | None, **o: Any) -> None:
    """Combine the out dirs of `score --shard` runs (JSONL or Parquet) into --out and select
    from them.

    --top-k and --strategy default to those of the inputs' selections when they all agree.
    """
    from .run import run_selection
    from .store import StoreError, load_table, merge_outputs, scores_format

    strategy, k = _merged_selection(inputs, o["strategy"], o["top_k"])
    if fmt is None:
        formats = {scores_format(i) for i in inputs}
        fmt = formats.pop() if len(formats) == 1 else "jsonl"
    try:
        merge_outputs(inputs, out, fmt)
        table = load_table(out)
        doc = run_selection(table, out, _select_settings(o, strategy, k))
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    _print_selection(doc, o["as_json"])
    _stderr(
        f"deal-client: merged {len(inputs)} outputs, {len(table)} images scored, "
        f"{len(table.errors)} failed; top {doc['selected']} in {out / 'selection.txt'}"
    )
    _list_failures(table.errors)
    sys.exit(EXIT_FAILED_INPUTS if table.errors or _short(doc) else EXIT_OK)


def _merged_selection(inputs: tuple[Path, ...], strategy: str | None, k: int | None) -> tuple:
    """--strategy/--top-k, or those of the inputs' selection.json files if they all agree."""
    if strategy is not None and k is not None:
        return strategy, k
    seen = set()
    for folder in inputs:
        try:
            doc = json.loads((folder / "selection.json").read_text())
            seen.add((doc["strategy"], doc["k"]))
        except (OSError, ValueError, KeyError):
            seen.add(None)
    if len(seen) != 1 or None in seen:
        raise click.UsageError("give --top-k (and --strategy): the inputs' selections differ")
    ((old_strategy, old_k),) = seen
    return strategy or old_strategy, k or old_k


# --------------------------------------------------------------------------------- report
@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(out: Path) -> None:
    """Write OUT/report.html: the selection in OUT (of `score` or `select --out`) for a person.

    One page, no network: the run's summary, the picks ranked with their maps and scores,
    score histograms and class balance of the pool and the picks, the near-duplicates that
    --diverse skipped. The maps come from `--maps` (or `--report`) of score and select.
    """
    from .report import write_report
    from .store import MAPS, StoreError, load_table, read_selection

    doc = read_selection(out)
    if doc is None:
        raise click.ClickException(f"{out} holds no selection.json: run `deal-client score` first")
    try:
        page = write_report(out, load_table(Path(doc.get("scores") or out)), doc)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    if doc["rows"] and not (out / MAPS).is_dir():
        _stderr(f"no maps in {out}: `deal-client select SCORES --out {out} --report` draws them")
    click.echo(page)


# --------------------------------------------------------------------------------- export
def _path_map(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from .export import PathMap

    try:
        return PathMap.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("export")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["labelstudio", "cvat", "fiftyone", "csv"]),
    required=True,
    help="The labelling tool's import format.",
)
@click.option(
    "--path-map",
    multiple=True,
    callback=_path_map,
    metavar="LOCAL=REMOTE",
    help="Where the tool finds the images: paths under LOCAL are rewritten under REMOTE, e.g. "
    "/data/pool=s3://bucket/pool (repeatable; every selected path must match one).",
)
@click.option(
    "--predictions",
    is_flag=True,
    help="Add the predicted segmentation as pre-annotations (labelstudio, fiftyone; needs the "
    "maps of --maps).",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the files [default: OUT/export/FORMAT].",
)
def export_command(
    out: Path, fmt: str, path_map: Any, predictions: bool, dest: Path | None
) -> None:
    """Hand the selection in OUT to a labelling tool: Label Studio tasks, a CVAT manifest, a
    FiftyOne dataset, or CSV, each with the scores and class shares of every pick."""
    from .export import check_format, export_selection
    from .store import StoreError

    try:
        check_format(fmt, predictions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--predictions") from None
    dest = dest or out / "export" / fmt
    try:
        written = export_selection(out, fmt, dest, path_map, predictions)
    except (ValueError, StoreError) as exc:  # ExportError, or metadata without the classes
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, dest)) from None
    for path in written:
        click.echo(path)


# ----------------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("pool")
@click.option(
    "--labels",
    "-l",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="The masks of POOL's images (uint8 class ids, PNG mode L or P): a folder matched by "
    "file stem (searched recursively), or a CamVid-layout root (test/x.png <-> "
    "testannot/x.png).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deal-eval"),
    show_default=True,
    help="Output folder: eval.json and risk_coverage.png.",
)
@engine_options
@click.option(
    "--ignore",
    type=click.IntRange(0, 255),
    multiple=True,
    metavar="V",
    help="A label value not evaluated, beside 255 and C, the number of classes (CamVid's void "
    "11) (repeatable).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random baseline.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print eval.json's summary instead of the table."
)
@click.pass_context
def eval_command(
    ctx: click.Context,
    pool: str,
    labels: str,
    urls: tuple[str, ...],
    model: Path | None,
    **o: Any,
) -> None:
    """Compare the selection strategies on labelled frames of POOL: how well each image score
    (and a random baseline, and the oracle: the true error rate) finds the images the model
    gets most wrong.

    Prints a table (strategies by Spearman with the error rate; the best per column marked);
    writes eval.json (metrics, per-image rows, errors) and risk_coverage.png into --out.
    """
    _one_engine(urls, model, o)
    ctx.exit(_interruptible(lambda: _eval(pool, labels, urls, model, o), "nothing written"))


def _eval(pool: str, labels: str, urls: tuple[str, ...], model: Path | None, o: dict) -> int:
    from .engines import EngineError
    from .evaluation import EvalSettings, check_label_classes, evaluate_pool, format_table

    out: Path = o["out"]
    paths = _pool_paths(pool, (0, 1))
    index = _label_index(labels)
    engine = _engine(urls, model, o)
    try:
        check_label_classes(labels, engine.spec)
    except ValueError as exc:
        engine.close()
        raise click.BadParameter(str(exc), param_hint="--labels") from None
    try:
        _stderr(
            f"deal-client eval: {len(paths)} images, {len(index)} masks, model "
            f"{engine.spec.model_id} via {engine.describe()}, out {out}"
        )
        how = EvalSettings(o["ignore"], o["seed"])
        run = evaluate_pool(paths, index, engine, out, _score_settings(o), how, pool)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    finally:
        engine.close()
    _list_failures(run.failed)
    summary = run.doc["summary"]
    click.echo(json.dumps(summary, indent=1) if o["as_json"] else format_table(summary))
    counts = summary["counts"]
    _stderr(
        f"deal-client eval: {counts['images']} images: {counts['evaluated']} evaluated, "
        f"{counts['failed']} failed, {run.report.seconds:.1f} s; eval.json and "
        f"risk_coverage.png in {out}"
    )
    return EXIT_FAILED_INPUTS if run.failed else EXIT_OK


def _label_index(labels: str) -> Any:
    from dealseg.core.labels import LabelIndex

    try:
        index = LabelIndex(labels)
    except OSError as exc:
        why = exc.strerror or exc
        raise click.BadParameter(f"cannot list {labels}: {why}", param_hint="--labels") from None
    if not len(index):
        raise click.BadParameter(f"{labels} holds no mask PNGs", param_hint="--labels")
    return index


# --------------------------------------------------------------------------------- health
@main.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    required=True,
    envvar="DEAL_URL",
    show_envvar=True,
    metavar="HOST:PORT",
    help="Triton server(s) to check.",
)
@triton_options
def health(urls: tuple[str, ...], **o: Any) -> None:
    """Check that Triton server(s) are ready and serve a model matching the contract."""
    from .engines import EngineError

    try:
        engine = _triton(urls, o)
    except EngineError as exc:
        click.echo(json.dumps({"ready": False, "urls": list(urls), "error": str(exc)}))
        raise click.ClickException(str(exc)) from None
    spec = engine.spec
    engine.close()
    click.echo(
        json.dumps(
            {
                "ready": True,
                "urls": list(urls),
                "protocol": o["protocol"],
                "model": spec.model_id,
                "model_name": spec.model_name,
                "model_version": spec.model_version,
                "input_size": list(spec.input_size),
                "classes": list(spec.class_names),
            }
        )
    )
