"""Scores as Parquet: `scores.parquet/`, a folder of part files any Parquet reader opens.

    out/meta.json                      the model's id and contract metadata (as for JSONL)
    out/scores.parquet/<seq>-<run>-<n>.parquet
                                       one row per input, in the schema of `scores_schema`

Written by `deal-client score --format parquet` (a part every `PART_ROWS` rows and at the end of
the run, each part atomically), by the Ray path (a part per write task) and by `merge --format
parquet`. A part's name starts with its run's sequence number, so the parts sort in the order
the runs wrote them; which row counts for a path is the rule of `records.replaces` over the rows
in that order. This module knows the part files only; the out dir around them (meta.json, the
lock, which format a folder holds) is `outdir`'s. pandas (`pd.read_parquet(out /
"scores.parquet")`), DuckDB (`read_parquet('out/scores.parquet/*.parquet')`) and Spark read the
folder as one table; names starting with '.' (parts being written) are skipped by all of them
and by us. The folder may be a prefix in object storage (`objects.ObjectPath`): the parts are
objects there, each written in one upload, and read with ranged reads of the columns asked.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.classes import class_columns
from dealseg.core.contract import REGION_MAPS, ModelSpec
from dealseg.core.files import atomic_output
from dealseg.core.ranking import SCORE_COLUMNS

from .objects import Location, ObjectPath, location
from .records import (
    CELL_FIELDS,
    RegionCells,
    StoreError,
    Table,
    class_names_of,
    path_fields,
    record_error,
    record_ok,
    record_path,
)

SCORES_PARQUET = "scores.parquet"
PART_ROWS = 4096  # rows a part of the single-process writer holds at most
_PART = re.compile(r"^(\d{6})-([0-9a-f]+)-")  # <run sequence>-<run id>-...


def scores_schema(class_names: Sequence[str], embedding_dim: int, regions: bool = False) -> Any:
    """The one schema of a scores row: path (text; path_b64 holds the exact bytes of a path that
    is not UTF-8), status ok|error, error, the image scores, a `class_<name>` share per class,
    the embedding as a fixed-size list, the model id and the run id. An error row's scores and
    shares are null and its embedding is D NaNs: pyarrow before 20 writes no null fixed-size
    list to Parquet."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("path_b64", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            *[(name, pa.float64()) for name in SCORE_COLUMNS],
            *[(column, pa.float32()) for column in class_columns(class_names).values()],
            ("embedding", pa.list_(pa.float32(), embedding_dim)),
            ("model", pa.string()),
            ("run", pa.string()),
            # score --regions: each cell's picture pixels, the mean of each region map over it
            # (null: an error row, or a map the model does not serve)
            # and the class predicted on most of it (-1: none)
            *(
                [
                    ("region_pixels", pa.list_(pa.int32())),
                    *[(f"region_{name}", pa.list_(pa.float32())) for name in REGION_MAPS],
                    ("region_class", pa.list_(pa.int16())),
                ]
                if regions
                else []
            ),
        ]
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def rows_table(
    records: Sequence[dict[str, Any]],
    embeddings: np.ndarray | None,
    class_names: Sequence[str],
    embedding_dim: int,
    run: str,
    regions: bool = False,
) -> Any:
    """Records (as `records.record_ok` / `record_error` make them) -> a pyarrow Table in the
    scores schema (with the region columns when `regions`); `embeddings` [N, D] holds the ok
    records' rows in order (error rows get NaNs)."""
    import pyarrow as pa

    n, d = len(records), embedding_dim
    ok = np.array([r["status"] == "ok" for r in records], dtype=bool)
    vectors = np.full((n, d), np.nan, np.float32)  # error rows: NaN (see scores_schema)
    if ok.any():
        vectors[ok] = np.asarray(embeddings, dtype=np.float32).reshape(-1, d)
    fields = [path_fields(r["path"]) for r in records]
    shares = [r["class_fraction"] or {} for r in records]
    columns: dict[str, Any] = {
        "path": [f["path"] for f in fields],
        "path_b64": [f.get("path_b64") for f in fields],
        "status": [r["status"] for r in records],
        "error": [r["error"] for r in records],
        **{name: [r.get(name) for r in records] for name in SCORE_COLUMNS},
        **{
            column: [s.get(c) if o else None for s, o in zip(shares, ok, strict=True)]
            for c, column in class_columns(class_names).items()
        },
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), d),
        "model": [r["model"] for r in records],
        "run": [run] * n,
    }
    if regions:
        cells = [r.get("regions") or {} for r in records]
        for name in CELL_FIELDS:
            columns[f"region_{name}"] = [c.get(name) for c in cells]
    return pa.Table.from_pydict(columns, schema=scores_schema(class_names, d, regions))


