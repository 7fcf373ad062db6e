"""`deal-client`: score an image pool with the DEAL model and select what to label next.

Commands are thin: their options (`options`) become typed settings (`settings`), and each calls
one function of the library (`pipeline`, `evaluation`, `handoff`, `report`) and prints. Heavy
modules (numpy, Pillow, onnxruntime, tritonclient, tqdm) are imported inside the commands
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .options import (
    RESIZE_MODES,
    SCORE_FORMATS,
    OutDir,
    checked,
    engine_options,
    engine_settings,
    log_options,
    path_map_callback,
    ray_options,
    ray_settings,
    score_settings,
    select_settings,
    selection_options,
    shard_callback,
    triton_options,
    triton_settings,
)

if TYPE_CHECKING:
    from .evaluation import EvalSettings
    from .fleet import RaySettings
    from .objects import Location
    from .settings import EngineSettings, ScoreSettings, SelectSettings

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_FAILED_INPUTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _check_class_weights(how: SelectSettings, names: Sequence[str]) -> None:
    """--class-weight names classes of the model (a usage error otherwise)."""
    from .selection import balance_weights

    if how.balance:
        try:
            balance_weights(names, how.balance)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--class-weight") from None


def _stderr(message: str) -> None:
    click.echo(message, err=True)


# Control characters as escapes on the terminal: a name must not move the cursor or split a line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def _display(path: str) -> str:
    """A path printable on any terminal: bytes that are not UTF-8 and control characters shown
    as escapes (\\xNN, \\n)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_ESCAPES)


def _open_triton(engines: EngineSettings) -> Any:
    """The Triton engine of --url; a --url that names no usable endpoint is a usage error."""
    from .engines import EndpointError

    try:
        return engines.open()
    except EndpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None


def _print_selection(doc: dict[str, Any], as_json: bool) -> None:
    from dealseg.core.strategies import DESCRIPTORS

    from .records import record_path

    if as_json:
        click.echo(json.dumps(doc, indent=1, ensure_ascii=True))
        return
    click.echo(f"{'rank':>4}  {'score':>10}  path  [{doc['strategy']}, top {doc['k']}]")
    for r in doc["rows"]:
        score = "nan" if r["score"] is None else f"{r['score']:.6f}"
        click.echo(f"{r['rank']:>4}  {score:>10}  {_display(record_path(r))}")
    meaning = DESCRIPTORS[doc["strategy"]].meaning
    click.echo(f"score: {meaning}; higher = more worth labelling")


def _short(doc: dict[str, Any]) -> bool:
    """Whether fewer than k were selected; if so, say how many and why on stderr (else how
    many off-domain images the selection left out, when it left any)."""
    if doc["selected"] >= doc["k"]:
        off = doc.get("off_domain") or {}
        if off.get("excluded"):
            _stderr(
                f"left out {off['excluded']} off-domain images (novelty above "
                f"{off['threshold']:g}; {off['pool']} in the pool): --keep-novel or "
                "--max-novel-share picks them"
            )
        return False
    why = "; ".join(doc.get("shortfall") or []) or "the pool is smaller"
    _stderr(f"selected {doc['selected']} of the {doc['k']} asked: {why}")
    return True


def _unreadable(doc: dict[str, Any]) -> bool:
    """Whether the selection was made without the scores of unreadable Parquet parts; if so,
    name them on stderr."""
    parts = doc.get("unreadable_parts") or []
    if parts:
        _stderr(
            f"selected from part of the pool: {len(parts)} Parquet part"
            f"{'s' if len(parts) > 1 else ''} unreadable, skipped ({', '.join(parts)}); "
            "score the pool into this out dir again to score their images again"
        )
    return bool(parts)


def _list_failures(failed: dict[str, str]) -> None:
    for path, reason in failed.items():
        _stderr(f"failed: {_display(path)}: {reason}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dealseg")
def main() -> None:
    """Score an image pool with the DEAL model and pick the images most worth labelling."""


