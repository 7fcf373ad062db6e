"""What is drawn from a selection: the maps of its picks (a second pass of the engine over
them) and the report; stale maps are removed when no engine draws new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engines import Engine
from .outdir import MAPS
from .records import Table, record_path
from .settings import ScoreSettings


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