def batch_table(
    paths: Sequence[str],
    out: dict[str, np.ndarray],
    spec: ModelSpec,
    run: str,
) -> Any:
    """One inferred batch as rows: the same records (and rounding) as scores.jsonl's."""
    names, model = spec.class_names, spec.model_id
    records = [record_ok(p, out, i, i, model, names) for i, p in enumerate(paths)]
    regions = "region_pixels" in out
    return rows_table(records, out["embedding"], names, spec.embedding_dim, run, regions)


def errors_table(
    failed: Sequence[tuple[str, str]], spec: ModelSpec, run: str, regions: bool = False
) -> Any:
    records = [record_error(p, reason, spec.model_id) for p, reason in failed]
    return rows_table(records, None, spec.class_names, spec.embedding_dim, run, regions)


def holds_regions(meta: dict[str, Any]) -> bool:
    """Whether the out dir's scores keep cells (`score --regions`), as its meta.json says."""
    return bool((meta.get("settings") or {}).get("regions"))


# ----------------------------------------------------------------------------------- parts
def part_files(folder: Location) -> list[Location]:
    """The part files of a scores.parquet folder in the order they were written."""
    folder = location(folder)
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def next_sequence(folder: Location) -> int:
    """The sequence number of the next run writing into `folder` (1 for the first)."""
    seqs = [int(m.group(1)) for p in part_files(folder) if (m := _PART.match(p.name))]
    return max(seqs, default=0) + 1


def part_prefix(sequence: int, run: str) -> str:
    """How the part files of one run begin: they sort after every earlier run's."""
    return f"{sequence:06d}-{run}-"


@contextlib.contextmanager
def _opened(part: Location) -> Iterator[Any]:
    """What pyarrow.parquet reads a part from: its path, or the object opened for ranged reads
    (the store's own errors end the run as StoreError; a torn part is the caller's to skip)."""
    if not isinstance(part, ObjectPath):
        yield part
        return
    with part.open_input() as source:
        yield source


