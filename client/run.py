"""The streaming scorer and the selection step behind `deal-client score / select / merge`.

    paths ─► decode threads (--workers) ─► batches (--batch-size) ─► engine (--concurrency in
    flight) ─► scores.jsonl + embeddings.f32, appended as each batch returns ─► selection

Only the main thread writes files. In memory at any time: a window of decoded images and the
batches in flight, never the pool's outputs. A file that fails to decode costs one error record;
an engine failure (after its retries) stops the run with every finished batch on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dealseg.core.contract import SCORE_OUTPUTS, degenerate_scores
from dealseg.core.decode import (
    ASPECT_TOLERANCE,
    DEFAULT_MAX_PIXELS,
    DecodeError,
    Frame,
    aspect_mismatch,
)
from dealseg.core.pool import is_uri, read_pool, take_shard
from dealseg.core.ranking import DEFAULT_STRATEGY, Options, Pool, Selection, choose, groups_of

from .engines import Engine, EngineError
from .store import (
    MAPS,
    SELECTION_JSON,
    ScoreWriter,
    StoreError,
    Table,
    load_table,
    read_selection,
    record_path,
    write_selection,
)


@dataclass(frozen=True)
class ScoreSettings:
    """How `score_paths` streams (the CLI's --batch-size, --concurrency, ... options)."""

    batch_size: int = 8  # images per inference request
    concurrency: int = 2  # inference requests in flight
    workers: int = 4  # decode threads
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard, width x height
    progress: bool = True  # tqdm bar on stderr
    resize: str = "stretch"  # how a picture becomes the model's frame: stretch|letterbox|crop
    format: str = "jsonl"  # the out dir's scores: jsonl (streamed line by line) | parquet


@dataclass
class ScoreReport:
    """What a scoring run did. `failed` holds every pool path whose record is an error."""

    total: int  # paths in the pool (this shard)
    resumed: int  # already scored OK in the out dir, skipped
    scored: int = 0  # scored OK now
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def list_paths(source: str, shard: tuple[int, int] = (0, 1)) -> list[str]:
    """POOL -> absolute image paths (resume and merge must not depend on the cwd) and URIs as
    they are, sharded. A pool in object storage is listed by `remote.list_uri`, and the store
    must accept our credentials for its first object (`remote.AccessDenied` otherwise)."""
    if is_uri(source):
        from .remote import list_uri

        listed = list_uri(source)
    else:
        listed = read_pool(source)
    return take_shard(pool_paths(listed), *shard)


def pool_paths(listed: Iterable[str]) -> list[str]:
    """Pool entries -> absolute paths and URIs as they are, each once, in order; the object
    store must accept our credentials for the first URI (`remote.AccessDenied` otherwise)."""
    paths = list(dict.fromkeys(p if is_uri(p) else os.path.abspath(p) for p in listed))
    if any(is_uri(p) for p in paths):
        from .remote import check_access

        check_access(paths)
    return paths


Load = Callable[[str], Frame]  # path -> the model input, or DecodeError


class Sink(Protocol):
    """Where a `Scorer` puts its results: the out dir's `ScoreWriter`, or eval's `Evaluator`."""

    @property
    def done(self) -> set[str]: ...  # paths already scored: skipped

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None: ...

    def append_error(self, path: str, reason: str) -> None: ...


def load_frame(path: str, size: tuple[int, int], settings: ScoreSettings) -> Frame:
    """A pool path as the model's frame, as `settings` say (--resize, --max-pixels): the one
    decode step of the streaming scorer and the Ray path's decode tasks. URIs are read from
    object storage (`remote.decode_any`)."""
    from .remote import decode_any

    return decode_any(path, size, settings.max_pixels, settings.resize)


def decode_or_error(load: Load, path: str) -> Frame | DecodeError:
    """`load(path)`, or the DecodeError that becomes the path's error record."""
    try:
        return load(path)
    except DecodeError as exc:
        return exc
    except Exception as exc:  # a decoder bug must cost one record, never the run
        return DecodeError(f"cannot decode: {type(exc).__name__}: {exc}")


def _infer(
    engine: Engine, paths: list[str], frames: Sequence[Frame], outputs: Sequence[str]
) -> tuple[list[str], dict]:
    images = np.stack([f.image for f in frames])  # [B, H, W, 3]
    boxes = np.array([f.box for f in frames], dtype=np.int32)  # [B, 4]
    try:
        out = engine.infer(images, outputs, boxes)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    bad = [n for n in outputs if len(out[n]) != len(paths)]
    if bad:
        raise EngineError(f"the engine returned {bad} for a different number of images")
    return paths, out


class Workers:
    """A fixed pool of daemon threads running submitted calls; `submit` returns a Future.

    Unlike ThreadPoolExecutor's threads, daemon threads never hold up the exit of an interrupted
    run: a decode stuck on a hung network file or a request waiting on a dead server is simply
    abandoned. They never write files (the main thread does), so nothing is lost with them.
    """

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._count = count
        for i in range(count):
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel the calls not yet started; the threads end after their current call."""
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job[0].cancel()
        for _ in range(self._count):
            self._jobs.put(None)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
        smoothing=0.1,
        desc="scoring",
    )


class Scorer:
    """One streaming pass: decode threads feed batches to the engine; results go to the sink.

    The main thread owns every file write; `pending` holds decode futures in pool order (a
    window of them, never the whole pool), `batch` the decoded frames of the next request and
    `in_flight` the requests the engine is running. The engine is asked for `outputs`; `load`
    (on the decode threads) turns a path into the model's input, by default `decode_frame` with
    the settings' `resize`. The first picture whose aspect ratio is off the model's by more
    than ASPECT_TOLERANCE gets a warning on stderr, once.
    """

    def __init__(
        self,
        engine: Engine,
        sink: Sink,
        settings: ScoreSettings,
        outputs: Sequence[str] = SCORE_OUTPUTS,
        load: Load | None = None,
    ) -> None:
        self.engine, self.sink, self.settings = engine, sink, settings
        self.outputs, self.load = tuple(outputs), load or self._decode_image
        self.size = engine.spec.input_size
        self.window = settings.batch_size * (settings.concurrency + 1) + 2 * settings.workers
        self.pending: deque[tuple[str, Future]] = deque()
        self.in_flight: set[Future] = set()
        self.batch: list[tuple[str, Frame]] = []
        self.warned_aspect = self.warned_degenerate = False

    def _decode_image(self, path: str) -> Frame:
        return load_frame(path, self.size, self.settings)

    def run(self, paths: Sequence[str]) -> ScoreReport:
        """Score every path not yet done by the sink (scored OK in the writer's out dir)."""
        done = self.sink.done
        todo = [p for p in paths if p not in done]
        self.report = ScoreReport(total=len(paths), resumed=len(paths) - len(todo))
        self.upcoming = iter(todo)
        self.bar = _progress(len(paths), self.report.resumed, self.settings.progress)
        self.decoding = Workers(self.settings.workers, "deal-decode")
        self.inferring = Workers(self.settings.concurrency, "deal-infer")
        start = time.perf_counter()
        try:
            self._stream()
        finally:
            self.decoding.shutdown()
            self.inferring.shutdown()
            # Requests already running end first (their results are dropped): a process that
            # exits during an ONNX Runtime run is aborted. A second Ctrl-C cuts this short.
            wait(self.in_flight)
            self.bar.close()
            self.report.seconds = time.perf_counter() - start
        return self.report

    def _stream(self) -> None:
        """Decode and submit in pool order; an engine failure stops decoding, but every batch
        the engine still finishes is written before the failure is raised."""
        error: EngineError | None = None
        try:
            self._refill()
            while self.pending:
                path, future = self.pending.popleft()
                result = future.result()
                self._refill()
                self._take(path, result)
                if self.in_flight:
                    self._collect(block=False)
            if self.batch:
                self._submit()
        except EngineError as exc:
            error = exc
            self.decoding.shutdown()
        while self.in_flight:
            try:
                self._collect(block=True)
            except EngineError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _refill(self) -> None:
        while len(self.pending) < self.window:
            path = next(self.upcoming, None)
            if path is None:
                return
            job = self.decoding.submit(decode_or_error, self.load, path)
            self.pending.append((path, job))

    def _take(self, path: str, result: Frame | DecodeError) -> None:
        """A decoded image joins the batch; a failed decode is written as its error record."""
        if isinstance(result, DecodeError):
            self.sink.append_error(path, result.reason)
            self.report.failed[path] = result.reason
            self.bar.update(1)
            self.bar.set_postfix_str(f"errors={len(self.report.failed)}", refresh=False)
            return
        if not self.warned_aspect and aspect_mismatch(result.shown, self.size) > ASPECT_TOLERANCE:
            self.warned_aspect = True
            warning = aspect_warning(path, result.shown, self.size, self.settings.resize)
            self.bar.write(warning, file=sys.stderr)
        self.batch.append((path, result))
        if len(self.batch) == self.settings.batch_size:
            self._submit()

    def _collect(self, block: bool) -> None:
        finished, _ = wait(
            self.in_flight, timeout=None if block else 0, return_when=FIRST_COMPLETED
        )
        for future in finished:
            self.in_flight.discard(future)
            done_paths, out = future.result()  # EngineError propagates: fatal
            self.sink.append_batch(done_paths, out)
            self.report.scored += len(done_paths)
            self.bar.update(len(done_paths))
            self._check_degenerate(out)

    def _check_degenerate(self, out: dict[str, np.ndarray]) -> None:
        """Warn once when a batch's scores are degenerate (constant, saturated, one class)."""
        found = (
            [] if self.warned_degenerate else degenerate_scores(out, self.engine.spec.class_names)
        )
        if found:
            self.warned_degenerate = True
            self.bar.write(degenerate_warning(found, self.engine.spec.model_id), file=sys.stderr)

    def _submit(self) -> None:
        while len(self.in_flight) >= self.settings.concurrency:
            self._collect(block=True)
        frames = [frame for _, frame in self.batch]
        paths = [p for p, _ in self.batch]
        job = self.inferring.submit(_infer, self.engine, paths, frames, self.outputs)
        self.in_flight.add(job)
        self.batch = []


_RESIZE_EFFECT = {
    "stretch": "stretches it out of shape (--resize letterbox keeps it, its padding in no score)",
    "letterbox": "pads it: the padding is left out of every score, but costs pixels",
    "crop": "cuts its edges off",
}


def degenerate_warning(found: Sequence[str], model_id: str) -> str:
    """The once-per-run warning about a batch of degenerate scores (`degenerate_scores`)."""
    return (
        f"warning: the scores of model {model_id} are degenerate over a batch: "
        f"{'; '.join(found)}: a model that ranks nothing (untrained, or its difficulty head "
        "broken); check it with `deal-client eval` (warned once)"
    )


def aspect_warning(path: str, shown: tuple[int, int], size: tuple[int, int], resize: str) -> str:
    """The once-per-run warning about a picture shaped unlike the model's frame."""
    return (
        f"warning: {path} is {shown[1]}x{shown[0]} (W x H, aspect {shown[1] / shown[0]:.2f}), the "
        f"model takes {size[1]}x{size[0]} ({size[1] / size[0]:.2f}): --resize {resize} "
        f"{_RESIZE_EFFECT[resize]} (warned once)"
    )


def score_paths(
    paths: Sequence[str], engine: Engine, writer: ScoreWriter, settings: ScoreSettings
) -> ScoreReport:
    """Score every path not yet scored OK in `writer`'s out dir; append records as they come."""
    return Scorer(engine, writer, settings).run(paths)


def score_into(
    paths: Sequence[str], engine: Engine, out: Path, settings: ScoreSettings
) -> tuple[ScoreReport, Table]:
    """Score `paths` into the out dir `out` (resuming it); the report and everything scored
    there as a table. The scoring step of the CLI and the API."""
    with open_writer(out, engine.spec, settings.format) as writer:
        report = Scorer(engine, writer, settings).run(paths)
    return report, load_table(out)


def open_writer(out: Path, spec: Any, fmt: str) -> ScoreWriter | Any:
    """The sink of a scoring run into the out dir `out`: scores.jsonl or scores.parquet."""
    if fmt == "parquet":
        from .columnar import ParquetWriter

        return ParquetWriter(out, spec)
    if fmt != "jsonl":
        raise ValueError(f"unknown scores format {fmt!r}; choose jsonl or parquet")
    return ScoreWriter(out, spec)


ScoreInto = Callable[[Sequence[str], Engine, Path, ScoreSettings], tuple[ScoreReport, Table]]


@dataclass(frozen=True)
class SelectSettings:
    """What `pick` selects (the CLI's --strategy, --top-k, --seed, ... options)."""

    strategy: str = DEFAULT_STRATEGY
    k: int = 100
    seed: int = 0
    diverse: float | None = None
    labeled: Path | None = None
    balance: dict[str, float] | None = None  # class name -> weight; {}: uniform; None: off
    per_group: int | None = None  # at most this many picks per group
    group_by: str | None = None  # regex whose match (first group) names a path's group

    def describe(self) -> dict[str, Any]:
        """The settings as selection.json records them."""
        return {
            "strategy": self.strategy,
            "k": self.k,
            "seed": self.seed,
            "diverse": self.diverse,
            "labeled": None if self.labeled is None else str(self.labeled),
            "balance": self.balance,
            "per_group": self.per_group,
            "group_by": self.group_by,
        }


@dataclass
class PoolRun:
    """What `score_pool` did: the scoring report, the selection (None, with the reason in
    `no_selection`, when nothing could be selected), the maps that could not be drawn and the
    report written (None if not asked)."""

    report: ScoreReport
    selection: dict[str, Any] | None
    no_selection: str = ""
    map_failures: dict[str, str] = field(default_factory=dict)
    html: Path | None = None


def score_pool(
    paths: Sequence[str],
    engine: Engine,
    out: Path,
    settings: ScoreSettings,
    select_settings: SelectSettings,
    maps: bool = False,
    report: bool = False,
    score_with: ScoreInto | None = None,
) -> PoolRun:
    """Score `paths` into the out dir `out` (resuming it), select from everything scored there,
    and optionally draw the maps of the selection and write the report (which implies maps).
    `score_with` scores (default `score_into`, this process; `fleet.RayScoring`: a Ray cluster).

    Raises StoreError (out dir unusable), EngineError (after its retries; every finished batch
    is on disk, a re-run resumes) and OSError (the out dir cannot be written).
    """
    scored, table = (score_with or score_into)(paths, engine, out, settings)
    run = PoolRun(scored, None)
    try:
        run.selection = run_selection(table, out, select_settings)
    except ValueError as exc:
        run.no_selection = str(exc)
        return run
    painter = engine if maps or report else None
    run.map_failures, run.html = draw(painter, table, out, run.selection, settings, report)
    return run


def draw(
    engine: Engine | None,
    table: Table,
    out: Path,
    selection: dict[str, Any],
    settings: ScoreSettings,
    report: bool,
) -> tuple[dict[str, str], Path | None]:
    """The maps of a selection (drawn by `engine`; without one, the stale maps are removed) and
    its report; returns the maps that could not be drawn and the report's path (None if not
    asked)."""
    from .maps import MapOf, clear_maps, write_maps

    failed: dict[str, str] = {}
    if engine is not None:
        picked = [MapOf(r["rank"], record_path(r), r) for r in selection["rows"]]
        failed = write_maps(
            engine, picked, out, settings.max_pixels, settings.batch_size, settings.resize
        )
    elif (Path(out) / MAPS).is_dir():
        clear_maps(out)
    if not report:
        return failed, None
    from .report import write_report

    return failed, write_report(out, table, selection)


# ----------------------------------------------------------------------------------- selection
def load_labeled(
    source: Path, table: Table, embeddings: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """`--labeled FILE` -> (centres [L, D] or None, exclude [N] bool).

    FILE is a .npy of embeddings [L, D]; a scores.jsonl (or out dir) of a run on the labelled
    images (their embeddings are the centres and their paths are never picked); or a text file of
    paths in the pool (never picked; their embeddings, rows of `embeddings` = the table's, are the
    centres). Without `embeddings` no centres are read.
    """
    source = Path(source)
    d = table.embedding_dim
    exclude = np.zeros(len(table), dtype=bool)
    if source.suffix == ".npy":
        centres = np.load(source, allow_pickle=False)
        if centres.ndim != 2 or centres.shape[1] != d:
            raise ValueError(f"{source}: expected embeddings [L, {d}], got {list(centres.shape)}")
        return centres.astype(np.float32), exclude
    if source.is_dir() or source.suffix in (".jsonl", ".parquet"):
        try:
            other = load_table(source)
        except StoreError as exc:
            raise ValueError(
                f"--labeled {source}: {exc}; give the out dir (or its scores file) of a "
                "`deal-client score` run on the labelled images, a text file of their paths, or a "
                ".npy of their embeddings [L, D]"
            ) from None
        if other.meta["model"] != table.meta["model"]:
            raise ValueError(f"{source} was scored by {other.meta['model']}, not this model")
        exclude = np.isin(np.asarray(table.paths, dtype=object), other.paths)
        return (other.embeddings() if embeddings is not None else None), exclude
    labeled = set(list_paths(str(source)))  # a list file, read exactly as a POOL
    exclude = np.fromiter((p in labeled for p in table.paths), dtype=bool, count=len(table))
    missing = len(labeled) - int(exclude.sum())
    if labeled and missing == len(labeled):
        raise ValueError(
            f"none of the {len(labeled)} labelled paths in {source} is in the scores (paths are "
            "compared absolute, relative ones to the list's folder)"
        )
    if missing:
        print(
            f"warning: {missing} labelled paths in {source} are not in the scores, ignored",
            file=sys.stderr,
        )
    centres = np.asarray(embeddings[exclude]) if embeddings is not None else None
    return centres, exclude


class SelectionExists(StoreError):
    """The folder holds the selection of another run, which `--force` would replace."""


def pool_of(table: Table, how: SelectSettings) -> Pool:
    """The table as a ranking pool, with what `how` needs: embeddings (core-set, --diverse,
    --labeled centres), class fractions (--balance) and groups (--per-group)."""
    needs_embeddings = how.strategy.endswith("coreset") or how.diverse is not None
    groups = None
    if how.per_group is not None:
        groups, unmatched = groups_of(table.paths, how.group_by)
        if unmatched:
            print(
                f"warning: --group-by {how.group_by!r} matches no part of {unmatched} of "
                f"{len(table)} paths; each of those is a group of its own",
                file=sys.stderr,
            )
    return Pool(
        table.paths,
        table.scores,
        table.embeddings() if needs_embeddings else None,
        table.fractions if how.balance is not None else None,
        groups,
    )


def balance_weights(names: Sequence[str], weights: dict[str, float]) -> np.ndarray:
    """[C] target weights: 1 for every class, or as `weights` (class name -> weight) says."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"no class {', '.join(map(repr, unknown))}; classes: {', '.join(names)}")
    return np.array([float(weights.get(name, 1.0)) for name in names])


def pick(table: Table, how: SelectSettings) -> tuple[Selection, Options]:
    """Select from a loaded table as `how` says: the one selection step of the CLI and the API.

    Raises ValueError for settings the table cannot serve (nothing scored, an unknown class)."""
    pool = pool_of(table, how)
    centres, exclude = (None, None)
    if how.labeled is not None:
        need_centres = how.strategy.endswith("coreset")
        centres, exclude = load_labeled(
            how.labeled, table, pool.embeddings if need_centres else None
        )
    weights = None if how.balance is None else balance_weights(table.class_names, how.balance)
    options = Options(
        seed=how.seed,
        labeled=centres,
        diverse=how.diverse,
        exclude=exclude,
        per_group=how.per_group,
        balance=weights,
    )
    return choose(pool, how.strategy, how.k, options), options


def check_replace(out: Path, table: Table, how: SelectSettings) -> None:
    """Refuse to replace a selection in `out` made with other settings or of other scores."""
    old = read_selection(out)
    if old is None:
        return
    mine = {**how.describe(), "scores": str(table.scores_file)}
    if old.get("settings") != json.loads(json.dumps(mine)):
        raise SelectionExists(
            f"{Path(out) / SELECTION_JSON} holds another selection ({old.get('strategy')}, top "
            f"{old.get('k')}, of {old.get('scores', 'other scores')}); write this one elsewhere "
            "with --out DIR, or replace it with --force"
        )


def run_selection(table: Table, out: Path, how: SelectSettings) -> dict[str, Any]:
    """Select from a loaded table and write selection.txt / selection.json into `out` (see
    `check_replace` to keep another run's selection)."""
    chosen, options = pick(table, how)
    return write_selection(out, table, chosen, how.describe(), chosen.shortfall(how.k, options))
