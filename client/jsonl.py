"""Scores as JSON lines: `scores.jsonl` (a record a line, appended as results arrive) and
`embeddings.f32` (little-endian float32 rows [D]; a record's "row" indexes it).

This module knows these two files only; the out dir around them (meta.json, the lock, which
format a folder holds) is `outdir`'s. After a crash, a partial last line and embedding rows no
record points to are cut off when the writer opens the folder again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dealseg.core.contract import ModelSpec
from dealseg.core.files import atomic_output
from dealseg.core.ranking import SCORE_COLUMNS

from .objects import Location, ObjectPath, location
from .records import (
    EMBEDDINGS,
    SCORES,
    RegionCells,
    StoreError,
    Table,
    class_names_of,
    path_fields,
    record_error,
    record_fractions,
    record_ok,
    record_path,
    replaces,
    winners,
)


def record_line(record: dict[str, Any]) -> bytes:
    """One JSON line of a record, its path written as `path_fields` says."""
    fields = {k: v for k, v in record.items() if k not in ("path", "path_b64")}
    line = json.dumps({**path_fields(record["path"]), **fields}, ensure_ascii=True, allow_nan=False)
    return (line + "\n").encode("ascii")


def holds_scores(out: Location) -> bool:
    """Whether the folder `out` holds a non-empty scores.jsonl (any, in object storage)."""
    scores = location(out) / SCORES
    if isinstance(scores, ObjectPath):
        return scores.is_file()
    return scores.exists() and scores.stat().st_size > 0


def cut_partial_line(path: Path) -> int:
    """Truncate `path` after its last newline (a crash mid-write); return bytes removed."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end < size:
            f.truncate(end)
    return size - end


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a scores.jsonl, "path" the exact path; a partial last line and undecodable
    lines are skipped."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return  # partial last line of a crashed run
            try:
                record = json.loads(line)
            except ValueError:
                print(f"warning: {path}:{n}: not a JSON record, skipped", file=sys.stderr)
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                record["path"] = record_path(record)
                record.pop("path_b64", None)
                yield record


# -------------------------------------------------------------------------------------- writer
class JsonlWriter:
    """Appends records to scores.jsonl and embedding rows to embeddings.f32 in `out`, resuming
    what is there (`outdir.open_writer` checks first that the same model wrote it)."""

    def __init__(self, out: Path, spec: ModelSpec) -> None:
        self.out, self.spec, self.model = Path(out), spec, spec.model_id
        scores, embeddings = self.out / SCORES, self.out / EMBEDDINGS
        scores.touch()
        embeddings.touch()
        cut_partial_line(scores)
        self.ok: dict[str, bool] = {}  # path -> whether the record that counts is ok
        max_row = -1
        for r in iter_records(scores):
            ok = r["status"] == "ok"
            if ok:
                max_row = max(max_row, int(r["row"]))
            if replaces(self.ok.get(r["path"]), ok):
                self.ok[r["path"]] = ok
        self.next_row = self._repair_embeddings(embeddings, max_row + 1)
        self.replaced = 0  # records written for paths that had one: compact on close
        self._scores: BinaryIO = open(scores, "ab")  # noqa: SIM115 - closed by close()
        self._embeddings: BinaryIO = open(embeddings, "ab")  # noqa: SIM115

    def _repair_embeddings(self, path: Path, rows: int) -> int:
        row_bytes = 4 * self.spec.embedding_dim
        size = path.stat().st_size
        if size < rows * row_bytes:
            raise StoreError(
                f"{path} has {size // row_bytes} rows but {SCORES} points to {rows}; the out dir "
                "is damaged: use another --out"
            )
        if size > rows * row_bytes:  # rows of a batch whose records never got written
            os.truncate(path, rows * row_bytes)
        return rows

    @property
    def done(self) -> set[str]:
        return {p for p, ok in self.ok.items() if ok}

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None:
        """Write one inferred batch: embedding rows first, then the records that point at them."""
        emb = np.ascontiguousarray(out["embedding"], dtype="<f4")  # [B, D]
        self._embeddings.write(emb.tobytes())
        self._embeddings.flush()
        names, first = self.spec.class_names, self.next_row
        lines = [
            record_line(record_ok(p, out, i, first + i, self.model, names))
            for i, p in enumerate(paths)
        ]
        self.next_row += len(paths)
        self._scores.write(b"".join(lines))
        self._scores.flush()
        self.replaced += sum(p in self.ok for p in paths)
        self.ok.update(dict.fromkeys(paths, True))

    def append_error(self, path: str, reason: str) -> None:
        self._scores.write(record_line(record_error(path, reason, self.model)))
        self._scores.flush()
        self.replaced += path in self.ok
        if replaces(self.ok.get(path), False):
            self.ok[path] = False

    def close(self) -> None:
        """Flush and close; then rewrite scores.jsonl if a path got a second record.

        The files are closed even when flushing fails (a full disk): the error is raised after,
        and the next run cuts what was written half-way."""
        try:
            for f in (self._embeddings, self._scores):
                f.flush()
                os.fsync(f.fileno())
            if self.replaced:
                compact_scores(self.out)
        finally:
            for f in (self._embeddings, self._scores):
                with contextlib.suppress(OSError):
                    f.close()


