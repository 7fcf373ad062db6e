"""What is made from a selection: the maps of its picks (a second pass of the engine over
them) and the report. They live and die with the selection: when a selection is written, its
maps and report are drawn again or removed, and exports of another list are removed
(`clear_stale`); a reader never finds files of another list beside it. An out dir in object
storage holds none of them (they are local files: `pipeline.check_object_out`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .engines import Engine
from .objects import Location, ObjectPath
from .outdir import EXPORTS, MAPS
from .records import Table, record_path
from .settings import ScoreSettings


def draw(
    engine: Engine | None,
    table: Table,
    out: Location,
    selection: dict[str, Any],
    settings: ScoreSettings,
    report: bool,
) -> tuple[dict[str, str], Path | None]:
    """The maps of a selection (drawn by `engine`; without one, the stale maps are removed) and
    its report (written when `report`, else an older one is removed); returns the maps that
    could not be drawn and the report's path (None if not asked)."""
    from .maps import MapOf, clear_maps, write_maps

    if isinstance(out, ObjectPath):  # none drawn there, none to remove
        return {}, None
    failed: dict[str, str] = {}
    if engine is not None:
        picked = [MapOf(r["rank"], record_path(r), r) for r in selection["rows"]]
        failed = write_maps(
            engine, picked, out, settings.max_pixels, settings.batch_size, settings.resize
        )
    elif (Path(out) / MAPS).is_dir():
        clear_maps(out)
    from .report import remove_report, write_report

    if not report:
        remove_report(out)
        return failed, None
    return failed, write_report(out, table, selection)


def clear_stale(out: Location, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    """Remove the exports (OUT/export/) made from the selection `before` when `after`, now in
    `out`, picks other images: a labelling tool must not be handed another list."""
    if before is None or isinstance(out, ObjectPath) or _picked(before) == _picked(after):
        return
    shutil.rmtree(Path(out) / EXPORTS, ignore_errors=True)


def _picked(selection: dict[str, Any]) -> list[str]:
    return [record_path(r) for r in selection.get("rows", [])]