def read_parts(
    folder: Location,
    columns: Sequence[str] | None = None,
    unreadable: list[Location] | None = None,
) -> Any:
    """Every readable part, in order, as one pyarrow Table of `columns` (all by default).

    A part that cannot be read (its writer was killed mid-file) is skipped with a warning and
    added to `unreadable`; a part whose columns differ from the first part's (another schema)
    is a StoreError naming both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def skip(part: Location, exc: Exception) -> None:
        print(f"warning: {part}: unreadable Parquet part, skipped ({exc})", file=sys.stderr)
        if unreadable is not None:
            unreadable.append(part)

    tables: list[Any] = []
    first: tuple[Location, dict[str, Any]] | None = None
    for part in part_files(folder):
        with _opened(part) as source:
            try:
                schema = pq.read_schema(source)
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
                skip(part, exc)
                continue
            names = list(columns) if columns else schema.names
            missing = [n for n in names if n not in schema.names]
            if missing:
                raise StoreError(
                    f"{part}: no column {', '.join(missing)}: not a part of these scores; move "
                    f"it out of {folder}"
                )
            types = {n: schema.field(n).type for n in names}
            if first is None:
                first = (part, types)
            elif types != first[1]:
                odd = next(n for n in {**first[1], **types} if first[1].get(n) != types.get(n))
                raise StoreError(
                    f"{part}: another schema than {first[0].name} (column {odd}): not a part "
                    f"of these scores; move it out of {folder}"
                )
            try:
                tables.append(pq.read_table(source, columns=names))
            except Exception as exc:
                skip(part, exc)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="none")


def absent_cell_columns(folder: Location, regions: bool) -> tuple[str, ...]:
    """The cell columns the parts already in `folder` lack (`region_class`, when they were
    written before cells carried their class): parts added to them leave those out too, so
    every part keeps one schema."""
    import pyarrow.parquet as pq

    if not regions:
        return ()
    for part in part_files(folder):
        with _opened(part) as source:
            try:
                names = pq.read_schema(source).names
            except Exception:  # an unreadable part: read_parts skips it
                continue
        if "region_class" not in names:
            return ("region_class",)
    return ()


def counting(table: Any) -> np.ndarray:
    """Indices of the rows that count, one per path, in row order: a path's last ok row, or its
    last row when none is ok. This is `records.replaces` folded over the rows in the order they
    were written, computed column-wise (a test checks the two agree)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64)
    raw = table.column("path_b64")
    key = table.column("path") if raw.null_count == n else pc.coalesce(raw, table.column("path"))
    ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
    rank = np.arange(n, dtype=np.int64) + ok.astype(np.int64) * n  # ok beats error, later wins
    grouped = pa.table({"key": key, "rank": rank}).group_by("key", use_threads=False)
    best = grouped.aggregate([("rank", "max")]).column("rank_max").to_numpy()
    return np.sort(best % n)


def _equals(table: Any, column: str, value: str) -> np.ndarray:
    """[N] bool: which rows of `table` hold `value` in `column`."""
    import pyarrow.compute as pc

    return pc.equal(table.column(column), value).to_numpy(zero_copy_only=False).astype(bool)


def _paths(table: Any) -> list[str]:
    texts = table.column("path").to_pylist()
    raw = table.column("path_b64").to_pylist()
    return [record_path({"path": t, "path_b64": b}) for t, b in zip(texts, raw, strict=True)]


def _vectors(table: Any, dim: int) -> np.ndarray:
    """[N, D] float32 of an embedding column without nulls."""
    values = table.column("embedding").combine_chunks().flatten()
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def is_parquet_out(source: Location) -> bool:
    """Whether `source` (an out dir or its scores) holds Parquet scores."""
    source = location(source)
    return source.name == SCORES_PARQUET or (source / SCORES_PARQUET).is_dir()


def holds_scores(out: Location) -> bool:
    """Whether the folder `out` holds scores.parquet parts."""
    return bool(part_files(location(out) / SCORES_PARQUET))