# ---------------------------------------------------------------------------------- score
@main.command()
@click.argument("pool")
@selection_options(require_k=True)
@click.option(
    "--out",
    "-o",
    type=OutDir(),
    default=Path("deal-out"),
    show_default=True,
    envvar="DEAL_OUT",
    show_envvar=True,
    help="Output folder, or an s3:// or gs:// prefix (Parquet scores and the selection written "
    "there, no maps or report); re-running on it resumes. One holding a selection of other "
    "settings is refused without --force.",
)
@click.option("--force", is_flag=True, help="Replace a selection of other settings in --out.")
@engine_options
@click.option(
    "--shard",
    callback=shard_callback,
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
    "--region-size",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    metavar="N",
    help="--regions: the frame is cut into N x N pixel cells at the model's input size.",
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
@log_options
@ray_options
@click.pass_context
def score(
    ctx: click.Context, pool: str, urls: tuple[str, ...], model: Path | None, **o: Any
) -> None:
    """Score every image of POOL and select the --top-k most worth labelling.

    POOL is a folder (searched recursively), a text file of image paths or URIs, - (paths on
    stdin), or an s3:// or gs:// prefix (credentials from the AWS_* / GOOGLE_* variables).
    A drive log in it (a video, an MCAP file or ROS 2 bag with --topic, a Parquet table with
    --image-column) is scored frame by frame, as --every or --fps sample it.
    Outputs in --out: scores.jsonl (one record per input) and embeddings.f32, or scores.parquet/
    (--format parquet, --ray), selection.txt and selection.json. Without --url the model runs
    in-process with ONNX Runtime; with --ray, on a Ray cluster.
    """
    from .objects import ObjectPath

    engines = engine_settings(urls, model, o)
    if o["ray_address"] is not None:
        if o["fmt"] == "jsonl":
            raise click.UsageError("--ray writes Parquet: drop --format jsonl")
        o["fmt"] = "parquet"
    if isinstance(o["out"], ObjectPath):
        if o["fmt"] == "jsonl":
            raise click.UsageError(
                f"--out {o['out']} is in object storage, which takes whole objects, not "
                "appended lines: scores there are Parquet; drop --format jsonl"
            )
        o["fmt"] = "parquet"
    run = ScoreCommand(
        pool,
        o["out"],
        o["shard"],
        engines,
        score_settings(o),
        select_settings(o),
        ray_settings(o),
        o["maps"],
        o["html"],
        o["force"],
    )
    after = f"results so far are in {run.out}; run again to resume"
    ctx.exit(_interruptible(lambda: _score(run, o["as_json"]), after))


def _interruptible(run: Callable[[], int], after: str) -> int:
    """run()'s exit code; Ctrl-C or SIGTERM: a line saying what is left (`after`), 130."""
    with _sigterm_interrupts() as signals:
        try:
            return run()
        except KeyboardInterrupt as exc:
            # a library waiting in native code (Ray) may raise a KeyboardInterrupt of its own
            cause = exc.args[0] if exc.args else (signals[-1] if signals else "")
            how = f" ({cause})" if cause else ""
            _stderr(f"interrupted{how}: {after}")
            return EXIT_INTERRUPTED


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[str]]:
    """SIGTERM stops a run as Ctrl-C does: files left valid, a message, exit 130. Yields the
    list of the signals so taken."""
    signals: list[str] = []

    def interrupt(signum: int, frame: Any) -> None:
        signals.append("SIGTERM")
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield signals  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield signals
    finally:
        signal.signal(signal.SIGTERM, previous)


def _engine(engines: EngineSettings, batch_size: int) -> Any:
    """The engine of --url or --model, --batch-size checked against the server's limit."""
    from .engines import EngineError

    try:
        engine = _open_triton(engines) if engines.urls else engines.open()
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    limit = engine.max_batch_size
    if limit and batch_size > limit:
        engine.close()
        raise click.BadParameter(
            f"{batch_size} is more than the server's max_batch_size {limit}; "
            f"use --batch-size {limit} or less",
            param_hint="--batch-size",
        )
    return engine


@dataclass(frozen=True)
class ScoreCommand:
    """What `score` was asked, as typed settings."""

    pool: str
    out: Location
    shard: tuple[int, int]
    engines: EngineSettings
    streaming: ScoreSettings
    how: SelectSettings
    ray: RaySettings | None  # None without --ray
    maps: bool
    html: bool
    force: bool  # replace a selection of other settings


