"""The out dir: what `deal-client score` writes and `select` / `merge` read.

    meta.json         the model's id and contract metadata (written first, checked on resume)
    scores.jsonl      one JSON object per input, appended and flushed as results arrive
    embeddings.f32    raw float32 rows [D] appended; a record's "row" indexes it
    selection.txt     the selected paths, best first (the paths' original bytes, one per line)
    selection.json    strategy, k, model id and the ranked rows with their scores
    maps/             optional PNGs of the selected images

A record: {"path", "status": "ok"|"error", "error", "ds", "de", "entropy", "class_fraction",
"row", "model"}; "class_fraction" maps each class name to its share of the picture (format 2;
format 1 out dirs, a bare list in the model's class order, are read by select and merge but not
written to). Paths are absolute. Every file is valid UTF-8 JSON: a path whose bytes are not
UTF-8 is written as text with those bytes shown as `\\xNN`, plus "path_b64", the exact bytes in
base64, which readers use instead (`record_path`). Which record counts for a path is one rule,
`replaces`. After a crash, a partial last line and embedding rows no record points to are cut
off when the out dir is opened again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dealseg.core.contract import ContractError, ModelSpec
from dealseg.core.files import atomic_output, atomic_write
from dealseg.core.ranking import SCORE_COLUMNS, Pick, Selection, Skip

SCORES = "scores.jsonl"
EMBEDDINGS = "embeddings.f32"
META = "meta.json"
SELECTION_TXT = "selection.txt"
SELECTION_JSON = "selection.json"
MAPS = "maps"
LOCK = ".lock"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: class_fraction as a list


class StoreError(RuntimeError):
    """The out dir cannot be used as asked (other model, damaged files, nothing to read)."""


def _dumps(record: dict[str, Any]) -> bytes:
    """One JSON line of a record, its path written as `path_fields` says."""
    fields = {k: v for k, v in record.items() if k not in ("path", "path_b64")}
    line = json.dumps({**path_fields(record["path"]), **fields}, ensure_ascii=True, allow_nan=False)
    return (line + "\n").encode("ascii")


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


# ------------------------------------------------------------------------------------ metadata
def write_meta(out: Path, spec: ModelSpec) -> None:
    meta = {
        "format": FORMAT,
        "model": spec.model_id,
        "embedding_dim": spec.embedding_dim,
        "metadata": spec.to_metadata(),
    }
    atomic_write(out / META, json.dumps(meta, indent=1).encode())


def read_meta(out: Path) -> dict[str, Any]:
    try:
        meta = json.loads((out / META).read_text())
    except FileNotFoundError:
        raise StoreError(f"{out} has no {META}: not a `deal-client score` out dir") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{out / META}: unreadable ({exc})") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise StoreError(
            f"{out / META}: format {meta.get('format')}, this client reads "
            f"{' and '.join(map(str, READABLE_FORMATS))}"
        )
    return meta


def spec_of(meta: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_metadata(meta["metadata"])


def class_names_of(meta: dict[str, Any]) -> tuple[str, ...]:
    """The model's class names from an out dir's meta.json; none when its metadata lacks them."""
    try:
        return spec_of(meta).class_names
    except (ContractError, KeyError):
        return ()


# ------------------------------------------------------------------------------------- records
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

    Within one scores.jsonl the later record counts (a re-scored image, an error retried), but
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
        "ds": _finite(out["ds"][i]),
        "de": _finite(out["de"][i]),
        "entropy": _finite(out["entropy"][i]),
        "class_fraction": {c: round(float(v), 6) for c, v in zip(classes, fractions, strict=True)},
        "row": row,
        "model": model,
    }


def record_error(path: str, reason: str, model: str) -> dict:
    return {
        "path": path,
        "status": "error",
        "error": reason,
        "ds": None,
        "de": None,
        "entropy": None,
        "class_fraction": None,
        "row": None,
        "model": model,
    }


def _cut_partial_line(path: Path) -> int:
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
                yield record


# -------------------------------------------------------------------------------------- writer
def _lock(out: Path) -> BinaryIO:
    """An exclusive lock on the out dir, held until the returned file is closed."""
    import fcntl

    f = open(out / LOCK, "wb")  # noqa: SIM115 - the open file is the lock
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StoreError(
            f"another deal-client is writing to {out}; wait for it or use another --out"
        ) from None
    return f


def check_resumable(out: Path, model: str, scores: Path, holds_scores: bool) -> None:
    """Raise StoreError unless `model` may write into the out dir `out`: its meta.json names
    that model in this format, or there is none and `scores` (JSONL or Parquet) holds nothing."""
    if (out / META).exists():
        meta = read_meta(out)
        if meta["format"] != FORMAT:
            raise StoreError(
                f"{out} was written by an older deal-client (format {meta['format']}: "
                "class_fraction as a list); use another --out (`deal-client select` and "
                "`merge` still read it)"
            )
        old = meta["model"]
        if old != model:
            raise StoreError(
                f"{out} holds scores of model {old}, but this run uses {model}; "
                f"use another --out, or delete {scores} to start over"
            )
    elif holds_scores:
        raise StoreError(f"{scores} exists but {META} does not; use another --out")


class ScoreWriter:
    """Appends records and embedding rows to an out dir; resumes one written by the same model."""

    def __init__(self, out: Path, spec: ModelSpec) -> None:
        self.out, self.spec, self.model = Path(out), spec, spec.model_id
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.out)
        try:
            self._open()
        except BaseException:
            self._lock.close()
            raise

    def _open(self) -> None:
        scores, embeddings = self.out / SCORES, self.out / EMBEDDINGS
        holds = scores.exists() and scores.stat().st_size > 0
        check_resumable(self.out, self.model, scores, holds)
        from .columnar import SCORES_PARQUET, part_files

        if part_files(self.out / SCORES_PARQUET):
            raise StoreError(
                f"{self.out} holds {SCORES_PARQUET}: use --format parquet to resume it, or "
                "another --out"
            )
        write_meta(self.out, self.spec)
        scores.touch()
        embeddings.touch()
        _cut_partial_line(scores)
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

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            _dumps(record_ok(p, out, i, first + i, self.model, names)) for i, p in enumerate(paths)
        ]
        self.next_row += len(paths)
        self._scores.write(b"".join(lines))
        self._scores.flush()
        self.replaced += sum(p in self.ok for p in paths)
        self.ok.update(dict.fromkeys(paths, True))

    def append_error(self, path: str, reason: str) -> None:
        self._scores.write(_dumps(record_error(path, reason, self.model)))
        self._scores.flush()
        self.replaced += path in self.ok
        if replaces(self.ok.get(path), False):
            self.ok[path] = False

    def close(self) -> None:
        """Flush and close; then rewrite scores.jsonl if a path got a second record.

        The files and the lock are released even when flushing fails (a full disk): the error
        is raised after, and the next run cuts what was written half-way."""
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
            self._lock.close()


# --------------------------------------------------------------------------------------- table
@dataclass
class Table:
    """The OK records of a scores.jsonl as arrays (the input of selection) plus its errors."""

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


def load_table(scores_path: Path) -> Table:
    """Read an out dir's scores.jsonl or scores.parquet (and meta.json beside it) for selection.

    The record that counts for a path is the one `replaces` keeps. Records are streamed into
    flat arrays (about 100 bytes and 4 per class a path, beside the path itself), so a pool of
    millions fits in memory.
    """
    from .columnar import is_parquet_out, load_parquet_table

    scores_path = Path(scores_path)
    if is_parquet_out(scores_path):
        return load_parquet_table(scores_path)
    if scores_path.is_dir():
        scores_path = scores_path / SCORES
    if not scores_path.is_file():
        raise StoreError(f"no scores file at {scores_path}")
    out = scores_path.parent
    meta = read_meta(out)
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
    return Table(
        out=out,
        meta=meta,
        paths=[paths[i] for i in keep],
        scores={name: np.frombuffer(col, dtype=np.float64)[keep] for name, col in cols.items()},
        rows=np.frombuffer(rows, dtype=np.int64)[keep],
        errors={paths[i]: reasons[i] for i in sorted(reasons) if mine[i]},
        fractions=np.frombuffer(shares, dtype=np.float32).reshape(len(paths), c)[keep],
    )


# ----------------------------------------------------------------------------------- selection
NEAR_DUPLICATES_KEPT = 500  # near-duplicates listed in selection.json (all are counted)


def selection_rows(table: Table, picks: Sequence[Pick]) -> list[dict[str, Any]]:
    return [
        {
            "rank": n,
            **path_fields(table.paths[p.index]),
            "score": _finite(p.score),
            **{name: _finite(col[p.index]) for name, col in table.scores.items()},
            "row": int(table.rows[p.index]),
        }
        for n, p in enumerate(picks, 1)
    ]


def _near_duplicates(table: Table, skipped: Sequence[Skip]) -> list[dict[str, Any]]:
    """The images skipped as near-duplicates of a pick, in the order the ranking met them."""
    rows = []
    for s in skipped:
        if s.reason == "duplicate" and s.of is not None and len(rows) < NEAR_DUPLICATES_KEPT:
            of = path_fields(table.paths[s.of])
            rows.append(
                {
                    **path_fields(table.paths[s.index]),
                    "of": of["path"],
                    **({"of_b64": of["path_b64"]} if "path_b64" in of else {}),
                    "cosine": _finite(s.cosine or 0.0),
                }
            )
    return rows


def write_selection(
    out: Path, table: Table, chosen: Selection, settings: dict[str, Any], shortfall: list[str]
) -> dict[str, Any]:
    """Write selection.txt and selection.json atomically into `out`; return the JSON object.

    `settings` (strategy, k, seed, diverse, labeled, balance, per-group) are written as they are,
    and again under "settings" with the scores file, which tells one selection from another.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = selection_rows(table, chosen.picks)
    skipped = [s.reason for s in chosen.skipped]
    doc = {
        **settings,
        "selected": len(rows),
        "model": table.meta["model"],
        "scores": str(table.scores_file),
        "pool_ok": len(table),
        "pool_failed": len(table.errors),
        "shortfall": shortfall,
        "skipped": {reason: skipped.count(reason) for reason in sorted(set(skipped))},
        "settings": {**settings, "scores": str(table.scores_file)},
        "near_duplicates": _near_duplicates(table, chosen.skipped),
        "rows": rows,
    }
    atomic_write(out / SELECTION_JSON, json.dumps(doc, indent=1, ensure_ascii=True).encode())
    picked = b"".join(os.fsencode(table.paths[p.index]) + b"\n" for p in chosen.picks)
    atomic_write(out / SELECTION_TXT, picked)
    return doc


