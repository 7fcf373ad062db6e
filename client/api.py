"""The Python API for notebooks and pipelines: `dealseg.score` and `dealseg.select`.

    import dealseg

    table = dealseg.score("pool/")                      # the shipped model, in-process
    picks = dealseg.select(table, "de", k=10, diverse=0.95)

A table is a pandas DataFrame when pandas is installed, else a list of records (dicts): one row
per image with `path`, `error` (None when scored), `ds`, `de`, `entropy`, a `class_<name>`
share per class and `embedding`; its `attrs["dealseg"]` holds the model id and the class names.
The engine and the out dir are opened and closed inside each call. The CLI's `score` and
`select` run the same steps (`scoring.score_into`, `selection.pick`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.classes import class_columns
from dealseg.core.ranking import NOVEL_THRESHOLD, SCORE_COLUMNS
from dealseg.core.strategies import DEFAULT_REGION_STRATEGY, DEFAULT_STRATEGY

from .logs import expand_logs
from .objects import Location, location
from .outdir import selection_rows
from .records import CELL_FIELDS, RegionCells, Table, record_path
from .regions import buy, predicted, region_pool, region_vectors, score_key
from .scoring import list_paths, no_images, pool_paths, score_into
from .selection import pick
from .settings import (
    EngineSettings,
    ScoreSettings,
    SelectSettings,
    SettingsError,
    TritonSettings,
    from_keywords,
)

ATTRS = "dealseg"


class Records(list):
    """A list of records (dicts) with `attrs`, as a DataFrame has: the table without pandas."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), attrs: dict | None = None) -> None:
        super().__init__(rows)
        self.attrs: dict[str, Any] = dict(attrs or {})


def engine_settings(
    model: str | os.PathLike | None = None,
    url: str | Sequence[str] | None = None,
    triton: TritonSettings | None = None,
) -> EngineSettings:
    """The engine of `model` (default: the shipped model) or of Triton at `url` (one or
    several), validated as the CLI's --model / --url are."""
    urls = (url,) if isinstance(url, str) else tuple(url or ())
    return EngineSettings(None if model is None else Path(model), urls, triton or TritonSettings())


@contextlib.contextmanager
def _out_dir(out: str | os.PathLike | None) -> Iterator[Location]:
    if out is not None:
        yield location(out)
        return
    with tempfile.TemporaryDirectory(prefix="dealseg-") as tmp:
        yield Path(tmp)