def read_parquet_table(folder: Location, meta: dict[str, Any]) -> Table:
    """A scores.parquet folder (its out dir's `meta` read) as a selection table: the columns
    selection needs are read at once, the embeddings only when asked (`Table.embeddings`)."""
    out = folder.parent
    names = class_names_of(meta)
    shares = list(class_columns(names).values())
    columns = ["path", "path_b64", "status", "error", "model", *SCORE_COLUMNS, *shares]
    unreadable: list[Location] = []
    table = read_parts(folder, columns, unreadable)
    if table is None:
        if not folder.is_dir():
            raise StoreError(f"no scores at {folder}")
        schema = scores_schema(names, int(meta["embedding_dim"]), holds_regions(meta))
        table = schema.empty_table().select(columns)
    keep = counting(table)
    if len(keep) < table.num_rows:  # some path has several rows: keep the one that counts
        table = table.take(keep)
    mine = _equals(table, "model", meta["model"])
    ok = _equals(table, "status", "ok")
    paths = _paths(table)
    for i in np.flatnonzero(~mine):
        print(f"warning: {paths[i]}: scored by another model, ignored", file=sys.stderr)
    good = np.flatnonzero(mine & ok)
    failed = np.flatnonzero(mine & ~ok)
    reasons = table.column("error").take(failed).to_pylist()

    def values(name: str, dtype: type) -> np.ndarray:  # the scored rows' values (NaN: null)
        return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)[good]

    fractions = np.zeros((len(good), len(shares)), np.float32)  # [N, C]
    for j, name in enumerate(shares):
        fractions[:, j] = values(name, np.float32)
    rows_in_parts = keep[good]

    def embeddings() -> np.ndarray:
        full = read_parts(folder, ["embedding"])
        return _vectors(full.take(rows_in_parts), int(meta["embedding_dim"]))

    def regions() -> RegionCells:
        absent = absent_cell_columns(folder, True)
        names = [n for n in CELL_FIELDS if f"region_{n}" not in absent]
        cells = read_parts(folder, [f"region_{n}" for n in names]).take(rows_in_parts)
        columns = cells.to_pydict()
        rows = [{n: columns[f"region_{n}"][i] for n in names} for i in range(cells.num_rows)]
        if any(r["pixels"] is None for r in rows):
            raise StoreError(f"rows of {folder} hold no regions: score with --regions afresh")
        return RegionCells.from_lists(rows)

    return Table(
        out=out,
        meta=meta,
        paths=[paths[i] for i in good],
        scores={name: values(name, np.float64) for name in SCORE_COLUMNS},
        rows=np.arange(len(good), dtype=np.int64),
        errors={paths[i]: str(why) for i, why in zip(failed, reasons, strict=True)},
        fractions=fractions,
        source=folder.absolute(),
        load_vectors=embeddings,
        load_regions=regions if holds_regions(meta) else None,
        unreadable=[str(p) for p in unreadable],
    )


