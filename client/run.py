"""The streaming scorer and the selection step behind `deal-client score / select / merge`.

    paths ─► decode threads (--workers) ─► batches (--batch-size) ─► engine (--concurrency in
    flight) ─► scores.jsonl + embeddings.f32, appended as each batch returns ─► selection

Only the main thread writes files. In memory at any time: a window of decoded images and the
batches in flight, never the pool's outputs. A file that fails to decode costs one error record;
an engine failure (after its retries) stops the run with every finished batch on disk.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.contract import SCORE_OUTPUTS
from dealseg.core.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from dealseg.core.pool import read_pool, take_shard
from dealseg.core.ranking import Options, Pool, select

from .engines import Engine, EngineError
from .store import ScoreWriter, Table, load_table, write_selection


@dataclass(frozen=True)
class ScoreSettings:
    """How `score_paths` streams (the CLI's --batch-size, --concurrency, ... options)."""

    batch_size: int = 8  # images per inference request
    concurrency: int = 2  # inference requests in flight
    workers: int = 4  # decode threads
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard, width x height
    progress: bool = True  # tqdm bar on stderr


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
    """POOL -> absolute image paths (resume and merge must not depend on the cwd), sharded."""
    paths = list(dict.fromkeys(os.path.abspath(p) for p in read_pool(source)))
    return take_shard(paths, *shard)


def _decode(path: str, size: tuple[int, int], max_pixels: int) -> np.ndarray | DecodeError:
    try:
        return decode_image(path, size, max_pixels)
    except DecodeError as exc:
        return exc
    except Exception as exc:  # a decoder bug must cost one record, never the run
        return DecodeError(f"cannot decode: {type(exc).__name__}: {exc}")


def _infer(engine: Engine, paths: list[str], images: np.ndarray) -> tuple[list[str], dict]:
    try:
        out = engine.infer(images, SCORE_OUTPUTS)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    bad = [n for n in SCORE_OUTPUTS if len(out[n]) != len(paths)]
    if bad:
        raise EngineError(f"the engine returned {bad} for a different number of images")
    return paths, out


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


def score_paths(
    paths: Sequence[str], engine: Engine, writer: ScoreWriter, settings: ScoreSettings
) -> ScoreReport:
    """Score every path not yet scored OK in `writer`'s out dir; append records as they come."""
    done = writer.done
    todo = [p for p in paths if p not in done]
    report = ScoreReport(total=len(paths), resumed=len(paths) - len(todo))
    size, bs = engine.spec.input_size, settings.batch_size
    window = bs * (settings.concurrency + 1) + 2 * settings.workers  # decoded images held
    bar = _progress(len(paths), report.resumed, settings.progress)
    decoding = ThreadPoolExecutor(settings.workers, thread_name_prefix="deal-decode")
    inferring = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="deal-infer")
    pending: deque[tuple[str, Future]] = deque()
    in_flight: set[Future] = set()
    batch: list[tuple[str, np.ndarray]] = []
    upcoming = iter(todo)
    start = time.perf_counter()

    def refill() -> None:
        while len(pending) < window:
            path = next(upcoming, None)
            if path is None:
                return
            pending.append((path, decoding.submit(_decode, path, size, settings.max_pixels)))

    def collect(block: bool) -> None:
        finished, _ = wait(in_flight, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in finished:
            in_flight.discard(future)
            done_paths, out = future.result()  # EngineError propagates: fatal
            writer.append_batch(done_paths, out)
            report.scored += len(done_paths)
            bar.update(len(done_paths))

    def submit() -> None:
        while len(in_flight) >= settings.concurrency:
            collect(block=True)
        images = np.stack([img for _, img in batch])  # [B, H, W, 3]
        in_flight.add(inferring.submit(_infer, engine, [p for p, _ in batch], images))
        batch.clear()

    error: EngineError | None = None
    try:
        try:
            refill()
            while pending:
                path, future = pending.popleft()
                result = future.result()
                refill()
                if isinstance(result, DecodeError):
                    writer.append_error(path, result.reason)
                    report.failed[path] = result.reason
                    bar.update(1)
                    bar.set_postfix_str(f"errors={len(report.failed)}", refresh=False)
                else:
                    batch.append((path, result))
                    if len(batch) == bs:
                        submit()
                if in_flight:
                    collect(block=False)
            if batch:
                submit()
        except EngineError as exc:  # stop decoding; still write what the engine finishes
            error = exc
            decoding.shutdown(wait=False, cancel_futures=True)
        while in_flight:
            try:
                collect(block=True)
            except EngineError as exc:
                error = error or exc
        if error is not None:
            raise error
    finally:
        decoding.shutdown(wait=False, cancel_futures=True)
        inferring.shutdown(wait=False, cancel_futures=True)
        bar.close()
        report.seconds = time.perf_counter() - start
    return report


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
    if source.is_dir() or source.suffix == ".jsonl":
        other = load_table(source)
        if other.meta["model"] != table.meta["model"]:
            raise ValueError(f"{source} was scored by {other.meta['model']}, not this model")
        exclude = np.isin(np.asarray(table.paths, dtype=object), other.paths)
        return (other.embeddings() if embeddings is not None else None), exclude
    labeled = set(list_paths(str(source)))  # a list file, read exactly as a POOL
    exclude = np.fromiter((p in labeled for p in table.paths), dtype=bool, count=len(table))
    missing = len(labeled) - int(exclude.sum())
    if missing:
        print(
            f"warning: {missing} labelled paths in {source} are not in the scores, ignored",
            file=sys.stderr,
        )
    centres = np.asarray(embeddings[exclude]) if embeddings is not None else None
    return centres, exclude


def run_selection(
    table: Table,
    out: Path,
    strategy: str,
    k: int,
    *,
    seed: int = 0,
    diverse: float | None = None,
    labeled: Path | None = None,
) -> dict[str, Any]:
    """Select from a loaded table and write selection.txt / selection.json into `out`."""
    need_centres = strategy == "coreset"
    emb = table.embeddings() if need_centres or diverse is not None else None
    centres, exclude = (None, None)
    if labeled is not None:
        centres, exclude = load_labeled(labeled, table, emb if need_centres else None)
    options = Options(seed=seed, labeled=centres, diverse=diverse, exclude=exclude)
    pool = Pool(table.paths, table.scores, emb)
    picks = select(pool, strategy, k, options)
    return write_selection(
        out, table, picks, strategy, k, options, None if labeled is None else str(labeled)
    )
