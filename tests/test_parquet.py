"""Parquet scores (`--format parquet`): one schema, read by select and merge, the same selection
as JSONL; the embedded engine on the tiny exported model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import K, deal_client, embeddings, mixed_pool, records, selections, spec_of_out
from hypothesis import given
from hypothesis import strategies as st

from dealseg.client.outdir import load_table
from dealseg.client.parquet import SCORES_PARQUET, counting, part_files
from dealseg.client.records import replaces
from dealseg.core.classes import class_column


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_pool(tmp_path_factory.mktemp("pool"), 18)


def score(pool: Path, model: Path, out: Path, *args: object) -> None:
    r = deal_client("score", pool, "-k", K, "--model", model, "--out", out, "--no-progress", *args)
    assert r.exit_code == 3, r.stderr  # the bad files
    assert r.stderr.count("failed: ") == 2


@pytest.fixture(scope="module")
def jsonl_out(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jsonl")
    score(pool, tiny_onnx, out)
    return out


@pytest.fixture(scope="module")
def parquet_out(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parquet")
    score(pool, tiny_onnx, out, "--format", "parquet")
    return out


def test_parquet_holds_every_input_in_one_schema(parquet_out: Path, jsonl_out: Path) -> None:
    frame = pq.read_table(parquet_out / SCORES_PARQUET)  # the folder as one table
    spec = spec_of_out(parquet_out)
    names, d = spec.class_names, spec.embedding_dim
    assert frame.schema.field("embedding").type == pa.list_(pa.float32(), d)
    for name in ("path", "status", "error", "ds", "de", "entropy", "model", "run"):
        assert name in frame.schema.names
    assert [class_column(n) for n in names] == [c for c in frame.schema.names if c[:6] == "class_"]
    rows = {r["path"]: r for r in frame.to_pylist()}
    by_path = {r["path"]: r for r in records(jsonl_out)}
    assert rows.keys() == by_path.keys()
    emb = embeddings(jsonl_out)
    for path, want in by_path.items():
        got = rows[path]
        assert got["status"] == want["status"] and got["model"] == want["model"]
        if want["status"] == "error":
            assert got["error"] == want["error"] and np.isnan(got["embedding"]).all()
            continue
        assert got["error"] is None
        for name in ("ds", "de", "entropy"):
            assert got[name] == want[name]
        for n in names:
            assert got[class_column(n)] == np.float32(want["class_fraction"][n])
        assert np.array_equal(np.float32(got["embedding"]), emb[want["row"]])
    assert len({r["run"] for r in rows.values()}) == 1


def test_parquet_and_jsonl_select_the_same_for_every_strategy(
    parquet_out: Path, jsonl_out: Path, tmp_path: Path
) -> None:
    a = selections(parquet_out, tmp_path / "p")
    b = selections(jsonl_out, tmp_path / "j")
    assert a == b
    assert all(a.values())
    t = load_table(parquet_out / SCORES_PARQUET)
    assert len(t.errors) == 2 and t.scores_file == (parquet_out / SCORES_PARQUET).absolute()


def test_a_parquet_run_resumes_and_keeps_its_format(
    parquet_out: Path, pool: Path, tiny_onnx: Path, jsonl_out: Path, tmp_path: Path
) -> None:
    before = part_files(parquet_out / SCORES_PARQUET)
    r = deal_client(
        "score", pool, "-k", K, "--model", tiny_onnx, "-o", parquet_out, "--format", "parquet"
    )
    assert r.exit_code == 3 and "0 scored" in r.stderr  # only the bad files again
    after = part_files(parquet_out / SCORES_PARQUET)
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert pq.read_table(after[-1]).column("status").to_pylist() == ["error", "error"]
    assert len(load_table(parquet_out)) == len(load_table(jsonl_out))
    r = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "-o", parquet_out)
    assert r.exit_code == 1 and "--format parquet" in r.stderr
    r = deal_client(
        "score", pool, "-k", K, "--model", tiny_onnx, "-o", jsonl_out, "--format", "parquet"
    )
    assert r.exit_code == 1 and "--format jsonl" in r.stderr


def test_merge_reads_and_writes_either_format(
    pool: Path, tiny_onnx: Path, parquet_out: Path, tmp_path: Path
) -> None:
    shards = []
    for i, fmt in enumerate(("parquet", "jsonl", "parquet")):
        shards.append(tmp_path / f"shard{i}")
        r = deal_client(
            "score",
            pool,
            "-k",
            K,
            "--model",
            tiny_onnx,
            "-o",
            shards[-1],
            "--shard",
            f"{i}/3",
            "--format",
            fmt,
            "--no-progress",
        )
        assert r.exit_code in (0, 3), r.stderr
    reference = selections(parquet_out, tmp_path / "ref")
    for fmt in ("parquet", "jsonl"):
        merged = tmp_path / f"merged-{fmt}"
        r = deal_client("merge", *shards, "-o", merged, "-k", K, "--format", fmt)
        assert r.exit_code == 3, r.stderr  # the bad files are in the merged scores
        assert (merged / ("scores.jsonl" if fmt == "jsonl" else SCORES_PARQUET)).exists()
        assert selections(merged, tmp_path / fmt) == reference
        assert len(load_table(merged).errors) == 2


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=12))
def test_counting_rows_follow_the_replaces_rule(rows: list[tuple[str, bool]]) -> None:
    table = pa.table(
        {
            "path": [p for p, _ in rows],
            "path_b64": pa.nulls(len(rows), pa.string()),
            "status": ["ok" if ok else "error" for _, ok in rows],
        }
    )
    winner: dict[str, tuple[int, bool]] = {}
    for i, (path, ok) in enumerate(rows):
        old = winner.get(path)
        if replaces(None if old is None else old[1], ok):
            winner[path] = (i, ok)
    assert counting(table).tolist() == sorted(i for i, _ in winner.values())


def _copy_out(parquet_out: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the Parquet out dir (without its selection) and its first part (every input)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(parquet_out, out, ignore=shutil.ignore_patterns("selection.*"))
    return out, part_files(out / SCORES_PARQUET)[0]


@pytest.mark.parametrize("change", ["types", "columns"])
def test_a_part_of_another_schema_is_refused_in_one_line_naming_it(
    parquet_out: Path, tmp_path: Path, change: str
) -> None:
    out, part = _copy_out(parquet_out, tmp_path)
    table = pq.read_table(part)
    if change == "types":
        other = table.set_column(table.schema.get_field_index("ds"), "ds", table["ds"].cast("f4"))
    else:
        other = table.drop_columns(["entropy"])
    stranger = out / SCORES_PARQUET / "000009-feedbeef-00000.parquet"
    pq.write_table(other, stranger)
    r = deal_client("select", out, "-k", K, "--out", tmp_path / "sel")
    assert r.exit_code == 1, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert stranger.name in line and "Traceback" not in r.stderr
    assert not (tmp_path / "sel" / "selection.json").exists()


def test_a_truncated_part_is_counted_in_the_selection_and_scored_again_on_resume(
    parquet_out: Path, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out, part = _copy_out(parquet_out, tmp_path)
    table = pq.read_table(part)
    half = table.num_rows // 2
    for old in part_files(out / SCORES_PARQUET):
        old.unlink()
    first, second = (out / SCORES_PARQUET / f"000001-abcdef-{i:05d}.parquet" for i in (0, 1))
    pq.write_table(table.slice(0, half), first)
    pq.write_table(table.slice(half), second)
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])  # a killed writer
    r = deal_client("select", out, "-k", K, "--out", tmp_path / "sel")
    assert r.exit_code == 3, r.stderr
    assert second.name in r.stderr and "1 Parquet part unreadable" in r.stderr
    doc = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert doc["unreadable_parts"] == [str(second)]
    assert doc["pool_ok"] + doc["pool_failed"] == half
    r = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "-o", out, "--format", "parquet")
    lost = table.slice(half).column("status").to_pylist().count("ok")
    assert r.exit_code == 3 and f"{lost} scored" in r.stderr, r.stderr
    assert not second.exists() and (second.parent / f".{second.name}.unreadable").exists()
    doc = json.loads((out / "selection.json").read_text())
    assert "unreadable_parts" not in doc and doc["pool_ok"] + doc["pool_failed"] == len(table)
