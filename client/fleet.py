"""`deal-client score --ray`: the streaming scorer's steps as Ray Data stages, past one machine.

    pool listing (driver) ─► from_items (blocks of paths) ─► actor pool (`ScoreActor`: one
    engine per actor, ONNX Runtime in-process or a Triton client; each call decodes its paths
    with the single-process scorer's `load_frame`, a bad file an error row, and scores them;
    a drive log's frames are addresses like any path, so a block holds a range of a log's
    frames, which the call reads in one pass: a log is spread over the actors by ranges)
    ─► Parquet parts in OUT/scores.parquet/ ─► (driver) selection over the dataset

OUT is a folder every node sees at the same path, or a prefix in object storage
(`--out s3://bucket/run`, gs://): Ray's write tasks put their parts there straight from the
workers, and the driver writes meta.json and the selection beside them and reads the parts back
to resume and select; no node needs a shared volume. The write tasks use the driver's file
system of OUT (`remote.filesystem`: its endpoint and region, and its keys when they come from
AWS_* variables; without them each worker's own AWS credential chain).

One actor stage fed with paths, chosen by measurement (bench/fleet.py; README, Performance):
frames never pass through Ray's object store (a path is bytes, a frame 130 kB) and no separate
decode stage competes with the actors for the cores. Each actor runs `CALLS_PER_ACTOR` calls at
once on its own threads, so one call decodes while another is in ONNX Runtime (which takes one
run at a time on the CPU, `engines.EmbeddedEngine`), as the single process overlaps its decode
threads with inference.

Rows are the single-process writer's (`parquet.batch_table`), so both paths select the same.
Resumable: the driver skips the paths OUT already holds scored OK by the same model. Actors are
restarted when they die (Ray Data's defaults: max_restarts=-1, max_task_retries=-1) and the
batch they held is run again, so a lost actor costs time, never a row. Ray is imported here
only: the client imports without it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dealseg.core.contract import SCORE_OUTPUTS, ModelSpec
from dealseg.core.decode import DecodeError

from .engines import Engine, EngineError
from .logs import LogFrames
from .objects import Location, ObjectPath, location
from .outdir import claim, load_table
from .parquet import (
    SCORES_PARQUET,
    batch_table,
    errors_table,
    new_run_id,
    next_sequence,
    part_prefix,
    read_parts,
    resumed_paths,
)
from .records import StoreError, Table, record_path
from .remote import one_line
from .scoring import (
    ScoreReport,
    decode_or_error,
    decode_runs,
    infer_batch,
    load_frame,
    read_log_run,
)
from .settings import ScoreSettings

ROWS_PER_FILE = 1024  # rows a Parquet part of the Ray path holds at least (but the last)
# Paths a block holds: a call of an actor decodes and scores one block (in batches of the
# scorer's batch size). Measured on 2000 JPEGs (bench/fleet.py): larger blocks cost Ray fewer
# scheduling rounds, smaller ones keep both calls of an actor busy to the end.
BLOCK_PATHS = 32
CALLS_PER_ACTOR = 2  # calls an actor runs at once: one decodes while another infers
EngineFactory = Callable[[], Engine]  # picklable: builds an actor's engine on its node
BatchHook = Callable[[int], None]  # called with an actor's batch number before it scores it


class RayUnavailable(RuntimeError):
    """`--ray` without the `ray` extra installed, or no cluster at the address."""


@dataclass(frozen=True)
class RaySettings:
    """How the Ray path runs (the CLI's --ray, --actors, --cpus-per-actor, ... options); the
    defaults fit one machine."""

    address: str | None = None  # None: a local cluster in this process; "auto", "ray://h:10001"
    actors: int = 1  # scoring actors, each with its own engine
    cpus_per_actor: float = 1.0  # CPUs reserved per actor (ONNX Runtime's threads in-process)
    gpus_per_actor: float = 0.0  # GPUs reserved per actor (ONNX Runtime's CUDA provider)
    rows_per_file: int = ROWS_PER_FILE


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "--ray needs Ray Data: pip install 'dealseg[ray]' (ray[data]==2.60.0)"
        ) from None
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
def connected(address: str | None, progress: bool = True) -> Iterator[Any]:
    """Ray connected to `address` (a new local cluster when None) for the block; a connection
    made here is closed after it, one made before is left alone."""
    ray = import_ray()
    mine = not ray.is_initialized()
    if mine:
        check_reachable(address)
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, Exception
            where = f"reach the Ray cluster at {address}" if address else "start a local Ray"
            raise RayUnavailable(f"cannot {where}: {one_line(exc)}") from None
        if threading.current_thread() is threading.main_thread():
            # ray.init takes SIGTERM (a stack dump and exit 143); the caller's handler stays
            signal.signal(signal.SIGTERM, on_sigterm)
    import logging

    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no INFO lines per dataset

    context = DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    try:
        yield ray
    finally:
        if mine:
            ray.shutdown()


# ------------------------------------------------------------------------------------- stages
class ScoreActor:
    """One actor of the scoring pool: builds its engine once, then turns blocks of paths into
    scores rows (`parquet.batch_table`) and error rows for the files that did not decode.
    Thread-safe: the actor runs `CALLS_PER_ACTOR` calls at once."""

    def __init__(
        self,
        make_engine: EngineFactory,
        spec: ModelSpec,
        settings: ScoreSettings,
        run: str,
        hook: BatchHook | None,
    ) -> None:
        self.engine, self.spec, self.run, self.hook = make_engine(), spec, run, hook
        if self.engine.spec.model_id != spec.model_id:
            raise EngineError(
                f"an actor's engine serves {self.engine.spec.model_id}, not {spec.model_id}"
            )
        self.settings = settings
        self.load = functools.partial(load_frame, size=spec.input_size, settings=settings)
        self.batches = itertools.count(1)  # next() is atomic under the GIL

    def __call__(self, block: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        paths = [str(p) for p in block["path"]]
        size = self.settings.batch_size
        logs = LogFrames(self.spec.input_size, self.settings)  # a block's range of a log: one pass
        try:
            return pa.concat_tables(
                [self.score(paths[i : i + size], logs) for i in range(0, len(paths), size)]
            )
        finally:
            logs.close()

    def score(self, paths: list[str], logs: LogFrames) -> Any:
        """Decode and score one batch of paths (a log's frames through `logs`): its rows, error
        rows last."""
        import pyarrow as pa

        if self.hook is not None:
            self.hook(next(self.batches))
        frames, failed = [], []
        for run, log, _ in decode_runs(paths, len(paths)):
            if log:
                found = logs.frames(read_log_run(logs, run))
            else:
                found = [decode_or_error(self.load, run[0])]
            for path, result in zip(run, found, strict=True):
                if isinstance(result, DecodeError):
                    failed.append((path, result.reason))
                else:
                    frames.append((path, result))
        regions = self.settings.regions
        parts = [errors_table(failed, self.spec, self.run, regions is not None)]
        if frames:
            done, out = infer_batch(
                self.engine, [p for p, _ in frames], [f for _, f in frames], SCORE_OUTPUTS, regions
            )
            parts.insert(0, batch_table(done, out, self.spec, self.run))
        return pa.concat_tables(parts)


def part_names(prefix: str) -> Any:
    """Ray's FilenameProvider for our parts, `<run sequence>-<run id>-<write>-<task>.parquet`:
    the parts of later runs sort after earlier ones (`parquet.part_files`)."""
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{prefix}{write_uuid}-{task_index:06d}.parquet"

    return PartNames()


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

    The driver holds the out dir's lock and writes meta.json; the parts are written by Ray's
    tasks into OUT/scores.parquet/ (on a cluster of several machines OUT must be a folder every
    node sees at the same path, or a prefix in object storage). Raises StoreError, EngineError
    and RayUnavailable.
    """
    import time

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
        with connected(ray_settings.address, settings.progress) as ray:
            _check_resources(ray, ray_settings)
            start = time.perf_counter()  # as the single-process rate: scoring, not start-up
            dataset = _pipeline(ray, todo, spec, make_engine, settings, ray_settings, run, hook)
            where, filesystem = _sink(folder)
            try:
                dataset.write_parquet(
                    where,
                    filesystem=filesystem,
                    filename_provider=part_names(prefix),
                    min_rows_per_file=ray_settings.rows_per_file,
                )
            except Exception as exc:  # Ray wraps the actor's error in its own types
                raise EngineError(f"the Ray job failed: {_cause(exc)}") from exc
        report.seconds = time.perf_counter() - start
    _count(report, folder, run)
    return report


def _sink(folder: Location) -> tuple[str, Any]:
    """Where Ray's write tasks put the parts: (path, pyarrow file system; None: local)."""
    if isinstance(folder, ObjectPath):
        return folder.key, folder.fs
    return str(folder.absolute()), None


def _check_resources(ray: Any, how: RaySettings) -> None:
    """Refuse settings whose actors cannot all be placed: the run would wait for ever."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    if how.actors * how.cpus_per_actor > cpus:
        raise RayUnavailable(
            f"{how.actors} actors x {how.cpus_per_actor:g} CPUs need "
            f"{how.actors * how.cpus_per_actor:g} CPUs, the cluster has {cpus:g}: lower "
            "--actors or --cpus-per-actor"
        )
    gpus = float(resources.get("GPU", 0.0))
    if how.actors * how.gpus_per_actor > gpus:
        raise RayUnavailable(
            f"{how.actors} actors x {how.gpus_per_actor:g} GPUs need more than the cluster's "
            f"{gpus:g} GPUs: lower --actors or --gpus-per-actor"
        )


def _pipeline(
    ray: Any,
    todo: Sequence[str],
    spec: ModelSpec,
    make_engine: EngineFactory,
    settings: ScoreSettings,
    how: RaySettings,
    run: str,
    hook: BatchHook | None,
) -> Any:
    """Blocks of `BLOCK_PATHS` paths (fewer for a small pool, so every call of every actor
    gets one), each decoded and scored by one call of an actor."""
    calls = how.actors * CALLS_PER_ACTOR
    blocks = min(max(-(-len(todo) // BLOCK_PATHS), min(len(todo), calls)), 10_000)
    items = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    return items.map_batches(
        ScoreActor,
        fn_constructor_args=(make_engine, spec, settings, run, hook),
        batch_size=None,  # a whole block per call
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=how.actors,
            max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
            enable_true_multi_threading=True,
        ),
        num_cpus=how.cpus_per_actor,
        num_gpus=how.gpus_per_actor or None,
    )


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
