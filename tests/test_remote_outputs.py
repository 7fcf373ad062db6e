"""What is made from a selection of an s3:// pool, on the real S3-compatible server: maps and the
report are drawn from the objects, the CVAT export reads their sizes, and a --path-map from the
bucket to a web address rewrites the URIs (each once drew nothing, failed or matched nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import BUCKET, deal_client, upload, write_pool

from dealseg.client.maps import map_name


@pytest.fixture
def s3_run(
    s3_server: object, monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path
) -> Path:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    upload(s3_server, write_pool(tmp_path / "pool", 6), "outputs")
    out = tmp_path / "out"
    args = ["-k", 3, "--model", tiny_onnx, "-o", out, "--report"]
    result = deal_client("score", f"s3://{BUCKET}/outputs/", *args)
    assert result.exit_code == 0, result.stderr
    assert "no map for" not in result.stderr
    return out


def test_maps_and_report_are_drawn_from_the_objects(s3_run: Path) -> None:
    rows = json.loads((s3_run / "selection.json").read_text())["rows"]
    assert len(rows) == 3 and all(r["path"].startswith(f"s3://{BUCKET}/") for r in rows)
    for row in rows:
        assert (s3_run / "maps" / map_name(row["rank"], row["path"])).stat().st_size > 1000
    page = (s3_run / "report.html").read_text()
    assert "cannot read the image" not in page and "no maps" not in page
    for rank in (1, 2, 3):
        for layer in ("jpg", "dif.jpg", "seg.png"):
            assert (s3_run / "report_files" / f"{rank:04d}.{layer}").is_file()


def test_cvat_export_and_a_path_map_from_the_bucket(s3_run: Path) -> None:
    rule = f"s3://{BUCKET}/outputs/=https://cdn.example.com/frames"
    result = deal_client("export", s3_run, "--format", "cvat", "--path-map", rule)
    assert result.exit_code == 0, result.stderr
    rows = json.loads((s3_run / "selection.json").read_text())["rows"]
    listed = (s3_run / "export" / "cvat" / "images.txt").read_text().splitlines()
    prefix = f"s3://{BUCKET}/outputs/"
    assert listed == [
        "https://cdn.example.com/frames/" + r["path"].removeprefix(prefix) for r in rows
    ]
    manifest = (s3_run / "export" / "cvat" / "manifest.jsonl").read_text().splitlines()
    images = [json.loads(line) for line in manifest[2:]]
    assert [(i["width"], i["height"]) for i in images] == [(80, 60)] * 3
    names = [i["name"] + i["extension"] for i in images]
    assert names == [r["path"].removeprefix(prefix) for r in rows]
