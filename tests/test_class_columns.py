"""Class names that normalise to one column (`Sign Symbol`, `Sign_Symbol`): class files holding
them are refused, and a model that already has them (trained before) gets unique columns that
map back to its classes, in Parquet, CSV and the Python API (they once crashed the Parquet
writer, leaving an unreadable part, duplicated CSV headers and merged the API's columns)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import deal_client, write_pool

import dealseg
from dealseg.client.outdir import load_table, read_meta
from dealseg.client.parquet import parquet_records
from dealseg.core.classes import DataError, class_columns, read_class_file

NAMES = ["Sign Symbol", "sky", "Sign_Symbol", "road", "pole", "tree", "car", "fence"]
NAMES += ["person", "bike", "building"]  # 11, the tiny model's classes


def test_a_class_file_whose_names_share_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": NAMES}))
    with pytest.raises(DataError, match="classes 'Sign Symbol' and 'Sign_Symbol' would share"):
        read_class_file(path)
    assert "class_Sign_Symbol" in str(pytest.raises(DataError, read_class_file, path).value)


def test_columns_are_unique_and_map_back() -> None:
    columns = class_columns(NAMES)
    assert columns["Sign Symbol"] == "class_Sign_Symbol" and columns["sky"] == "class_sky"
    assert columns["Sign_Symbol"] == "class_Sign_Symbol_2"
    assert len(set(columns.values())) == len(NAMES)
    taken = class_columns(["a b", "a_b_1", "a_b"])  # the suffixed column is itself a name's
    assert len(set(taken.values())) == 3


@pytest.fixture(scope="module")
def colliding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with two class names sharing a readable column, exported for real."""
    from conftest import make_tiny_checkpoint

    from dealseg.export.onnx_export import export_onnx
    from dealseg.training.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("colliding")
    tiny = load_checkpoint(make_tiny_checkpoint(root / "tiny.pt"))
    save_checkpoint(root / "c.pt", tiny.build_model(), NAMES, tiny.palette, {}, {}, 0)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    export_onnx(root / "c.pt", root / "c.onnx", max_batch=16)
    return root / "c.onnx"


def test_parquet_csv_and_the_api_keep_both_classes(colliding_model: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool", 4)
    out = tmp_path / "out"
    args = ["-k", 2, "--model", colliding_model, "--format", "parquet", "-o", out]
    result = deal_client("score", pool, *args)
    assert result.exit_code == 0, result.stderr
    names = pq.read_table(out / "scores.parquet").schema.names
    assert "class_Sign_Symbol" in names and "class_Sign_Symbol_2" in names
    record, _ = next(parquet_records(out, read_meta(out)))  # read back by class (as merge does)
    assert list(record["class_fraction"]) == NAMES
    table = load_table(out)
    assert table.fractions.shape == (4, len(NAMES))
    np.testing.assert_allclose(table.fractions.sum(axis=1), 1.0, atol=1e-4)

    assert deal_client("export", out, "--format", "csv").exit_code == 0
    with open(out / "export" / "csv" / "selection.csv") as f:
        header = next(csv.reader(f))
    shares = [h for h in header if h.startswith("class_")]
    assert shares == list(class_columns(NAMES).values())

    frame = dealseg.score(pool, colliding_model)
    assert list(class_columns(NAMES).values()) == [c for c in frame.columns if c[:6] == "class_"]
    picked = dealseg.select(frame, "ds", 2, balance={"Sign_Symbol": 3.0})
    assert len(picked) == 2
    total = frame[list(class_columns(NAMES).values())].to_numpy().sum(axis=1)
    np.testing.assert_allclose(total, 1.0, atol=1e-4)  # no class lost or merged
