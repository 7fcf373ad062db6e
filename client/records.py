"""A scores record, one per input, as both out-dir formats hold it (JSONL and Parquet).

A record: {"path", "status": "ok"|"error", "error", "ds", "de", "entropy", "novelty" (None:
the model has no novelty statistics), "class_fraction", "row", "model"}, and for a drive log's
frame "log", "frame", "timestamp" and "topic" (`logs`); "class_fraction" maps
each class name to its share of the picture (format 2; format 1 out dirs, a bare list in the
model's class order, are read by select and merge but not written to). Paths are absolute.
Every file is valid UTF-8: a path whose bytes are not UTF-8 is written as text with those
bytes shown as `\\xNN`, plus "path_b64", the exact bytes in base64, which readers use instead
(`record_path`). Which record counts for a path is one rule, `replaces`. `Table` is the
records that count, as arrays: the input of selection.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.contract import REGION_MAPS, ContractError, ModelSpec

from .logs import frame_fields

SCORES = "scores.jsonl"
EMBEDDINGS = "embeddings.f32"


class StoreError(RuntimeError):
    """The out dir cannot be used as asked (other model, damaged files, nothing to read)."""


def finite(x: float) -> float | None:
    """A float for JSON: None for NaN and infinities."""
    x = float(x)
    return x if np.isfinite(x) else None


def spec_of(meta: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_metadata(meta["metadata"])


def class_names_of(meta: dict[str, Any]) -> tuple[str, ...]:
    """The model's class names from an out dir's meta.json; none when its metadata lacks them."""
    try:
        return spec_of(meta).class_names
    except (ContractError, KeyError):
        return ()


def path_fields(path: str) -> dict[str, str]:
    """{"path": text} for a UTF-8 path; for other bytes, the text with them as \\xNN and
    "path_b64": the exact bytes (paths are `str` with surrogate escapes, as os.fsdecode gives)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "backslashreplace")
        return {"path": text, "path_b64": base64.b64encode(raw).decode("ascii")}
    return {"path": path}


def record_path(record: dict[str, Any]) -> str:
    """The exact path of a record or selection row as read from a file (see `path_fields`)."""
    raw = record.get("path_b64")
    return os.fsdecode(base64.b64decode(raw)) if raw else record["path"]


def record_fractions(record: dict[str, Any], class_names: Sequence[str]) -> list[float] | None:
    """A record's predicted class shares in `class_names` order (None for an error record).

    The one reader of `class_fraction`: a list in class order, or an object keyed by class name
    (a class it does not name has share 0).
    """
    value = record.get("class_fraction")
    if value is None:
        return None
    if isinstance(value, dict):
        return [float(value.get(name) or 0.0) for name in class_names]
    return [float(v) for v in value]


def replaces(old_ok: bool | None, new_ok: bool, same_source: bool = True) -> bool:
    """Whether a path's new record replaces the one that counts so far (`old_ok` None: none).

    Within one scores file the later record counts (a re-scored image, an error retried), but
    an error never replaces an ok; across the sources of a merge the first counts, but an ok
    beats an error.
    """
    if old_ok is None or (new_ok and not old_ok):
        return True
    return same_source and (new_ok or not old_ok)


def record_ok(
    path: str, out: dict[str, np.ndarray], i: int, row: int, model: str, classes: Sequence[str]
) -> dict:
    """The record of image i of a batch whose outputs are `out`; `classes` names the model's
    classes, the keys of "class_fraction"."""
    fractions = out["class_fraction"][i]
    return {
        "path": path,
        "status": "ok",
        "error": None,
        "ds": finite(out["ds"][i]),
        "de": finite(out["de"][i]),
        "entropy": finite(out["entropy"][i]),
        "novelty": finite(out["novelty"][i]) if "novelty" in out else None,  # None: unknown
        "class_fraction": {c: round(float(v), 6) for c, v in zip(classes, fractions, strict=True)},
        "row": row,
        "model": model,
        **frame_fields(path),
        **(_regions_of(out, i) if "region_pixels" in out else {}),
    }


# A record's cell fields (`score --regions`), each a list in cell order: picture pixels, the
# mean of each region map, the class predicted on most of the cell (-1: none).
CELL_FIELDS: tuple[str, ...] = ("pixels", *REGION_MAPS, "class")


