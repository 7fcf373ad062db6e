"""Which record counts for a path when an out dir's scores.jsonl is read for selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dealseg.client.outdir import FORMAT, META, load_table
from dealseg.client.records import EMBEDDINGS, SCORES


def _ok(path: str, ds: float, row: int, model: str = "m") -> dict:
    return {
        "path": path,
        "status": "ok",
        "error": None,
        "ds": ds,
        "de": 2 * ds,
        "entropy": None,
        "class_fraction": [1.0],
        "row": row,
        "model": model,
    }


def _error(path: str, reason: str) -> dict:
    return {
        "path": path,
        "status": "error",
        "error": reason,
        "ds": None,
        "de": None,
        "entropy": None,
        "class_fraction": None,
        "row": None,
        "model": "m",
    }


def test_last_record_counts_but_an_error_never_replaces_an_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / META).write_text(
        json.dumps({"format": FORMAT, "model": "m", "embedding_dim": 2, "metadata": {}})
    )
    records = [
        _ok("/a", 0.1, 0),
        _error("/b", "truncated"),
        _error("/a", "timeout"),  # a later error does not undo a's score
        _ok("/b", 0.2, 1),  # a retried image replaces its error
        _error("/c", "first"),
        _ok("/d", 0.9, 2, model="other"),  # scored by another model: ignored, with a warning
        _error("/c", "second"),
        _ok("/e", 0.3, 3),
        _ok("/e", 0.4, 4),  # re-scored: the last one counts
    ]
    (tmp_path / SCORES).write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / EMBEDDINGS).write_bytes(np.arange(10, dtype="<f4").tobytes())

    table = load_table(tmp_path)

    assert table.paths == ["/a", "/b", "/e"]
    np.testing.assert_array_equal(table.scores["ds"], [0.1, 0.2, 0.4])
    np.testing.assert_array_equal(table.scores["de"], [0.2, 0.4, 0.8])
    assert np.isnan(table.scores["entropy"]).all()
    np.testing.assert_array_equal(table.rows, [0, 1, 4])
    np.testing.assert_array_equal(table.embeddings(), [[0, 1], [2, 3], [8, 9]])
    assert table.errors == {"/c": "second"}
    assert "/d: scored by another model" in capsys.readouterr().err


def test_an_empty_scores_file_is_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / META).write_text(
        json.dumps({"format": FORMAT, "model": "m", "embedding_dim": 2, "metadata": {}})
    )
    (tmp_path / SCORES).write_text("")
    table = load_table(tmp_path)
    assert len(table) == 0 and table.errors == {} and table.embeddings().shape == (0, 2)