# -------------------------------------------------------------------------------------- reader
def read_jsonl_table(scores_path: Path, meta: dict[str, Any]) -> Table:
    """A scores.jsonl (its out dir's `meta` read) as a selection table.

    The record that counts for a path is the one `replaces` keeps. Records are streamed into
    flat arrays (about 100 bytes and 4 per class a path, beside the path itself), so a pool of
    millions fits in memory.
    """
    names = class_names_of(meta)
    c = len(names)
    slot: dict[str, int] = {}  # path -> index into the arrays below
    paths: list[str] = []
    ours = bytearray()  # the counting record is by this model
    cols = {name: array("d") for name in SCORE_COLUMNS}  # read for ok records only
    rows = array("q")
    shares = array("f")  # [N * C] class fractions
    reasons: dict[int, str] = {}  # the counting record is an error
    for r in iter_records(scores_path):
        is_ok = r["status"] == "ok"
        i = slot.setdefault(r["path"], len(paths))
        if i == len(paths):
            paths.append(r["path"])
            ours.append(0)
            rows.append(-1)
            shares.extend([np.nan] * c)
            for col in cols.values():
                col.append(np.nan)
        elif not replaces(i not in reasons, is_ok):
            continue
        ours[i] = r.get("model") == meta["model"]
        if is_ok:
            reasons.pop(i, None)
            rows[i] = int(r["row"])
            for name, col in cols.items():
                col[i] = np.nan if r.get(name) is None else float(r[name])
            fractions = record_fractions(r, names)
            if fractions is not None and len(fractions) == c:
                shares[i * c : (i + 1) * c] = array("f", fractions)
        else:
            reasons[i] = str(r.get("error"))
    del slot
    mine = np.frombuffer(ours, dtype=np.uint8).astype(bool)
    good = mine.copy()
    good[list(reasons)] = False
    for i in np.flatnonzero(~mine):
        print(f"warning: {paths[i]}: scored by another model, ignored", file=sys.stderr)
    keep = np.flatnonzero(good)
    kept = [paths[i] for i in keep]
    regions = (meta.get("settings") or {}).get("regions")
    return Table(
        out=scores_path.parent,
        meta=meta,
        paths=kept,
        scores={name: np.frombuffer(col, dtype=np.float64)[keep] for name, col in cols.items()},
        rows=np.frombuffer(rows, dtype=np.int64)[keep],
        errors={paths[i]: reasons[i] for i in sorted(reasons) if mine[i]},
        fractions=np.frombuffer(shares, dtype=np.float32).reshape(len(paths), c)[keep],
        load_regions=(lambda: read_jsonl_regions(scores_path, kept)) if regions else None,
    )


def read_jsonl_regions(scores_path: Path, paths: Sequence[str]) -> RegionCells:
    """The cells of `paths` (`score --regions`) from the ok records that count for them; a path
    whose record has none is a StoreError."""
    index = {p: i for i, p in enumerate(paths)}
    cells: list[Any] = [None] * len(paths)
    for r in iter_records(scores_path):
        i = index.get(r["path"])
        if i is not None and r["status"] == "ok":
            cells[i] = r.get("regions")
    missing = [paths[i] for i, v in enumerate(cells) if v is None]
    if missing:
        raise StoreError(
            f"{len(missing)} records in {scores_path} hold no regions (first: {missing[0]}); "
            "they were scored without --regions: score them again into a fresh --out"
        )
    return RegionCells.from_lists(cells)


def jsonl_records(
    out: Path, meta: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Every record of an out dir's scores.jsonl in the order written, with its embedding row
    (None for an error record)."""
    emb = _open_embeddings(out, int(meta["embedding_dim"]))
    for r in iter_records(out / SCORES):
        yield r, (np.asarray(emb[int(r["row"])], np.float32) if r["status"] == "ok" else None)


def compact_scores(out: Path) -> None:
    """Drop records replaced by later ones (errors retried by a re-run): one record per path."""
    path = Path(out) / SCORES
    counted, count = winners([iter_records(path)])
    if count == len(counted):
        return
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for n, r in enumerate(iter_records(path)):
            if counted[r["path"]] == (0, n):
                f.write(record_line(r))


def write_jsonl_records(
    out: Path, chosen: Iterable[tuple[dict[str, Any], np.ndarray | None]]
) -> None:
    """Records with their embeddings (merge's winners) as out's scores.jsonl and
    embeddings.f32, replacing any there."""
    row = 0
    with (
        atomic_output(out / SCORES) as tmp_scores,  # replaced last: its rows exist by then
        atomic_output(out / EMBEDDINGS) as tmp_emb,
        open(tmp_scores, "wb") as fs,
        open(tmp_emb, "wb") as fe,
    ):
        for r, vector in chosen:
            if r["status"] == "ok":
                fe.write(np.asarray(vector, dtype="<f4").tobytes())
                r["row"], row = row, row + 1
            fs.write(record_line(r))


def _open_embeddings(out: Path, d: int) -> np.ndarray:
    path = out / EMBEDDINGS
    n = path.stat().st_size // (4 * d) if path.exists() else 0
    if n == 0:
        return np.zeros((0, d), np.float32)
    return np.memmap(path, dtype="<f4", mode="r", shape=(n, d))
