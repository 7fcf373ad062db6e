"""The out dir: a run's folder, what `deal-client score` writes and `select` / `merge` read.

    meta.json         the model's id, contract metadata and the settings that change a score
                      (written first, checked on resume, read back by select)
    scores.jsonl      one record per input, appended as results arrive (`jsonl`), and
    embeddings.f32    its embedding rows; or
    scores.parquet/   the same records as the part files of one table (`parquet`)
    selection.txt     the selected paths, best first (the paths' original bytes, one per line)
    selection.json    strategy, k, model id and the ranked rows with their scores
    maps/             optional PNGs of the selected images
    report.html       the selection for a person (`report`), report_files/ its pictures
    export/<format>/  the selection for a labelling tool (`handoff`)
    .lock             held by the one writer (a local out dir)

This module owns the folder: the lock, meta.json, whether a run may resume it, which format it
holds (`scores_format`) and the writer of that format (`open_writer`), reading its scores as a
table whatever the format (`load_table`), merging folders and the selection files. The formats'
own files are `jsonl`'s and `parquet`'s, which know nothing of the folder around them; the
record both hold is `records`'.

OUT may be a prefix in object storage (`s3://bucket/run`, gs://; `objects.ObjectPath`): the
same files under it, scores.parquet/ only, each written in one upload. Object storage has no
lock: two runs into one prefix at once are the user's to avoid (their parts never overwrite
each other; the selection written last wins), and a run whose meta.json was rewritten by another
meanwhile stops before its selection (`claim`). Maps, report, regions and exports are local
files: `deal-client select OUT --out DIR` writes them into a local DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dealseg.core.contract import ModelSpec
from dealseg.core.files import atomic_write
from dealseg.core.ranking import Choice, Pick, Pool, Skip, novel
from dealseg.core.strategies import NOVEL_THRESHOLD

from . import jsonl, parquet
from .logs import extracted_image, frame_fields
from .objects import Location, ObjectPath, location, write_file
from .records import SCORES, StoreError, Table, finite, path_fields, record_path, winners

META = "meta.json"
SELECTION_TXT = "selection.txt"
SELECTION_JSON = "selection.json"
MAPS = "maps"
EXPORTS = "export"  # `deal-client export`'s files, export/<format>/
LOCK = ".lock"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: class_fraction as a list
SCORE_FORMATS = ("jsonl", "parquet")  # scores.jsonl + embeddings.f32 | scores.parquet/
_FILES = {"jsonl": SCORES, "parquet": parquet.SCORES_PARQUET}


# ------------------------------------------------------------------------------------ metadata
def write_meta(out: Location, spec: ModelSpec, scoring: Mapping[str, Any] | None = None) -> None:
    """meta.json: the format, the model and, under "settings", `scoring`: every setting that
    changes a score (`settings.ScoreSettings.scoring`)."""
    meta = {
        "format": FORMAT,
        "model": spec.model_id,
        "embedding_dim": spec.embedding_dim,
        "metadata": spec.to_metadata(),
        "settings": dict(scoring or {}),
    }
    write_file(out / META, json.dumps(meta, indent=1).encode())


def read_meta(out: Location) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------- write
@contextlib.contextmanager
def out_lock(out: Location) -> Iterator[None]:
    """An exclusive lock on the out dir `out` (made if missing), held inside the block. Object
    storage has none: for a prefix there, only its bucket is checked (see the module text)."""
    import fcntl

    out = location(out)
    if isinstance(out, ObjectPath):
        out.check_bucket()
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "wb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another deal-client is writing to {out}; wait for it or use another --out"
            ) from None
        yield


def recorded_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that changed the scores of an out dir, as its meta.json records them (none
    for an out dir written before they were recorded)."""
    return dict(meta.get("settings") or {})


def check_resumable(
    out: Location, model: str, fmt: str, scoring: Mapping[str, Any] | None = None
) -> None:
    """Raise StoreError unless `model` may write `fmt` scores into the out dir `out` with the
    settings `scoring`: it holds no scores of the other format, and its meta.json names that
    model in this format and records no other value of those settings, or there is none and it
    holds no scores."""
    if fmt not in SCORE_FORMATS:
        raise ValueError(f"unknown scores format {fmt!r}; choose {' or '.join(SCORE_FORMATS)}")
    out = location(out)
    if isinstance(out, ObjectPath) and fmt != "parquet":
        raise StoreError(
            f"{out} is in object storage, which takes whole objects, not appended lines: "
            "scores there are Parquet (--format parquet)"
        )
    other = SCORE_FORMATS[1 - SCORE_FORMATS.index(fmt)]
    if _holds(out, other):
        raise StoreError(
            f"{out} holds {_FILES[other]}: use --format {other} to resume it, or another --out"
        )
    scores = out / _FILES[fmt]
    if not (out / META).exists():
        if _holds(out, fmt):
            raise StoreError(f"{scores} exists but {META} does not; use another --out")
        return
    meta = read_meta(out)
    if meta["format"] != FORMAT:
        raise StoreError(
            f"{out} was written by an older deal-client (format {meta['format']}: "
            "class_fraction as a list); use another --out (`deal-client select` and "
            "`merge` still read it)"
        )
    if meta["model"] != model:
        raise StoreError(
            f"{out} holds scores of model {meta['model']}, but this run uses {model}; "
            f"use another --out, or delete {scores} to start over"
        )
    old = recorded_settings(meta)
    for name, value in (scoring or {}).items():
        if name in old and old[name] != value:
            flag = "--" + name.replace("_", "-")
            raise StoreError(
                f"{out} holds scores made with {flag} {old[name]}, but this run uses {flag} "
                f"{value}; give {flag} {old[name]} to resume, or use another --out"
            )