def read_selection(out: Path) -> dict[str, Any] | None:
    """An out dir's selection.json, or None when it has none (or an unreadable one)."""
    try:
        doc = json.loads((Path(out) / SELECTION_JSON).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --------------------------------------------------------------------------------------- merge
def out_records(out: Path) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Every record of an out dir (scores.jsonl or scores.parquet) in the order written, with
    its embedding row (None for an error record)."""
    from .columnar import is_parquet_out, parquet_records

    out = Path(out)
    if is_parquet_out(out):
        yield from parquet_records(out)
        return
    emb = _open_embeddings(out, int(read_meta(out)["embedding_dim"]))
    for r in iter_records(out / SCORES):
        yield r, (np.asarray(emb[int(r["row"])], np.float32) if r["status"] == "ok" else None)


def _winners(sources: Sequence[Iterable[dict[str, Any]]]) -> tuple[dict[str, tuple[int, int]], int]:
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


def compact_scores(out: Path) -> None:
    """Drop records replaced by later ones (errors retried by a re-run): one record per path."""
    path = Path(out) / SCORES
    winners, count = _winners([iter_records(path)])
    if count == len(winners):
        return
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for n, r in enumerate(iter_records(path)):
            if winners[r["path"]] == (0, n):
                f.write(_dumps(r))


def scores_format(out: Path) -> str:
    """ "parquet" for an out dir holding scores.parquet, else "jsonl"."""
    from .columnar import is_parquet_out

    return "parquet" if is_parquet_out(Path(out)) else "jsonl"


def merge_outputs(inputs: Sequence[Path], out: Path, fmt: str = "jsonl") -> None:
    """Combine the out dirs of shard runs (same model; JSONL or Parquet) into `out` as `fmt`
    (jsonl | parquet), each path once.

    Two streaming passes: the first decides which record of each path counts (ok beats error,
    the first input wins), the second copies those records and their embedding rows.
    """
    inputs = [Path(i) for i in inputs]
    metas = [read_meta(i) for i in inputs]
    models = sorted({m["model"] for m in metas})
    if len(models) > 1:
        raise StoreError(f"cannot merge scores of different models: {', '.join(models)}")
    formats = sorted({m["format"] for m in metas})
    if len(formats) > 1:
        raise StoreError(f"cannot merge out dirs of formats {formats}: re-score the older ones")
    if fmt == "parquet" and formats != [FORMAT]:
        raise StoreError(f"out dirs of format {formats[0]} merge into JSONL only (--format jsonl)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    other = "jsonl" if fmt == "parquet" else "parquet"
    if any(i.resolve() == out.resolve() for i in inputs) or (
        (out / META).exists() and scores_format(out) == other and fmt == "jsonl"
    ):
        raise StoreError(f"{out} is an input or holds {other} scores; merge into another --out")
    winners, _ = _winners([(r for r, _ in out_records(i)) for i in inputs])
    chosen = (
        (r, v)
        for i, src in enumerate(inputs)
        for n, (r, v) in enumerate(out_records(src))
        if winners[r["path"]] == (i, n)
    )
    with _lock(out):
        if fmt == "parquet":
            from .columnar import write_parquet_records

            if (out / SCORES).exists():
                raise StoreError(f"{out} holds {SCORES}; merge into another --out")
            write_parquet_records(out, chosen, metas[0])
        else:
            _write_jsonl(out, chosen)
        atomic_write(out / META, json.dumps(metas[0], indent=1).encode())


def _write_jsonl(out: Path, chosen: Iterable[tuple[dict[str, Any], np.ndarray | None]]) -> None:
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
            fs.write(_dumps(r))


def _open_embeddings(out: Path, d: int) -> np.ndarray:
    path = out / EMBEDDINGS
    n = path.stat().st_size // (4 * d) if path.exists() else 0
    if n == 0:
        return np.zeros((0, d), np.float32)
    return np.memmap(path, dtype="<f4", mode="r", shape=(n, d))