def _regions_of(out: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """A record's cells (`score --regions`): their picture pixels, the mean of each region map
    the model serves (ds: difficulty; entropy: from contract 3 on) and the id of their
    most-predicted class, in cell order (`core.regions.frame_region_vectors`)."""
    return {
        "regions": {
            name: [round(float(v), 5) if name in REGION_MAPS else int(v) for v in values[i]]
            for name in CELL_FIELDS
            if (values := out.get(f"region_{name}")) is not None
        }
    }


@dataclass
class RegionCells:
    """A table's cells (`score --regions`), row i its path i: pixels [N, R] int32, per region
    map the scoring model served ("ds", "entropy") the mean over each cell [N, R], and the
    class predicted on most of each cell [N, R] int16 (-1: none; None: scored before cells
    carried it)."""

    pixels: np.ndarray
    means: dict[str, np.ndarray]
    classes: np.ndarray | None = None

    @classmethod
    def from_lists(cls, rows: Sequence[dict[str, Any]]) -> RegionCells:
        """From records' "regions" objects; a map (or the classes) counts when every row has
        it as a list (a table that joins older scores may hold None or NaN there)."""
        if not rows:
            return cls(np.zeros((0, 0), np.int32), {})

        def everywhere(name: str) -> bool:
            return all(isinstance(r.get(name), (list, tuple, np.ndarray)) for r in rows)

        names = [n for n in REGION_MAPS if everywhere(n)]
        known = everywhere("class")
        return cls(
            np.asarray([r["pixels"] for r in rows], np.int32),
            {n: np.asarray([r[n] for r in rows], np.float32) for n in names},
            np.asarray([r["class"] for r in rows], np.int16) if known else None,
        )


def record_error(path: str, reason: str, model: str) -> dict:
    return {
        "path": path,
        "status": "error",
        "error": reason,
        "ds": None,
        "de": None,
        "entropy": None,
        "novelty": None,
        "class_fraction": None,
        "row": None,
        "model": model,
        **frame_fields(path),
    }


def winners(sources: Sequence[Iterable[dict[str, Any]]]) -> tuple[dict[str, tuple[int, int]], int]:
    """path -> (source, record number) of the record that counts (`replaces`), and the number
    of records."""
    winner: dict[str, tuple[int, int, bool]] = {}
    count = 0
    for i, src in enumerate(sources):
        for n, r in enumerate(src):
            count += 1
            ok = r["status"] == "ok"
            old = winner.get(r["path"])
            if old is None or replaces(old[2], ok, same_source=old[0] == i):
                winner[r["path"]] = (i, n, ok)
    return {p: (i, n) for p, (i, n, _) in winner.items()}, count


@dataclass
class Table:
    """The records that count in an out dir as arrays (the input of selection) plus its errors."""

    out: Path
    meta: dict[str, Any]
    paths: list[str]
    scores: dict[str, np.ndarray]  # "ds" | "de" | "entropy" -> [N] float64 (NaN if missing)
    rows: np.ndarray  # [N] int64 rows of the embeddings file
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    fractions: np.ndarray | None = None  # [N, C] float32 predicted class shares (NaN: none)
    vectors: np.ndarray | None = None  # [N, D] embeddings held in memory instead of the file
    source: Path | None = None  # the scores read (default: out/scores.jsonl)
    load_vectors: Callable[[], np.ndarray] | None = None  # reads `vectors` on first use
    regions: RegionCells | None = None  # the cells (score --regions)
    load_regions: Callable[[], RegionCells] | None = None  # reads `regions` on first use
    unreadable: list[str] = field(default_factory=list)  # score parts that could not be read

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names_of(self.meta)

    @property
    def scores_file(self) -> Path:
        return self.source or (self.out / SCORES).absolute()

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    def embeddings(self) -> np.ndarray:
        """[N, D] float32, memory-mapped when the rows are the file's rows in order."""
        if self.vectors is None and self.load_vectors is not None:
            self.vectors = self.load_vectors()
        if self.vectors is not None:
            return self.vectors
        path, d = self.out / EMBEDDINGS, self.embedding_dim
        n_file = path.stat().st_size // (4 * d) if path.exists() else 0
        if int(self.rows.max(initial=-1)) >= n_file:
            raise StoreError(f"{path} has {n_file} rows, fewer than {SCORES} points to")
        if n_file == 0:
            return np.zeros((0, d), np.float32)
        mm = np.memmap(path, dtype="<f4", mode="r", shape=(n_file, d))
        if len(self.rows) == n_file and np.array_equal(self.rows, np.arange(n_file)):
            return mm
        return np.asarray(mm[self.rows])