def _score(run: ScoreCommand, as_json: bool) -> int:
    from dealseg.core.contract import REGION_MAPS
    from dealseg.core.strategies import DESCRIPTORS

    from .engines import EngineError
    from .fleet import RayUnavailable
    from .pipeline import score_pool
    from .records import StoreError
    from .regions import scored_without_class

    out = run.out
    paths = _pool_paths(run.pool, run.shard, run.streaming)
    engine = _engine(run.engines, run.streaming.batch_size)
    if run.streaming.resize == "letterbox" and not engine.spec.takes_valid_box:
        engine.close()
        raise click.BadParameter(
            f"model {engine.spec.model_id} uses contract {engine.spec.contract_version}: it "
            "cannot leave letterbox padding out of its scores; re-export it with `deal-export "
            "onnx`, or use --resize stretch or crop",
            param_hint="--resize",
        )
    wanted = DESCRIPTORS[run.how.strategy].region_map if run.streaming.regions else None
    if wanted is not None and REGION_MAPS[wanted] not in engine.spec.output_names:
        engine.close()
        raise click.BadParameter(
            f"{run.how.strategy} reads each region's mean {wanted}, and model "
            f"{engine.spec.model_id} (contract {engine.spec.contract_version}) serves no "
            f"{wanted} map; re-export it with `deal-export reexport`, or use region-ds-sample",
            param_hint="--strategy",
        )
    needs = DESCRIPTORS[run.how.strategy].needs if run.streaming.regions else frozenset()
    if "classes" in needs and scored_without_class(out):
        engine.close()
        raise click.BadParameter(
            f"{run.how.strategy} reads the class predicted on each region, and {out} holds "
            "scores written before cells carried it: score into a fresh --out, or use "
            "region-ds-sample",
            param_hint="--strategy",
        )
    scoring = _ray_scoring(run.engines, engine, run.ray)
    try:
        where = ""
        if run.ray is not None:
            how = run.ray
            actors = (
                f"{how.actors} actors" if how.actors else f"an actor per {how.cpus_per_actor:g} CPU"
            )
            where = f" on Ray ({how.address or 'local'}, {actors})"
        _stderr(
            f"deal-client: {len(paths)} images, model {engine.spec.model_id} via "
            f"{engine.describe()}{where}, out {out}"
        )
        _check_class_weights(run.how, engine.spec.class_names)
        result = score_pool(
            paths, engine, out, run.streaming, run.how, run.maps, run.html, scoring, run.force
        )
    except (StoreError, RayUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except EngineError as exc:
        raise click.ClickException(f"{exc}{_resume_hint(out)}") from None
    except OSError as exc:
        raise click.ClickException(f"{_os_error(exc, out)}{_resume_hint(out)}") from None
    finally:
        engine.close()
    return _report(result, out, as_json)


def _ray_scoring(engines: EngineSettings, engine: Any, ray: RaySettings | None) -> Any:
    """`score_pool`'s scorer for --ray (None without it): each actor builds the engine of
    --url, or opens --model in ONNX Runtime with --cpus-per-actor threads."""
    if ray is None:
        return None
    import functools
    import math

    from .engines import EmbeddedEngine
    from .fleet import RayScoring, RayUnavailable, import_ray

    try:
        import_ray()  # before anything is written
    except RayUnavailable as exc:
        engine.close()
        raise click.ClickException(str(exc)) from None
    threads = max(1, math.ceil(ray.cpus_per_actor))
    make = (
        engines.triton_factory()
        if engines.urls
        else functools.partial(EmbeddedEngine, str(engine.path), threads)
    )
    return RayScoring(make, ray)


def _pool_paths(
    pool: str, shard: tuple[int, int], settings: ScoreSettings | None = None
) -> list[str]:
    from dealseg.core.pool import PoolError

    from .remote import AccessDenied
    from .scoring import list_paths, no_images

    try:
        paths = list_paths(pool, shard, settings)
    except PoolError as exc:
        raise click.BadParameter(str(exc), param_hint="POOL") from None
    except AccessDenied as exc:
        raise click.ClickException(str(exc)) from None
    if not paths:
        raise click.ClickException(no_images(pool, shard))
    return paths


def _resume_hint(out: Location) -> str:
    """The second line of a failed scoring run: where its results are, when it wrote any."""
    from .outdir import META
    from .records import StoreError

    try:
        if not (out / META).is_file():
            return ""
    except StoreError:  # the store is out of reach now: nothing to say
        return ""
    return f"\nresults so far are in {out}; run the same command again to resume"


def _os_error(exc: OSError, out: Location) -> str:
    """One line for a file the run could not write (a full disk, a read-only folder, a link
    that leads nowhere)."""
    where = exc.filename or out
    if isinstance(where, str | os.PathLike) and os.path.islink(where) and not os.path.exists(where):
        return f"cannot write {where}: a symbolic link that leads nowhere (a loop, or no target)"
    return f"cannot write {where}: {exc.strerror or exc}"


def _report(run: Any, out: Location, as_json: bool) -> int:
    """Failures, the selection and the summary line; the exit code."""
    report, doc = run.report, run.selection
    _list_failures(report.failed)
    for path, reason in run.map_failures.items():
        _stderr(f"warning: no map for {_display(path)}: {reason}")
    if doc is None:
        _stderr(f"no selection: {run.no_selection}")
    else:
        _print_selection(doc, as_json)
    short = doc is not None and (_short(doc) | _unreadable(doc))
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
@click.argument("scores", type=OutDir(exists=True, file_okay=True))
@selection_options(require_k=True)
@click.option(
    "--out",
    "-o",
    type=OutDir(),
    default=None,
    help="Folder of this selection: selection.txt/.json, maps/, report.html [default: the "
    "folder of SCORES]; an s3:// or gs:// prefix holds the selection only. One holding a "
    "selection of other settings is refused without --force.",
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
    scores: Location,
    out: Location | None,
    urls: tuple[str, ...],
    model: Path | None,
    **o: Any,
) -> None:
    """Re-select from SCORES (an out dir, its scores.jsonl or its scores.parquet; or an out dir
    in object storage, s3:// or gs://) without re-scoring.

    Exits 3 when fewer than --top-k images could be selected (the reason on stderr).
    """
    run = SelectCommand(
        scores,
        out,
        engine_settings(urls, model, o),
        score_settings(o),
        select_settings(o),
        o["force"],
        o["maps"],
        o["html"],
    )
    ctx.exit(_interruptible(lambda: _select(run, o["as_json"]), "nothing changed"))


@dataclass(frozen=True)
class SelectCommand:
    """What `select` was asked, as typed settings."""

    scores: Location
    out: Location | None  # default: the folder of the scores
    engines: EngineSettings  # draws the maps
    streaming: ScoreSettings  # how the maps' images stream
    how: SelectSettings
    force: bool
    maps: bool | None  # None: if the folder had maps
    html: bool


def _select(run: SelectCommand, as_json: bool) -> int:
    from .pipeline import reselect
    from .records import StoreError
    from .selection import ClassWeightError

    def painter(table: Any) -> Any:
        return _maps_engine(table, run.engines, run.streaming.batch_size)

    where = run.out or run.scores
    try:
        done = reselect(
            run.scores,
            run.out,
            run.how,
            run.streaming,
            force=run.force,
            maps=run.maps,
            html=run.html,
            painter=painter,
        )
    except ClassWeightError as exc:
        raise click.BadParameter(str(exc), param_hint="--class-weight") from None
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, where)) from None
    _print_selection(done.selection, as_json)
    for path, reason in done.map_failures.items():
        _stderr(f"warning: no map for {_display(path)}: {reason}")
    if done.html is not None:
        _stderr(f"report: {done.html}")
    short = _short(done.selection) | _unreadable(done.selection)
    return EXIT_FAILED_INPUTS if short else EXIT_OK