def _holds(out: Location, fmt: str) -> bool:
    return (jsonl if fmt == "jsonl" else parquet).holds_scores(out)


@contextlib.contextmanager
def claim(
    out: Location, spec: ModelSpec, fmt: str, scoring: Mapping[str, Any] | None = None
) -> Iterator[Location]:
    """Hold the out dir `out` for a run of `spec`'s model writing `fmt` scores with the
    settings `scoring`: its lock taken, resuming checked (`check_resumable`), meta.json written.
    Yields the folder. In object storage, where there is no lock, a meta.json rewritten by
    another run before the block ends is a StoreError."""
    out = location(out)
    with out_lock(out):
        check_resumable(out, spec.model_id, fmt, scoring)
        write_meta(out, spec, scoring)
        mine = (out / META).read_bytes() if isinstance(out, ObjectPath) else b""
        yield out
        if mine and (out / META).read_bytes() != mine:
            raise StoreError(
                f"{out / META} was rewritten by another run meanwhile: object storage has no "
                "lock, give each run its own --out"
            )


class ScoresWriter(Protocol):
    """What a scoring run writes through (`jsonl.JsonlWriter`, `parquet.ParquetWriter`)."""

    @property
    def done(self) -> set[str]: ...  # paths already scored OK: skipped on resume

    def append_batch(self, paths: Sequence[str], out: dict[str, np.ndarray]) -> None: ...

    def append_error(self, path: str, reason: str) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def open_writer(
    out: Location, spec: ModelSpec, fmt: str = "jsonl", scoring: Mapping[str, Any] | None = None
) -> Iterator[ScoresWriter]:
    """The writer of `fmt` scores (jsonl | parquet) into the out dir `out`, claimed for the
    block (`claim`); it resumes what the same model wrote there with the same `scoring`
    settings, and is closed on exit."""
    with claim(out, spec, fmt, scoring) as folder:
        make = jsonl.JsonlWriter if fmt == "jsonl" else parquet.ParquetWriter
        writer: ScoresWriter = make(folder, spec)
        try:
            yield writer
        finally:
            writer.close()


# ---------------------------------------------------------------------------------------- read
def scores_path(out: Location, fmt: str) -> Location:
    """Where the out dir `out` holds its `fmt` scores, absolute (as selection.json names them)."""
    return (location(out) / _FILES[fmt]).absolute()


def scores_format(out: Location) -> str:
    """ "parquet" for an out dir holding scores.parquet, else "jsonl"."""
    return "parquet" if parquet.is_parquet_out(location(out)) else "jsonl"


def load_table(scores_path: str | os.PathLike[str] | ObjectPath) -> Table:
    """Read an out dir's scores.jsonl or scores.parquet (an out dir, or either scores path, local
    or in object storage; meta.json beside it) for selection: the records that count, as
    arrays."""
    scores_path = location(scores_path)
    if parquet.is_parquet_out(scores_path):
        folder = scores_path
        if folder.name != parquet.SCORES_PARQUET:
            folder = folder / parquet.SCORES_PARQUET
        return parquet.read_parquet_table(folder, read_meta(folder.parent))
    if isinstance(scores_path, ObjectPath):
        scores_path.check_bucket()
        raise StoreError(
            f"no scores.parquet at {scores_path}: scores in object storage are read as Parquet "
            "(`deal-client merge DIR -o NEW --format parquet` makes a Parquet copy of a JSONL "
            "out dir)"
        )
    if scores_path.is_dir():
        scores_path = scores_path / SCORES
    if not scores_path.is_file():
        raise StoreError(f"no scores file at {scores_path}")
    return jsonl.read_jsonl_table(scores_path, read_meta(scores_path.parent))


# ----------------------------------------------------------------------------------- selection
NEAR_DUPLICATES_KEPT = 500  # near-duplicates listed in selection.json (all are counted)


