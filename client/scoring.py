"""The streaming scorer behind `deal-client score` and `eval`.

    paths ─► decode jobs (an image, or a run of a log's frames) on threads (--workers) ─►
    batches (--batch-size) ─► engine (--concurrency in flight) ─► the out dir's writer
    (scores.jsonl + embeddings.f32, or Parquet parts), appended as each batch returns

Only the main thread writes files. In memory at any time: a window of decoded images and the
batches in flight, never the pool's outputs. The frames of a drive log (`logs`) are decoded in
runs of `LOG_RUN`, in order, by one reader per log that goes on where its last run ended. A file
or a log's frame that fails to decode costs one error record;
an engine failure (after its retries) stops the run with every finished batch on disk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dealseg.core.contract import (
    REGION_MAPS,
    SCORE_OUTPUTS,
    SEGMENTATION,
    ModelSpec,
    degenerate_scores,
)
from dealseg.core.decode import (
    ASPECT_TOLERANCE,
    DecodeError,
    Frame,
    aspect_mismatch,
)
from dealseg.core.pool import is_log_name, is_uri, read_pool, take_shard
from dealseg.core.regions import frame_region_vectors, parse_regions

from .engines import Engine, EngineError
from .logs import LogFrames, expand_logs, frame_ref
from .objects import Location
from .outdir import load_table, open_writer
from .records import Table
from .settings import ScoreSettings


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


LOG_RUN = 16  # frames of one log a decode job reads in order


def list_paths(
    source: str, shard: tuple[int, int] = (0, 1), settings: ScoreSettings | None = None
) -> list[str]:
    """POOL -> absolute image paths (resume and merge must not depend on the cwd) and URIs as
    they are, sharded, each drive log replaced by its frames' addresses as `settings` sample
    them (`logs.expand_logs`; a log goes whole to one shard). A pool in object storage is
    listed by `remote.list_uri`, and the store must accept our credentials for its first object
    (`remote.AccessDenied` otherwise)."""
    if is_uri(source):
        from .remote import list_uri

        listed = list_uri(source)
    else:
        listed = read_pool(source)
    return expand_logs(take_shard(pool_paths(listed), *shard), settings or ScoreSettings())


def no_images(pool: str, shard: tuple[int, int] = (0, 1)) -> str:
    """What the CLI and the API say of a pool that lists no image."""
    from dealseg.core.pool import IMAGE_EXTENSIONS, LOG_EXTENSIONS

    names = " ".join(sorted(IMAGE_EXTENSIONS | LOG_EXTENSIONS))
    return f"POOL {pool} holds no images or logs ({names})" + (
        f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
    )


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
    """Where a `Scorer` puts its results: the out dir's writer (`outdir.open_writer`), or eval's
    `Evaluator`."""

    @property
    def done(self) -> set[str]: ...  # paths already scored: skipped

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None: ...

    def append_error(self, path: str, reason: str) -> None: ...


def load_frame(path: str, size: tuple[int, int], settings: ScoreSettings) -> Frame:
    """A pool path as the model's frame, as `settings` say (--resize, --max-pixels): the one
    decode step of the streaming scorer and the Ray path's actors. URIs are read from
    object storage (`logs.decode_any`)."""
    from .logs import decode_any

    return decode_any(path, size, settings.max_pixels, settings.resize)


def decode_or_error(load: Load, path: str) -> Frame | DecodeError:
    """`load(path)`, or the DecodeError that becomes the path's error record."""
    try:
        return load(path)
    except DecodeError as exc:
        return exc
    except Exception as exc:  # a decoder bug must cost one record, never the run
        return DecodeError(f"cannot decode: {type(exc).__name__}: {exc}")


def decode_runs(paths: Iterable[str], size: int) -> Iterator[tuple[list[str], str | None, bool]]:
    """Pool entries as decode jobs, in order: (run, log, last) for a run of up to `size`
    consecutive frames of one log (`last`: the log's frames stop after it), ([path], None, True)
    for anything else."""
    run: list[str] = []
    log: str | None = None
    for path in paths:
        ref = frame_ref(path)
        mine = ref.log if ref is not None else path if is_log_name(path) else None
        if run and (mine != log or len(run) == size):
            yield run, log, mine != log
            run = []
        if mine is None:
            yield [path], None, True
        else:
            run.append(path)
        log = mine
    if run:
        yield run, log, True


def read_log_run(logs: LogFrames, paths: Sequence[str]) -> list[Any]:
    """`logs.pictures(paths)`, a reader's bug costing each frame its error record."""
    try:
        return logs.pictures(paths)
    except Exception as exc:
        return [DecodeError(f"cannot decode: {type(exc).__name__}: {exc}")] * len(paths)


def infer_batch(
    engine: Engine,
    paths: list[str],
    frames: Sequence[Frame],
    outputs: Sequence[str],
    regions: str | None = None,
) -> tuple[list[str], dict]:
    """The engine's `outputs` (those its model has) for a batch of decoded frames; with `regions`
    (cell:N) also each frame's cells (`region_outputs`) from the region maps the model serves.
    Any engine failure is an EngineError."""
    images = np.stack([f.image for f in frames])  # [B, H, W, 3]
    boxes = np.array([f.box for f in frames], dtype=np.int32)  # [B, 4]
    served = engine.spec.output_names  # an older contract lacks some (novelty: unknown)
    maps = cell_outputs(engine.spec) if regions else ()
    asked = tuple(n for n in outputs if n in served) + tuple(m for m in maps if m not in outputs)
    try:
        out = engine.infer(images, asked, boxes)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    bad = [n for n in asked if len(out[n]) != len(paths)]
    if bad:
        raise EngineError(f"the engine returned {bad} for a different number of images")
    if regions:
        num_classes = len(engine.spec.class_names)
        out = {**out, **region_outputs(regions, out, boxes, images.shape[1:3], num_classes)}
        for name in maps:
            if name not in outputs:
                del out[name]
    return paths, out


