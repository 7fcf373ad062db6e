"""A whole run of `deal-client` as one call the CLI and the Python API share: score a pool
and select from everything scored (`score_pool`), select again from scores on disk
(`reselect`), merge the out dirs of shard runs and select from them (`merge_and_select`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .drawing import clear_stale, draw
from .engines import Engine
from .logs import FRAMES, extract_picks
from .objects import Location, ObjectPath, location
from .outdir import (
    MAPS,
    check_resumable,
    load_table,
    merge_outputs,
    out_lock,
    read_selection,
    recorded_settings,
    scores_format,
    scores_path,
)
from .records import StoreError, Table, record_path
from .report import REPORT_HTML
from .scoring import ScoreInto, ScoreReport, score_into
from .selection import balance_weights, check_replace, run_selection
from .settings import ScoreSettings, SelectSettings


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
    out: Location,
    settings: ScoreSettings,
    select_settings: SelectSettings,
    maps: bool = False,
    report: bool = False,
    score_with: ScoreInto | None = None,
    force: bool = False,
) -> PoolRun:
    """Score `paths` into the out dir `out` (resuming it), select from everything scored there,
    and optionally draw the maps of the selection and write the report (which implies maps).
    `score_with` scores (default `score_into`, this process; `fleet.RayScoring`: a Ray cluster).
    A selection of other settings in `out` is refused before anything is scored
    (`SelectionExists`) unless `force`; so are maps, a report and regions when `out` is in
    object storage (`check_object_out`).

    Raises StoreError (out dir unusable), EngineError (after its retries; every finished batch
    is on disk, a re-run resumes) and OSError (the out dir cannot be written).
    """
    check_object_out(out, maps or report, select_settings.regions)
    if not force:  # the out dir's own refusals first, then another run's selection
        check_resumable(out, engine.spec.model_id, settings.format, settings.scoring)
        check_replace(out, scores_path(out, settings.format), select_settings)
    scored, table = (score_with or score_into)(paths, engine, out, settings)
    run = PoolRun(scored, None)
    with out_lock(out):
        try:
            run.selection = _select_into(table, out, select_settings)
        except ValueError as exc:
            run.no_selection = str(exc)
            return run
        painter = engine if maps or report else None
        run.map_failures, run.html = draw(painter, table, out, run.selection, settings, report)
    return run


@dataclass
class Reselection:
    """What `reselect` wrote: the selection, the maps that could not be drawn and the report
    (None if not written)."""

    selection: dict[str, Any]
    map_failures: dict[str, str]
    html: Path | None


def reselect(
    scores: Location,
    out: Location | None,
    how: SelectSettings,
    streaming: ScoreSettings,
    *,
    force: bool = False,
    maps: bool | None = None,
    html: bool = False,
    painter: Callable[[Table], Engine] | None = None,
) -> Reselection:
    """Select again from the scores at `scores` (an out dir or its scores) into `out` (default:
    their folder), without scoring. A selection of other settings there is refused
    (`SelectionExists`) unless `force`. The maps are drawn when `maps` says (None: when `out`
    had maps, or a report is written) by the engine `painter` opens for the table; the report
    when `html` says or `out` had one.
    """
    table = load_table(scores)
    out = location(out or table.out)
    check_object_out(out, bool(maps) or html, how.regions)
    if how.balance:
        balance_weights(table.class_names, how.balance)  # before anything is written
    with out_lock(out):
        if not force:
            check_replace(out, table.scores_file, how)
        streaming = replace(streaming, **recorded_settings(table.meta))  # maps framed as scored
        html = html or (out / REPORT_HTML).is_file()
        drawn = maps if maps is not None else html or (out / MAPS).is_dir()
        if drawn and painter is None:
            raise ValueError("the maps need an engine: give a painter")
        engine = painter(table) if drawn and painter is not None else None
        try:
            doc = _select_into(table, out, how)
            failed, page = draw(engine, table, out, doc, streaming, html)
        finally:
            if engine is not None:
                engine.close()
    return Reselection(doc, failed, page)


def inherited_selection(
    inputs: Sequence[Path], strategy: str | None, k: int | None
) -> tuple[str, int]:
    """`strategy` and `k`, each taken from the inputs' selection.json files when not given;
    ValueError when it is not given and their selections differ."""
    if strategy is not None and k is not None:
        return strategy, k
    seen = set()
    for folder in inputs:
        doc = read_selection(folder)
        seen.add(None if doc is None else (doc.get("strategy"), doc.get("k")))
    if len(seen) != 1 or None in seen or None in next(iter(seen)):
        raise ValueError("give --top-k (and --strategy): the inputs' selections differ")
    ((old_strategy, old_k),) = seen
    return strategy or old_strategy, k or old_k


def merge_and_select(
    inputs: Sequence[Path], out: Path, fmt: str | None, how: SelectSettings
) -> tuple[Table, dict[str, Any]]:
    """Merge the out dirs of shard runs into `out` as `fmt` (None: the inputs' format when they
    agree, else jsonl) and select from the merged scores; the table and the selection."""
    if fmt is None:
        formats = {scores_format(i) for i in inputs}
        fmt = formats.pop() if len(formats) == 1 else "jsonl"
    merge_outputs(inputs, out, fmt)
    table = load_table(out)
    with out_lock(out):
        return table, _select_into(table, out, how)


def check_object_out(out: Location, drawn: bool, regions: bool) -> None:
    """StoreError when `out` is in object storage and the run would write local files there:
    maps or a report (`drawn`), or bought regions (their masks), or when its bucket is missing.
    The scores and the selection are what an out dir in object storage holds."""
    out = location(out)
    if not isinstance(out, ObjectPath):
        return
    if regions:
        raise StoreError(
            f"--regions writes regions.jsonl and region masks, local files: give a local --out "
            f"rather than {out}"
        )
    if drawn:
        raise StoreError(
            f"maps and the report are local files, not objects in {out}: `deal-client select "
            f"{out} --out DIR --report` draws them into a local DIR"
        )
    out.check_bucket()


def _select_into(table: Table, out: Location, how: SelectSettings) -> dict[str, Any]:
    """Write the selection into `out`; exports of another list there are removed."""
    before = read_selection(out)
    doc = run_selection(table, out, how)
    clear_stale(out, before, doc)
    failed = extract_picks(out, [record_path(r) for r in doc.get("rows", []) if "path" in r])
    for path, reason in failed.items():
        print(f"warning: {path}: not extracted to {FRAMES}/: {reason}", file=sys.stderr)
    return doc
