"""`deal-client score --ray`: the single-process scorer run by Ray actors, past one machine.

    pool listing (driver; paths already scored OK skipped) ─► blocks of paths (`BLOCK_PATHS`,
    fewer a block when there are fewer than the actors' calls) ─► actors (`ScoreWorker`: one
    engine each, ONNX Runtime in-process or a Triton client) ─► each call runs the single-process
    `Scorer` over its block (decode threads feeding the engine, a drive log's frames as a range
    read in one pass) and writes the block's rows as one Parquet part into OUT/scores.parquet/
    ─► (driver) the run's rows counted, the selection over the out dir's table

Chosen by measurement (bench/fleet.py; README, Performance): Ray Data's stages (a block per
call, tables through the object store, separate write tasks) kept 70-76% of the single process on
a quiet 2-core node whatever the block size and calls per actor, while the single-process scorer
in a plain Ray actor keeps its speed. So only paths and small summaries pass through Ray; frames
and rows never do.

OUT is a folder every node sees at the same path, or a prefix in object storage
(`--out s3://bucket/run`, gs://): the actors write their parts there straight from the workers
(the driver's file system of OUT, `remote.filesystem`: its endpoint and region, and its keys
when they come from AWS_* variables; without them each worker's own AWS credential chain), and
the driver writes meta.json and the selection beside them and reads the parts back to resume and
select; no node needs a shared volume.

A block's part is named by the run and the block's number, and written whole (atomically) at the
block's end. Actors are restarted when they die and the call they held runs again
(`max_restarts=-1`, `max_task_retries=-1`): a lost actor costs time, never a row, and a call run
twice writes the same part twice, so no image is written twice. Ray is imported here only: the
client imports without it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dealseg.core.contract import ModelSpec

from .engines import Engine, EngineError
from .objects import Location, ObjectPath, location
from .outdir import claim, load_table
from .parquet import (
    SCORES_PARQUET,
    PartRows,
    absent_cell_columns,
    new_run_id,
    next_sequence,
    part_prefix,
    read_parts,
    resumed_paths,
    write_part,
)
from .records import StoreError, Table, record_path
from .remote import one_line
from .scoring import Scorer, ScoreReport, progress_bar
from .settings import ScoreSettings

# Paths a block holds: one actor call scores them and writes them as one Parquet part. Larger
# blocks make fewer, larger parts and fewer calls; each call's scorer drains at its end, which
# the actor's other call covers (CALLS_PER_ACTOR).
BLOCK_PATHS = 1024
CALLS_PER_ACTOR = 2  # calls an actor runs at once
MIN_SPLIT = 32  # a pool is split further for the actors' calls only into blocks this large
EngineFactory = Callable[[], Engine]  # picklable: builds an actor's engine on its node
BatchHook = Callable[[int], None]  # called with an actor's batch number before it scores it


class RayUnavailable(RuntimeError):
    """`--ray` without the `ray` extra installed, or no cluster at the address."""


@dataclass(frozen=True)
class RaySettings:
    """How the Ray path runs (the CLI's --ray, --actors, --cpus-per-actor, ... options); the
    defaults fit one machine."""

    address: str | None = None  # None: a local cluster in this process; "auto", "ray://h:10001"
    actors: int | None = None  # scoring actors, each with its own engine; None: `actor_count`
    cpus_per_actor: float = 1.0  # CPUs reserved per actor (ONNX Runtime's threads in-process)
    gpus_per_actor: float = 0.0  # GPUs reserved per actor (ONNX Runtime's CUDA provider)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'dealseg[ray]' (ray==2.60.0)") from None
    return ray


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """RayUnavailable, naming `address`, when nothing accepts a connection at its host:port
    (ray.init would retry for minutes). No address (a local cluster) and `auto` pass."""
    host, _, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster at {address}: {exc.strerror or exc or 'no answer'} (check the "
            "address, or start a cluster there with `ray start --head`)"
        ) from None


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """Ray connected to `address` (a new local cluster when None, without the dashboard) for
    the block; a connection made here is closed after it, one made before is left alone."""
    ray = import_ray()
    mine = not ray.is_initialized()
    if mine:
        check_reachable(address)
        on_sigterm = signal.getsignal(signal.SIGTERM)
        local = {"include_dashboard": False} if address is None else {}
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, **local)
        except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, Exception
            where = f"reach the Ray cluster at {address}" if address else "start a local Ray"
            raise RayUnavailable(f"cannot {where}: {one_line(exc)}") from None
        if threading.current_thread() is threading.main_thread():
            # ray.init takes SIGTERM (a stack dump and exit 143); the caller's handler stays
            signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield ray
    finally:
        if mine:
            ray.shutdown()


# ------------------------------------------------------------------------------------- actors
class ScoreWorker:
    """One scoring actor: builds its engine once, then scores blocks of paths with the
    single-process `Scorer` and writes each block's rows as one part into `folder`. Runs
    `CALLS_PER_ACTOR` calls at once (they take turns on the engine, as the single process's
    requests do)."""

    def __init__(
        self,
        make_engine: EngineFactory,
        spec: ModelSpec,
        settings: ScoreSettings,
        folder: Location,
        run: str,
        prefix: str,
        absent: tuple[str, ...],
        hook: BatchHook | None,
    ) -> None:
        engine = make_engine()
        if engine.spec.model_id != spec.model_id:
            raise EngineError(
                f"an actor's engine serves {engine.spec.model_id}, not {spec.model_id}"
            )
        self.engine = engine if hook is None else _Hooked(engine, hook)
        self.spec, self.folder, self.run, self.prefix = spec, folder, run, prefix
        self.settings = dataclasses.replace(settings, progress=False)  # the driver's bar counts
        self.absent = absent  # the cell columns the out dir's earlier parts lack

    def ready(self) -> None:
        """Returns once the actor (and its engine) is up."""

    def score(self, block: int, paths: list[str]) -> int:
        """Score `paths` and write their rows as the block's part; the rows written."""
        regions = self.settings.regions is not None
        rows = PartRows(self.spec, self.run, regions, absent=self.absent)
        Scorer(self.engine, rows, self.settings).run(paths)
        write_part(self.folder / f"{self.prefix}{block:06d}.parquet", rows.take())
        return len(paths)


class _Hooked:
    """The actor's engine, calling `hook` with the batch's number (1, 2, ... in this actor
    process) before each batch it scores: tests' faults in the middle of a run."""

    def __init__(self, engine: Engine, hook: BatchHook) -> None:
        self.engine, self.hook, self.spec = engine, hook, engine.spec
        self.batches = itertools.count(1)  # next() is atomic under the GIL

    def infer(
        self, images: np.ndarray, outputs: Sequence[str], boxes: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        self.hook(next(self.batches))
        return self.engine.infer(images, outputs, boxes)


# -------------------------------------------------------------------------------------- driver
def score_on_ray(
    paths: Sequence[str],
    spec: ModelSpec,
    make_engine: EngineFactory,
    out: Location,
    settings: ScoreSettings,
    ray_settings: RaySettings,
    hook: BatchHook | None = None,
) -> ScoreReport:
    """Score every path not yet scored OK in the Parquet out dir `out` on a Ray cluster.

    The driver holds the out dir's lock and writes meta.json; the actors write the parts into
    OUT/scores.parquet/ (on a cluster of several machines OUT must be a folder every node sees
    at the same path, or a prefix in object storage). The rate counts from the actors' engines
    being up, as the single process's counts from its engine being up. Raises StoreError,
    EngineError and RayUnavailable.
    """
    with claim(out, spec, "parquet", settings.scoring):
        folder = location(out) / SCORES_PARQUET
        folder.mkdir(exist_ok=True)
        done = resumed_paths(folder, spec.model_id)
        todo = [p for p in paths if p not in done]
        report = ScoreReport(total=len(paths), resumed=len(paths) - len(todo))
        if not todo:
            return report
        run = new_run_id()
        prefix = part_prefix(next_sequence(folder), run)
        with connected(ray_settings.address) as ray:
            count = actor_count(ray, ray_settings)
            # the actors write to object storage with the driver's file system
            target = folder.pinned() if isinstance(folder, ObjectPath) else folder
            absent = absent_cell_columns(folder, settings.regions is not None)
            args = (make_engine, spec, settings, target, run, prefix, absent, hook)
            actors = _start_actors(ray, ray_settings, count, args)
            try:
                report.seconds = _run_blocks(ray, actors, _blocks(todo, len(actors)), settings)
            finally:
                for actor in actors:
                    ray.kill(actor)
    _count(report, folder, run)
    return report


def actor_count(ray: Any, how: RaySettings) -> int:
    """The actors to start: `how.actors`, or as many as the cluster's CPUs (and GPUs, when
    each actor takes some) hold at `how.cpus_per_actor` each (one per CPU by default: on one
    machine the fastest arrangement measured, bench/fleet.py). RayUnavailable when the cluster
    cannot place them all (the run would wait for ever)."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    count = how.actors
    if count is None:
        fits = [cpus / how.cpus_per_actor if how.cpus_per_actor > 0 else cpus]
        if how.gpus_per_actor > 0:
            fits.append(gpus / how.gpus_per_actor)
        count = max(1, math.floor(min(fits) + 1e-9))
    if count * how.cpus_per_actor > cpus:
        raise RayUnavailable(
            f"{count} actors x {how.cpus_per_actor:g} CPUs need "
            f"{count * how.cpus_per_actor:g} CPUs, the cluster has {cpus:g}: lower "
            "--actors or --cpus-per-actor"
        )
    if count * how.gpus_per_actor > gpus:
        raise RayUnavailable(
            f"{count} actors x {how.gpus_per_actor:g} GPUs need more than the cluster's "
            f"{gpus:g} GPUs: lower --actors or --gpus-per-actor"
        )
    return count


def _blocks(todo: Sequence[str], actors: int) -> list[list[str]]:
    """`todo` in consecutive blocks of even sizes: at most `BLOCK_PATHS` paths each, and one for
    each of the actors' calls where the blocks still hold `MIN_SPLIT` paths."""
    n = len(todo)
    count = max(-(-n // BLOCK_PATHS), min(actors * CALLS_PER_ACTOR, n // MIN_SPLIT), 1)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [list(todo[a:b]) for a, b in itertools.pairwise(bounds)]


def _start_actors(
    ray: Any,
    how: RaySettings,
    count: int,
    args: tuple[Any, ...],
) -> list[Any]:
    """The actors (`ScoreWorker(*args)`), each with its engine up (EngineError with the
    cause when one fails)."""
    worker = ray.remote(ScoreWorker).options(
        num_cpus=how.cpus_per_actor,
        num_gpus=how.gpus_per_actor or None,
        max_concurrency=CALLS_PER_ACTOR,
        max_restarts=-1,
        max_task_retries=-1,
    )
    actors = [worker.remote(*args) for _ in range(count)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except Exception as exc:  # Ray wraps the constructor's error in its own types
        for actor in actors:
            ray.kill(actor)
        raise EngineError(f"the Ray actors did not start: {_cause(exc)}") from exc
    return actors


def _run_blocks(
    ray: Any, actors: list[Any], blocks: list[list[str]], settings: ScoreSettings
) -> float:
    """Hand the blocks to the actors, `CALLS_PER_ACTOR` calls each at a time; the seconds from
    the first call to the last result. The first failed call ends the run (EngineError)."""
    import time

    queue = collections.deque(enumerate(blocks))
    running: dict[Any, Any] = {}
    bar = progress_bar(sum(map(len, blocks)), 0, settings.progress)
    start = time.perf_counter()

    def give(actor: Any) -> None:
        if queue:
            block, paths = queue.popleft()
            running[actor.score.remote(block, paths)] = actor

    try:
        for _ in range(CALLS_PER_ACTOR):
            for actor in actors:
                give(actor)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(ready[0])
            try:
                bar.update(ray.get(ready[0]))
            except Exception as exc:  # Ray wraps the call's error in its own types
                raise EngineError(f"the Ray job failed: {_cause(exc)}") from exc
            give(actor)
    finally:
        bar.close()
    return time.perf_counter() - start


def _cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure (Ray wraps a task's error in RayTaskError, whose
    `cause` is the original), in one line."""
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException) or type(inner).__name__ == "SystemException":
            break
        exc = inner
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _count(report: ScoreReport, folder: Location, run: str) -> None:
    """Fill `report` from the rows this run wrote (one per path it was given)."""
    import pyarrow.compute as pc

    table = read_parts(folder, ["path", "path_b64", "status", "error", "run"])
    if table is None:
        return
    table = table.filter(pc.equal(table.column("run"), run))
    failed = table.filter(pc.not_equal(table.column("status"), "ok"))
    report.scored = table.num_rows - failed.num_rows
    for r in failed.to_pylist():
        report.failed[record_path(r)] = str(r["error"])


@dataclass(frozen=True)
class RayScoring:
    """`pipeline.score_pool`'s `score_with` for the Ray path: scores into `out` on a cluster, then
    reads the out dir's table for selection."""

    make_engine: EngineFactory
    ray_settings: RaySettings
    hook: BatchHook | None = None

    def __call__(
        self, paths: Sequence[str], engine: Engine, out: Location, settings: ScoreSettings
    ) -> tuple[ScoreReport, Table]:
        if settings.format != "parquet":
            raise StoreError("the Ray path writes Parquet: use --format parquet")
        report = score_on_ray(
            paths, engine.spec, self.make_engine, out, settings, self.ray_settings, self.hook
        )
        return report, load_table(out)