def cell_outputs(spec: ModelSpec) -> tuple[str, ...]:
    """The outputs a frame's cells are read from that the model has: the region maps
    (`contract.REGION_MAPS`: the difficulty map, the entropy map from contract 3 on) and the
    predicted classes (`segmentation`, every contract)."""
    return tuple(o for o in (*REGION_MAPS.values(), SEGMENTATION) if o in spec.output_names)


def region_outputs(
    regions: str,
    out: dict[str, np.ndarray],
    boxes: np.ndarray,
    shape: tuple[int, int],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """`region_pixels` [B, R] (each cell's picture pixels); for each region map in `out`,
    `region_<score>` [B, R]: the map's mean over each cell (the served uint8 map / 255):
    `region_ds` of the difficulty map, `region_entropy` of the entropy map; and, from the
    segmentation, `region_class` [B, R]: the class predicted on most of each cell (-1: none)."""
    maps = {
        name: np.asarray(out[output], np.float32) / 255.0
        for name, output in REGION_MAPS.items()
        if output in out
    }
    seg = out.get(SEGMENTATION)
    pixels, means, classes = frame_region_vectors(
        parse_regions(regions),
        tuple(shape),
        maps,
        boxes,
        None if seg is None else (seg, num_classes),
    )
    extra = {} if classes is None else {"region_class": classes}
    return {"region_pixels": pixels, **{f"region_{n}": v for n, v in means.items()}, **extra}


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
                if job is not None and job[0].cancel():
                    job[0].set_running_or_notify_cancel()  # else wait() never sees it done
        for _ in range(self._count):
            self._jobs.put(None)


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
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
        self.pending: deque[tuple[list[str], Future]] = deque()
        self.waiting = 0  # paths in `pending`
        self.logs = LogFrames(self.size, settings)
        self.turns: dict[str, _Turns] = {}  # a log's runs are decoded in the order submitted
        self.stopping = False
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
        self.upcoming = decode_runs(todo, LOG_RUN)
        self.bar = progress_bar(len(paths), self.report.resumed, self.settings.progress)
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
            self._close_logs()
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
                paths, future = self.pending.popleft()
                self.waiting -= len(paths)
                results = future.result()
                self._refill()
                for path, result in zip(paths, results, strict=True):
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
        while self.waiting < self.window:
            run = next(self.upcoming, None)
            if run is None:
                return
            paths, log, last = run
            if log is None:
                job = self.decoding.submit(self._decode_one, paths[0])
            else:
                turn = self.turns.setdefault(log, _Turns()).take()
                job = self.decoding.submit(self._decode_run, paths, log, turn, last)
            self.pending.append((paths, job))
            self.waiting += len(paths)

    def _decode_one(self, path: str) -> list[Frame | DecodeError]:
        return [decode_or_error(self.load, path)]

    def _decode_run(
        self, paths: list[str], log: str, turn: int, last: bool
    ) -> list[Frame | DecodeError]:
        """A run of one log's frames: read after the runs of that log submitted before it,
        then made into the model's frames while the next run is read."""
        turns = self.turns[log]
        with turns.ready:
            turns.ready.wait_for(lambda: turns.now == turn or self.stopping)
            try:
                if self.stopping:
                    return [DecodeError("the run stopped")] * len(paths)
                pictures = read_log_run(self.logs, paths)
                if last:
                    self.logs.done_with(log)
            finally:
                turns.now += 1
                turns.ready.notify_all()
        return self.logs.frames(pictures)

    def _close_logs(self) -> None:
        """Close the logs no decode thread is reading; a thread still reading one (a hung
        file) keeps it, and is abandoned with it."""
        self.stopping = True
        for log, turns in self.turns.items():
            if turns.ready.acquire(blocking=False):
                try:
                    self.logs.done_with(log)
                    turns.ready.notify_all()
                finally:
                    turns.ready.release()

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
        job = self.inferring.submit(
            infer_batch, self.engine, paths, frames, self.outputs, self.settings.regions
        )
        self.in_flight.add(job)
        self.batch = []


class _Turns:
    """The order of one log's decode runs: `take` numbers them as submitted, `now` is the one
    whose turn it is, `ready` is signalled when it moves on."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.now = 0
        self.submitted = 0

    def take(self) -> int:
        self.submitted += 1
        return self.submitted - 1


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


def score_into(
    paths: Sequence[str], engine: Engine, out: Location, settings: ScoreSettings
) -> tuple[ScoreReport, Table]:
    """Score `paths` into the out dir `out` (resuming it; Parquet only in object storage); the
    report and everything scored there as a table. The scoring step of the CLI and the API."""
    with open_writer(out, engine.spec, settings.format, settings.scoring) as writer:
        report = Scorer(engine, writer, settings).run(paths)
    return report, load_table(out)


ScoreInto = Callable[[Sequence[str], Engine, Location, ScoreSettings], tuple[ScoreReport, Table]]