def score(
    pool: str | os.PathLike | Iterable[str],
    model: str | os.PathLike | None = None,
    url: str | Sequence[str] | None = None,
    *,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> Any:
    """Score every image of `pool` (a folder, a list file, or paths) with `model` (default: the
    shipped one) or the Triton server(s) at `url`; the table of every image.

    `out` keeps the scores (an out dir of `deal-client score`, resumed when it exists; an
    s3:// or gs:// prefix holds them with format="parquet"); without it they live in a
    temporary folder for the call. `options` are the fields of
    `settings.ScoreSettings` (batch_size=, resize=, format=, regions="cell:12": each frame's cells
    as `region_pixels`, `region_ds`, `region_entropy` and `region_class` columns, for
    `select_regions`; progress off by default) and,
    with a url, of `settings.TritonSettings` (protocol=, timeout=, ...); another keyword is a
    TypeError that lists them. A pool that lists no image is a ValueError worded as the CLI's.
    """
    streaming, triton = from_keywords(
        (ScoreSettings, TritonSettings), {"progress": False, **options}, "score"
    )
    engine = engine_settings(model, url, triton)
    if not isinstance(pool, (str, bytes, os.PathLike, Iterable)):
        raise SettingsError("pool", f"pool must be a folder, a list file or paths, got {pool!r}")
    source = os.fsdecode(pool) if isinstance(pool, (str, bytes, os.PathLike)) else None
    paths = (
        list_paths(source, settings=streaming)
        if source is not None
        else expand_logs(pool_paths(map(os.fsdecode, pool)), streaming)
    )
    if not paths:
        raise ValueError(no_images(source or "(the paths given)"))
    with contextlib.closing(engine.open()) as opened, _out_dir(out) as folder:
        _, table = score_into(paths, opened, folder, streaming)
        return _as_table(_records(table), _attrs(table))


def select(
    table: Any,
    strategy: str = DEFAULT_STRATEGY,
    k: int = 100,
    *,
    seed: int = 0,
    diverse: float | None = None,
    labeled: str | os.PathLike | None = None,
    balance: bool | Mapping[str, float] = False,
    per_group: int | None = None,
    group_by: str | None = None,
    novel_share: float | None = 0.0,
    novel_threshold: float = NOVEL_THRESHOLD,
) -> Any:
    """The k images of a `score` table most worth labelling by `strategy`, best first: a table
    of rank, path, score (the strategy's) and every image score.

    Options as `deal-client select`'s (the same `settings.SelectSettings`, the same checks):
    `balance` True (uniform) or class name -> weight; `labeled` a file of paths (never picked;
    the core-set's first centres); `novel_share` at most this share of k off-domain picks
    (novelty above `novel_threshold`), 0 none (the default), None no rule.
    """
    weights = None if balance is False else ({} if balance is True else dict(balance))
    how = SelectSettings(
        strategy,
        k,
        seed,
        diverse,
        None if labeled is None else Path(os.fsdecode(labeled)),
        weights,
        per_group,
        group_by,
        novel_share=novel_share,
        novel_threshold=novel_threshold,
    )
    scored = _from_table(table)
    chosen, _ = pick(scored, how)
    rows = [
        {k: v for k, v in r.items() if k != "row"} for r in selection_rows(scored, chosen.picks)
    ]
    return _as_table([{**r, "path": record_path(r)} for r in rows], dict(_meta(table)))


def select_regions(
    table: Any,
    budget: str | int,
    strategy: str = DEFAULT_REGION_STRATEGY,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    max_per_frame: int | None = None,
    frame_cost: int = 0,
    keep_novel: bool = False,
    novel_threshold: float = NOVEL_THRESHOLD,
) -> Any:
    """The regions of a `score(..., regions="cell:N")` table that `strategy` buys with `budget`
    (a share of the pool's pixels, "5%", or a count of regions), in the order taken: a table of
    rank, path, region (the cell id), pixels, score and class (the name of the class predicted
    on most of the region, when the scores carry it). Options as `deal-client select
    --regions`'s (the same `settings.SelectSettings`, the same checks): off-domain frames
    (novelty above `novel_threshold`) are not opened unless `keep_novel`."""
    how = SelectSettings(
        strategy,
        seed=seed,
        budget=str(budget),
        temperature=temperature,
        max_per_frame=max_per_frame,
        frame_cost=frame_cost,
        novel_share=None if keep_novel else 0.0,
        novel_threshold=novel_threshold,
    )
    scored = _from_table(table)
    if scored.regions is None:
        raise ValueError("the table holds no regions: score with regions='cell:12'")
    pool = region_pool(scored, how)
    _, bought = buy(pool, how)
    rows = [
        {
            "rank": n,
            "path": pool.paths[pool.frame[i]],
            "region": int(pool.region[i]),
            "pixels": int(pool.pixels[i]),
            "score": float(score_key(pool, strategy)[i]),
            **predicted(pool, i, scored.class_names),
        }
        for n, i in enumerate(bought.indices, 1)
    ]
    return _as_table(rows, dict(_meta(table)))


# ---------------------------------------------------------------------------------- tables
def _attrs(table: Table) -> dict[str, Any]:
    return {
        ATTRS: {
            "model": table.meta["model"],
            "class_names": list(table.class_names),
            "meta": table.meta,
        }
    }


def _records(table: Table) -> list[dict[str, Any]]:
    emb = np.asarray(table.embeddings()) if len(table) else np.zeros((0, table.embedding_dim))
    cells = region_vectors(table) if table.load_regions is not None else None
    columns = list(class_columns(table.class_names).values())
    ok = [
        {
            "path": path,
            "error": None,
            **{name: float(table.scores[name][i]) for name in SCORE_COLUMNS},
            **dict(zip(columns, np.nan_to_num(table.fractions[i]).tolist(), strict=True)),
            "embedding": emb[i].copy(),
            **(
                {
                    "region_pixels": cells.pixels[i],
                    **{f"region_{n}": m[i] for n, m in cells.means.items()},
                    **({} if cells.classes is None else {"region_class": cells.classes[i]}),
                }
                if cells
                else {}
            ),
        }
        for i, path in enumerate(table.paths)
    ]
    failed = [
        {"path": path, "error": reason, **dict.fromkeys(SCORE_COLUMNS, np.nan)}
        for path, reason in table.errors.items()
    ]
    return ok + failed


def _as_table(rows: list[dict[str, Any]], attrs: dict[str, Any]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        return Records(rows, attrs)
    frame = pd.DataFrame(rows)
    frame.attrs.update(attrs)
    return frame


def _meta(table: Any) -> dict[str, Any]:
    attrs = getattr(table, "attrs", {})
    if ATTRS not in attrs:
        raise ValueError("not a table of dealseg.score: its attrs['dealseg'] is missing")
    return {ATTRS: attrs[ATTRS]}


def _rows(table: Any) -> list[dict[str, Any]]:
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def _from_table(table: Any) -> Table:
    """A `score` table (its scored rows) as a records.Table held in memory."""
    info = _meta(table)[ATTRS]
    rows = [r for r in _rows(table) if r.get("error") is None]
    columns = list(class_columns(info["class_names"]).values())
    dim = int(info["meta"]["embedding_dim"])
    return Table(
        out=Path("."),
        meta=info["meta"],
        paths=[r["path"] for r in rows],
        scores={
            n: np.array([r.get(n, np.nan) for r in rows], dtype=np.float64) for n in SCORE_COLUMNS
        },
        rows=np.arange(len(rows)),
        fractions=np.array([[r.get(c, 0.0) for c in columns] for r in rows], np.float32).reshape(
            -1, len(columns)
        ),
        vectors=np.array([r["embedding"] for r in rows], np.float32).reshape(-1, dim),
        regions=(
            RegionCells.from_lists([{n: r.get(f"region_{n}") for n in CELL_FIELDS} for r in rows])
            if rows and isinstance(rows[0].get("region_pixels"), (list, np.ndarray))
            else None
        ),
    )