def selection_rows(table: Table, picks: Sequence[Pick]) -> list[dict[str, Any]]:
    return [
        {
            "rank": n,
            **path_fields(table.paths[p.index]),
            "score": finite(p.score),
            **{name: finite(col[p.index]) for name, col in table.scores.items()},
            "row": int(table.rows[p.index]),
            **frame_fields(table.paths[p.index]),
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
                    "cosine": finite(s.cosine or 0.0),
                }
            )
    return rows


def write_selection(
    out: Location,
    table: Table,
    chosen: Choice,
    settings: dict[str, Any],
    shortfall: list[str],
    found: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write selection.txt and selection.json atomically into `out`; return the JSON object.

    `settings` (strategy, k, seed, diverse, labeled, balance, per-group) are written as they are,
    and again under "settings" with the scores file, which tells one selection from another.
    `found` (a region run's frame count `k`) is written beside them, never under "settings":
    it follows from the scores, so a resumed run with the same settings may replace it.
    """
    out = location(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = selection_rows(table, chosen.picks)
    for row in rows:  # a log's frame: where `extract_picks` puts it as an image
        if (image := extracted_image(out, record_path(row))) is not None:
            row["image"] = str(image)
    skipped = [s.reason for s in chosen.skipped]
    doc = {
        **settings,
        **(found or {}),
        "selected": len(rows),
        "model": table.meta["model"],
        "scores": str(table.scores_file),
        "pool_ok": len(table),
        "pool_failed": len(table.errors),
        **({"unreadable_parts": table.unreadable} if table.unreadable else {}),
        "shortfall": shortfall,
        "skipped": {reason: skipped.count(reason) for reason in sorted(set(skipped))},
        "off_domain": _off_domain(table, settings, chosen),
        "settings": {**settings, "scores": str(table.scores_file)},
        "near_duplicates": _near_duplicates(table, chosen.skipped),
        "rows": rows,
    }
    write_file(out / SELECTION_JSON, json.dumps(doc, indent=1, ensure_ascii=True).encode())
    picked = b"".join(os.fsencode(table.paths[p.index]) + b"\n" for p in chosen.picks)
    write_file(out / SELECTION_TXT, picked)
    return doc


def _off_domain(table: Table, settings: dict[str, Any], chosen: Choice) -> dict[str, Any]:
    """The pool's off-domain images (novelty above the selection's threshold, the default's
    without one), how many the selection left out and how many it picked; `known` False when
    the pool has no novelty (a model without novelty statistics)."""
    threshold = float(settings.get("novel_threshold") or NOVEL_THRESHOLD)
    pool = Pool(table.paths, table.scores)
    off = novel(pool, threshold)
    values = table.scores.get("novelty")
    return {
        "threshold": threshold,
        "known": values is not None and bool(np.isfinite(values).any()),
        "pool": int(off.sum()),
        "excluded": chosen.novel_excluded,
        "picked": int(sum(off[p.index] for p in chosen.picks)),
    }


def read_selection(out: Location) -> dict[str, Any] | None:
    """An out dir's selection.json, or None when it has none (or an unreadable one)."""
    try:
        doc = json.loads((location(out) / SELECTION_JSON).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --------------------------------------------------------------------------------------- merge
def out_records(out: Path) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Every record of an out dir (scores.jsonl or scores.parquet) in the order written, with
    its embedding row (None for an error record)."""
    out = Path(out)
    if parquet.is_parquet_out(out):
        return parquet.parquet_records(out, read_meta(out))
    return jsonl.jsonl_records(out, read_meta(out))


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
    scorings = sorted({json.dumps(recorded_settings(m), sort_keys=True) for m in metas})
    if len(scorings) > 1:
        raise StoreError(f"cannot merge scores made with different settings: {', '.join(scorings)}")
    if fmt == "parquet" and formats != [FORMAT]:
        raise StoreError(f"out dirs of format {formats[0]} merge into JSONL only (--format jsonl)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    other = "jsonl" if fmt == "parquet" else "parquet"
    if any(i.resolve() == out.resolve() for i in inputs) or (
        (out / META).exists() and scores_format(out) == other and fmt == "jsonl"
    ):
        raise StoreError(f"{out} is an input or holds {other} scores; merge into another --out")
    counted, _ = winners([(r for r, _ in out_records(i)) for i in inputs])
    chosen = (
        (r, v)
        for i, src in enumerate(inputs)
        for n, (r, v) in enumerate(out_records(src))
        if counted[r["path"]] == (i, n)
    )
    with out_lock(out):
        if fmt == "parquet":
            if (out / SCORES).exists():
                raise StoreError(f"{out} holds {SCORES}; merge into another --out")
            parquet.write_parquet_records(out, chosen, metas[0])
        else:
            jsonl.write_jsonl_records(out, chosen)
        atomic_write(out / META, json.dumps(metas[0], indent=1).encode())