def _maps_engine(table: Any, engines: EngineSettings, batch_size: int) -> Any:
    """The engine that draws maps: it must serve the model that scored the table."""
    engine = _engine(engines, batch_size)
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
    "inputs",
    nargs=-1,
    required=True,
    type=OutDir(
        exists=True,
        refuse="merge reads local out dirs (shards); a Ray run into one prefix needs no merge, "
        "and `deal-client select {uri}` selects from it",
    ),
)
@click.option(
    "--out",
    "-o",
    type=OutDir(refuse="merge writes a local out dir; score --ray into one prefix needs no merge"),
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
    from .pipeline import inherited_selection, merge_and_select
    from .records import StoreError

    strategy, k = o["strategy"], o["top_k"]
    if o["budget"] is None:
        try:
            strategy, k = inherited_selection(inputs, strategy, k)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    how = select_settings(o, strategy, k)
    try:
        table, doc = merge_and_select(inputs, out, fmt, how)
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


# --------------------------------------------------------------------------------- report
@main.command("report")
@click.argument(
    "out",
    type=OutDir(
        exists=True,
        refuse="a report is a local page: `deal-client select {uri} --out DIR --report` "
        "writes one into a local DIR",
    ),
)
def report_command(out: Path) -> None:
    """Write OUT/report.html: the selection in OUT (of `score` or `select --out`) for a person.

    One page, no network: the run's summary, the picks ranked with their maps and scores,
    score histograms and class balance of the pool and the picks, the near-duplicates that
    --diverse skipped. The maps come from `--maps` (or `--report`) of score and select.
    """
    from .outdir import MAPS, load_table, out_lock, read_selection
    from .records import StoreError
    from .report import write_report

    try:
        with out_lock(out):
            doc = read_selection(out)
            if doc is None:
                raise StoreError(f"{out} holds no selection.json: run `deal-client score` first")
            page = write_report(out, load_table(doc.get("scores") or out), doc)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    if doc["rows"] and not (out / MAPS).is_dir():
        _stderr(f"no maps in {out}: `deal-client select SCORES --out {out} --report` draws them")
    click.echo(page)


# --------------------------------------------------------------------------------- export
@main.command("export")
@click.argument(
    "out",
    type=OutDir(
        exists=True,
        refuse="exports are local files: `deal-client select {uri} --out DIR`, then "
        "`deal-client export DIR`",
    ),
)
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
    callback=path_map_callback,
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
    type=OutDir(refuse="exports are local files: give a local folder"),
    default=None,
    help="Folder for the files [default: OUT/export/FORMAT].",
)
def export_command(
    out: Path, fmt: str, path_map: Any, predictions: bool, dest: Path | None
) -> None:
    """Hand the selection in OUT to a labelling tool: Label Studio tasks, a CVAT manifest, a
    FiftyOne dataset, or CSV, each with the scores and class shares of every pick."""
    from .handoff import check_format, export_selection
    from .outdir import EXPORTS, out_lock
    from .records import StoreError

    try:
        check_format(fmt, predictions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--predictions") from None
    dest = dest or out / EXPORTS / fmt
    try:
        with out_lock(out):  # the selection must not change while it is handed off
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
    type=OutDir(refuse="eval writes local files (eval.json, risk_coverage.png): give a folder"),
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
    from .evaluation import EvalSettings

    engines = engine_settings(urls, model, o)
    streaming = score_settings(o)
    how = EvalSettings(o["ignore"], o["seed"])
    out, as_json = o["out"], o["as_json"]
    ctx.exit(
        _interruptible(
            lambda: _eval(pool, labels, out, engines, streaming, how, as_json), "nothing written"
        )
    )


def _eval(
    pool: str,
    labels: str,
    out: Path,
    engines: EngineSettings,
    streaming: ScoreSettings,
    how: EvalSettings,
    as_json: bool,
) -> int:
    from .engines import EngineError
    from .evaluation import check_label_classes, evaluate_pool, format_table

    paths = _pool_paths(pool, (0, 1))
    index = _label_index(labels)
    engine = _engine(engines, streaming.batch_size)
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
        run = evaluate_pool(paths, index, engine, out, streaming, how, pool)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_error(exc, out)) from None
    finally:
        engine.close()
    _list_failures(run.failed)
    summary = run.doc["summary"]
    click.echo(json.dumps(summary, indent=1) if as_json else format_table(summary))
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
        from .settings import EngineSettings

        triton = triton_settings(o)
        engine = _open_triton(checked(lambda: EngineSettings(None, urls, triton)))
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
                "protocol": triton.protocol,
                "model": spec.model_id,
                "model_name": spec.model_name,
                "model_version": spec.model_version,
                "input_size": list(spec.input_size),
                "classes": list(spec.class_names),
            }
        )
    )