def parquet_records(
    out: Path, meta: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Every row of an out dir's scores.parquet in order as (record, embedding or None), the
    record as `records.record_ok` / `record_error` make them (for merge)."""
    names, dim = class_names_of(meta), int(meta["embedding_dim"])
    columns = class_columns(names)
    table = read_parts(Path(out) / SCORES_PARQUET)
    if table is None:
        return
    for batch in table.to_batches(max_chunksize=PART_ROWS):
        paths = _paths(batch)
        values = batch.column("embedding").values.to_numpy(zero_copy_only=False)
        base = batch.column("embedding").offset
        rows = batch.select([c for c in batch.schema.names if c not in ("embedding",)])
        for i, r in enumerate(rows.to_pylist()):
            ok = r["status"] == "ok"
            start = (base + i) * dim
            record = {
                "path": paths[i],
                "status": r["status"],
                "error": r["error"],
                **{name: r[name] for name in SCORE_COLUMNS},
                "class_fraction": {c: r[column] for c, column in columns.items()} if ok else None,
                "row": None,
                "model": r["model"],
            }
            if ok and r.get("region_pixels") is not None:
                record["regions"] = {
                    name: r[f"region_{name}"]
                    for name in CELL_FIELDS
                    if r.get(f"region_{name}") is not None
                }
            yield record, (values[start : start + dim].astype(np.float32) if ok else None)


def write_part(part: Location, table: Any) -> None:
    """Write `table` as the part `part`, whole or not at all (a local file is renamed into
    place; an object store puts an object whole)."""
    import pyarrow.parquet as pq

    if isinstance(part, ObjectPath):
        part.write_with(lambda stream: pq.write_table(table, stream))
    else:
        with atomic_output(part) as tmp:
            pq.write_table(table, tmp)


# -------------------------------------------------------------------------------------- writer
class PartRows:
    """A scoring `Sink` holding scores rows (`batch_table`, `errors_table`) as Arrow tables, in
    the order they come, until they are taken to be written as a part. `done`: the paths scored
    OK (those given, and those appended since), which a `Scorer` skips."""

    def __init__(
        self,
        spec: ModelSpec,
        run: str,
        regions: bool,
        done: set[str] | None = None,
        absent: Sequence[str] = (),
    ) -> None:
        self.spec, self.run, self.regions = spec, run, regions
        self.absent = list(absent)  # columns the out dir's earlier parts lack
        self.done = set() if done is None else done
        self.pending: list[Any] = []
        self.rows = 0

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None:
        self._add(batch_table(paths, out, self.spec, self.run))
        self.done.update(paths)

    def append_error(self, path: str, reason: str) -> None:
        self._add(errors_table([(path, reason)], self.spec, self.run, self.regions))

    def _add(self, rows: Any) -> None:
        self.pending.append(rows.drop_columns(self.absent) if self.absent else rows)
        self.rows += rows.num_rows

    def take(self) -> Any | None:
        """The rows held, as one table (None when there are none); none are held after."""
        import pyarrow as pa

        if not self.pending:
            return None
        table = pa.concat_tables(self.pending)
        self.pending, self.rows = [], 0
        return table


class ParquetWriter(PartRows):
    """Writes scores.parquet parts into `out`, resuming what is there (`outdir.open_writer`
    checks first that the same model wrote it).

    Rows are held until `PART_ROWS` gather (or the run ends), then written as one part,
    atomically: a killed run loses at most the rows of its last part, which a re-run scores
    again."""

    def __init__(self, out: Location, spec: ModelSpec, part_rows: int = PART_ROWS) -> None:
        self.out, self.part_rows = location(out), part_rows
        self.folder = self.out / SCORES_PARQUET
        self.folder.mkdir(exist_ok=True)
        done = resumed_paths(self.folder, spec.model_id)
        regions = holds_regions(json.loads((self.out / "meta.json").read_text()))
        absent = absent_cell_columns(self.folder, regions)
        super().__init__(spec, new_run_id(), regions, done, absent)
        self.prefix = part_prefix(next_sequence(self.folder), self.run)
        self.parts = 0

    def _add(self, rows: Any) -> None:
        super()._add(rows)
        if self.rows >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write the rows held as one part."""
        table = self.take()
        if table is None:
            return
        write_part(self.folder / f"{self.prefix}{self.parts:05d}.parquet", table)
        self.parts += 1

    def close(self) -> None:
        self.flush()


def done_paths(folder: Location, model: str, unreadable: list[Location] | None = None) -> set[str]:
    """The paths whose counting row in `folder` is ok and by `model`: skipped on resume (the
    parts that cannot be read are added to `unreadable`)."""
    table = read_parts(folder, ["path", "path_b64", "status", "model"], unreadable)
    if table is None:
        return set()
    table = table.take(counting(table))
    ok, ours = _equals(table, "status", "ok"), _equals(table, "model", model)
    paths = _paths(table)
    return {paths[i] for i in np.flatnonzero(ok & ours)}


def resumed_paths(folder: Location, model: str) -> set[str]:
    """`done_paths` for a writer resuming `folder` (holding its lock): a part that cannot be
    read is set aside as `.<name>.unreadable`, which every reader skips, and its images are
    scored again."""
    unreadable: list[Location] = []
    done = done_paths(folder, model, unreadable)
    for part in unreadable:
        part.rename(part.with_name(f".{part.name}.unreadable"))
        print(f"warning: {part}: set aside; its images are scored again", file=sys.stderr)
    return done


def write_parquet_records(
    out: Path, rows: Iterator[tuple[dict[str, Any], np.ndarray | None]], meta: dict[str, Any]
) -> None:
    """Records with their embeddings (merge's winners) as the parts of out/scores.parquet,
    replacing any there."""
    folder = Path(out) / SCORES_PARQUET
    for old in part_files(folder):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    names, dim, run = class_names_of(meta), int(meta["embedding_dim"]), new_run_id()
    prefix, parts = part_prefix(1, run), 0
    chunk: list[tuple[dict[str, Any], np.ndarray | None]] = []

    def write() -> None:
        nonlocal parts, chunk
        vectors = np.array([v for _, v in chunk if v is not None], np.float32).reshape(-1, dim)
        table = rows_table([r for r, _ in chunk], vectors, names, dim, run, holds_regions(meta))
        write_part(folder / f"{prefix}{parts:05d}.parquet", table)
        parts, chunk = parts + 1, []

    for item in rows:
        chunk.append(item)
        if len(chunk) == PART_ROWS:
            write()
    if chunk or not parts:
        write()
