"""`deal-client score/select --regions`: regions bought inside frames, the same picks from every
out-dir format, engine, shard split and resume; masks that lead back to the picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import deal_client, spec_of_out, write_pool, write_wide_pool
from PIL import Image

from dealseg.client.regions import REGION_MASKS, REGIONS_JSON, REGIONS_JSONL

REGIONS = ["--regions", "5%", "--region-size", "8"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool"), 12, seed=5)


@pytest.fixture(scope="module")
def embedded(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("regions")
    result = deal_client("score", pool, *REGIONS, "--model", tiny_onnx, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def picks(out: Path) -> bytes:
    return (out / REGIONS_JSONL).read_bytes() + (out / "selection.txt").read_bytes()


def bought(out: Path) -> list[tuple[str, int]]:
    rows = map(json.loads, (out / REGIONS_JSONL).read_text().splitlines())
    return [(r["path"], r["region"]) for r in rows]


def balanced_picks(scored: Path, out: Path) -> bytes:
    """What region-ds-balanced buys from the out dir `scored` (a selection written to `out`)."""
    args = ("select", scored, "--regions", "5%", "-s", "region-ds-balanced", "--seed", "4")
    result = deal_client(*args, "--out", out)
    assert result.exit_code == 0, result.output
    return picks(out)


def test_regions_fill_the_budget_and_lead_back_to_the_pictures(
    embedded: Path, tiny_onnx: Path
) -> None:
    summary = json.loads((embedded / REGIONS_JSON).read_text())
    rows = [json.loads(line) for line in (embedded / REGIONS_JSONL).read_text().splitlines()]
    h, w = spec_of_out(embedded).input_size
    assert summary["pool_pixels"] == 12 * h * w and summary["partition"] == "cell:8"
    assert summary["budget_pixels"] == int(0.05 * 12 * h * w)
    assert summary["bought_pixels"] == sum(r["pixels"] for r in rows) <= summary["budget_pixels"]
    assert summary["budget_pixels"] - summary["bought_pixels"] < 64  # no further cell fits
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert len({(r["path"], r["region"]) for r in rows}) == len(rows)
    frames = (embedded / "selection.txt").read_text().splitlines()
    assert sorted(frames) == sorted({r["path"] for r in rows})
    masks = sorted((embedded / REGION_MASKS).glob("*.png"))
    assert len(masks) == len(frames)
    doc = json.loads((embedded / "selection.json").read_text())
    for row, mask_file in zip(doc["rows"], masks, strict=True):
        mask = np.asarray(Image.open(mask_file))
        with Image.open(row["path"]) as picture:
            assert mask.shape == (picture.height, picture.width)  # the picture's own size
        bought = {r["region"] + 1 for r in rows if r["path"] == row["path"]}
        assert set(np.unique(mask)) - {0} == bought


def test_parquet_gives_the_same_picks(pool: Path, tiny_onnx: Path, embedded: Path, tmp_path: Path):
    out = tmp_path / "pq"
    args = ("score", pool, *REGIONS, "--model", tiny_onnx, "--out", out, "--format", "parquet")
    assert deal_client(*args).exit_code == 0
    assert picks(out) == picks(embedded)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "scores.parquet")
    assert {"region_pixels", "region_ds", "region_class"} <= set(table.column_names)
    classes = {json.loads(line)["class"] for line in (out / REGIONS_JSONL).read_text().splitlines()}
    assert classes and classes <= set(spec_of_out(out).class_names)
    mine = balanced_picks(out, tmp_path / "balanced-pq")
    assert mine == balanced_picks(embedded, tmp_path / "balanced-jsonl")


def test_shards_merged_and_a_resumed_run_give_the_same_picks(
    pool: Path, tiny_onnx: Path, embedded: Path, tmp_path: Path
) -> None:
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}"
        args = ("score", pool, *REGIONS, "--model", tiny_onnx, "--out", part, "--shard", f"{i}/2")
        assert deal_client(*args).exit_code in (0, 3)
        parts.append(part)
    merged = tmp_path / "merged"
    assert deal_client("merge", *parts, "--out", merged, "--regions", "5%").exit_code == 0
    assert picks(merged) == picks(embedded)
    mine = balanced_picks(merged, tmp_path / "balanced-merged")
    assert mine == balanced_picks(embedded, tmp_path / "balanced")
    # a run that scored a third of the pool, resumed over all of it
    listing = sorted(str(p) for p in pool.rglob("*.*"))
    first = tmp_path / "first.txt"
    first.write_text("\n".join(listing[:4]) + "\n")
    resumed = tmp_path / "resumed"
    assert (
        deal_client("score", first, *REGIONS, "--model", tiny_onnx, "--out", resumed).exit_code == 0
    )
    assert (
        deal_client("score", pool, *REGIONS, "--model", tiny_onnx, "--out", resumed).exit_code == 0
    )
    assert picks(resumed) == picks(embedded)


def test_cells_of_a_table_joined_with_older_scores_leave_the_class_out() -> None:
    from dealseg.client.records import RegionCells

    rows = [{"pixels": [4, 4], "ds": [0.1, 0.2], "class": [1, 2]}]
    rows.append({"pixels": [4, 4], "ds": [0.3, 0.4], "class": float("nan")})  # pandas' gap
    cells = RegionCells.from_lists(rows)
    assert cells.classes is None and cells.means["ds"].shape == (2, 2)
    assert RegionCells.from_lists(rows[:1]).classes.tolist() == [[1, 2]]


def test_select_buys_again_with_another_budget_and_strategy(embedded: Path, tmp_path: Path):
    out = tmp_path / "again"
    args = ("select", embedded, "--regions", "10", "-s", "region-ds", "--out", out)
    result = deal_client(*args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / REGIONS_JSONL).read_text().splitlines()]
    assert len(rows) == 10
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)  # top-k by the map
    again = deal_client("select", embedded, "--regions", "10", "-s", "region-random", "--out", out)
    assert again.exit_code == 1 and "--force" in again.output  # another selection is there
    spread = ("--regions", "5%", "--max-per-frame", "1", "--frame-cost", "64", "--force")
    assert deal_client("select", embedded, *spread, "--out", out).exit_code == 0
    rows = [json.loads(line) for line in (out / REGIONS_JSONL).read_text().splitlines()]
    summary = json.loads((out / REGIONS_JSON).read_text())
    assert len({r["path"] for r in rows}) == len(rows) == summary["frames"]  # one per frame
    assert summary["cost"] == summary["bought_pixels"] + 64 * len(rows) <= summary["budget_pixels"]


def test_padding_is_never_bought(tiny_onnx: Path, tmp_path: Path) -> None:
    pool = write_wide_pool(tmp_path / "wide", 4)
    out = tmp_path / "out"
    args = ("score", pool, "--regions", "50%", "--region-size", "8", "--resize", "letterbox")
    assert deal_client(*args, "--model", tiny_onnx, "--out", out).exit_code == 0
    record = json.loads((out / "scores.jsonl").read_text().splitlines()[0])
    pixels = np.asarray(record["regions"]["pixels"])
    assert (pixels == 0).any() and (pixels > 0).any()  # the bands' cells hold no picture pixel
    rows = [json.loads(line) for line in (out / REGIONS_JSONL).read_text().splitlines()]
    assert all(r["pixels"] > 0 for r in rows)
    assert json.loads((out / "meta.json").read_text())["settings"]["regions"] == "cell:8"


def test_region_options_misused_are_usage_errors(
    embedded: Path, pool: Path, tiny_onnx: Path
) -> None:
    both = deal_client("select", embedded, "--regions", "5%", "-k", "3")
    assert both.exit_code == 2 and "--top-k" in both.output
    bad = deal_client("select", embedded, "--regions", "150%")
    assert bad.exit_code == 2 and "budget" in bad.output
    frame_only = deal_client("select", embedded, "-s", "region-ds", "-k", "3")
    assert frame_only.exit_code == 2 and "budget" in frame_only.output
    plain = deal_client("score", pool, "-k", "3", "--model", tiny_onnx, "--out", embedded)
    assert plain.exit_code == 1 and "--regions" in plain.output  # the out dir kept cells


@pytest.mark.triton
def test_triton_buys_the_embedded_regions(
    pool: Path, tiny_onnx: Path, embedded: Path, tmp_path: Path
) -> None:
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo, target="python-cpu")
    out = tmp_path / "triton"
    with TritonServer(repo) as server:
        result = deal_client("score", pool, *REGIONS, "--url", server.url_grpc, "--out", out)
    assert result.exit_code == 0, result.output
    assert picks(out) == picks(embedded)


@pytest.mark.slow
def test_region_tasks_round_trip_into_training(tiny_onnx: Path, tmp_path: Path) -> None:
    """Region picks -> Label Studio tasks (their own layer) -> the masks the tool returns (the
    true classes on the bought pixels, void elsewhere) -> deal-train fit on partial labels."""
    import shutil

    from dealseg.client.handoff import read_brush_rle
    from dealseg.training.cli import main as train_main
    from dealseg.training.streets.dataset import write_streets

    streets = tmp_path / "streets"
    write_streets(streets, n=30, size=(64, 80), seed=2)
    out = tmp_path / "picks"
    args = ("score", streets / "train", "--regions", "10%", "--region-size", "8")
    assert deal_client(*args, "--model", tiny_onnx, "--out", out).exit_code == 0
    export = tmp_path / "ls"
    assert deal_client("export", out, "--format", "labelstudio", "--dest", export).exit_code == 0
    assert 'name="regions"' in (export / "labeling_config.xml").read_text()
    tasks = json.loads((export / "tasks.json").read_text())
    rows = [json.loads(line) for line in (out / REGIONS_JSONL).read_text().splitlines()]
    assert len(tasks) == len({r["path"] for r in rows})
    plain = tmp_path / "returned"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    shutil.copy(streets / "classes.json", plain / "classes.json")
    void = json.loads((streets / "classes.json").read_text())["ignore"][0]
    labelled = 0
    for task in tasks:
        layer = next(r for r in task["predictions"][0]["result"] if r["from_name"] == "regions")
        h, w = layer["original_height"], layer["original_width"]
        todo = read_brush_rle(layer["value"]["rle"], h, w)
        picture = Path(task["data"]["path"])
        truth = np.asarray(Image.open(streets / "trainannot" / picture.name))
        assert todo.sum() == task["data"]["region_pixels"] > 0
        mask_file = next((out / REGION_MASKS).glob(f"{task['data']['rank']:04d}_*.png"))
        assert np.array_equal(todo, np.asarray(Image.open(mask_file)) > 0)  # exact round trip
        returned = np.where(todo, truth, void).astype(np.uint8)  # what the annotator sends back
        Image.fromarray(returned).save(plain / "masks" / f"{picture.stem}.png")
        shutil.copy(picture, plain / "images" / picture.name)
        labelled += int(todo.sum())
    assert labelled == json.loads((out / REGIONS_JSON).read_text())["bought_pixels"]
    tiny = ["decoder_width=16", "attention_size=[8,10]", "input_size=[64,80]", "epochs=1"]
    tiny += ["batch_size=4", "crop=[64,80]", "val_every=1", "threads=1", "samples_per_epoch=8"]
    tiny += ["refit_difficulty=false"]  # the round trip is about the labels, not the refit
    from click.testing import CliRunner

    fit = CliRunner().invoke(
        train_main,
        ["fit", "--data", str(plain), "--out", str(tmp_path / "run"), *tiny, "partial_labels=true"],
    )
    assert fit.exit_code == 0, fit.output
    assert (tmp_path / "run" / "best.pt").is_file()


def test_the_python_api_buys_the_regions_the_cli_buys(
    pool: Path, tiny_onnx: Path, embedded: Path
) -> None:
    import dealseg

    table = dealseg.score(pool, model=tiny_onnx, regions="cell:8")
    bought = dealseg.select_regions(table, "5%")
    rows = [json.loads(line) for line in (embedded / REGIONS_JSONL).read_text().splitlines()]
    got = list(zip(bought["path"], bought["region"], strict=True))
    assert got == [(r["path"], r["region"]) for r in rows]
    with pytest.raises(TypeError, match="regions"):
        dealseg.score(pool, model=tiny_onnx, region="cell:8")
    with pytest.raises(ValueError, match="no regions"):
        dealseg.select_regions(dealseg.score(pool, model=tiny_onnx), "5%")


def test_entropy_strategies_read_the_served_entropy_map(tmp_path: Path) -> None:
    """The contract model's entropy map is its green channel: frame i's cells all have mean
    green_i / 255, so region-entropy buys the greenest frame's cells first; a contract 2 model
    (no entropy map) scores regions by difficulty and refuses an entropy strategy in one line."""
    from contract_model import CLASSES, band_image, write_contract_model

    import dealseg

    greens = [40, 220, 130, 90]
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, green in enumerate(greens):
        Image.fromarray(band_image(8 * i, green, 60)).save(pool / f"f{i}.png")
    model = write_contract_model(tmp_path / "c3.onnx")
    out = tmp_path / "out"
    args = ("score", pool, "--regions", "6", "--region-size", "8", "-s", "region-entropy")
    result = deal_client(*args, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    records = {
        Path(r["path"]).name: r["regions"]
        for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())
    }
    import pyarrow.parquet as pq

    assert (
        deal_client(
            *args, "--model", model, "--out", tmp_path / "pq", "--format", "parquet"
        ).exit_code
        == 0
    )
    table = pq.read_table(tmp_path / "pq" / "scores.parquet").to_pydict()
    for path, classes in zip(table["path"], table["region_class"], strict=True):
        assert classes == records[Path(path).name]["class"]  # the same cells, the same order
    for i, green in enumerate(greens):
        cells = records[f"f{i}.png"]
        assert cells["entropy"] == [round(green / 255, 5)] * 24  # 4 x 6 cells of 8 x 8
        assert (min(cells["ds"][:6]) > 0.5) == (i > 0)  # the red band: the difficulty map
        assert max(cells["ds"][18:]) < 0.5  # no band reaches the last cell row
        assert cells["class"] == [1] * (6 * i) + [0] * (24 - 6 * i)  # red rows: class 1
    rows = [json.loads(line) for line in (out / REGIONS_JSONL).read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["f1.png"] * 6
    assert [r["score"] for r in rows] == [round(220 / 255, 5)] * 6
    assert [r["class"] for r in rows] == [CLASSES[1]] * 6  # f1's top cell row is red: class 1
    assert json.loads((out / REGIONS_JSON).read_text())["bought_classes"] == {CLASSES[1]: 6 * 64}
    table = dealseg.score(pool, model=model, regions="cell:8")
    bought = dealseg.select_regions(table, 6, "region-entropy-sample", seed=3)
    assert set(bought["path"]) <= {str(p) for p in pool.iterdir()} and len(bought) == 6

    old = write_contract_model(tmp_path / "c2.onnx", contract="2")
    out2 = tmp_path / "out2"
    assert deal_client(*args[:6], "--model", old, "--out", out2).exit_code == 0
    record = json.loads((out2 / "scores.jsonl").read_text().splitlines()[0])
    assert set(record["regions"]) == {"pixels", "ds", "class"}
    sel = tmp_path / "sel"
    refused = deal_client("select", out2, "--regions", "6", "-s", "region-entropy", "--out", sel)
    assert refused.exit_code == 1
    assert "serves no entropy map" in refused.output and "reexport" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    early = deal_client(*args, "--model", old, "--out", tmp_path / "out3")  # before scoring
    assert early.exit_code == 2 and "serves no entropy map" in early.output
    assert not (tmp_path / "out3" / "scores.jsonl").exists()


def test_the_report_states_what_was_bought_and_outlines_the_regions(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.client.report import OUTLINE, outline_regions

    out = tmp_path / "out"
    args = ["--model", tiny_onnx, "--out", out, "--report", "--frame-cost", 100]
    assert deal_client("score", pool, *REGIONS, *args).exit_code == 0
    summary = json.loads((out / REGIONS_JSON).read_text())
    page = (out / "report.html").read_text()
    assert f"<b id=bought>{summary['bought_regions']:,}</b> regions (cell:8) in " in page
    assert f"<b>{summary['bought_share']:.2%}</b> of the pool's" in page
    assert f"labelling cost {summary['cost']:,} pixels (100 a frame opened)" in page
    assert summary["cost"] == summary["bought_pixels"] + 100 * summary["frames"]
    mix = summary["bought_classes"]
    assert sum(mix.values()) == summary["bought_pixels"] and list(mix.values()) == sorted(
        mix.values(), reverse=True
    )
    first, pixels = next(iter(mix.items()))
    share = f"{pixels / summary['bought_pixels']:.0%}"
    assert f"by predicted class <span id=mix>{first} {share}" in page
    # the outline: on the edge of each bought region, inside it; nothing elsewhere
    image = np.zeros((6, 8, 3), np.uint8)
    mask = np.zeros((3, 4), np.int32)
    mask[0, 1:3] = 5  # a region of 1x2 cells of 2x2 pixels each at the picture's size
    drawn = outline_regions(image, mask)
    edge = np.zeros((6, 8), bool)
    edge[0:2, 2:6] = True  # the region's pixels: a 2x4 block, every one on its edge
    assert (np.all(drawn == OUTLINE, axis=-1) == edge).all()
    frames = deal_client(
        "score", pool, "-k", 3, "--model", tiny_onnx, "-o", tmp_path / "f", "--report"
    )
    assert frames.exit_code == 0, frames.stderr
    assert "regions bought" not in (tmp_path / "f" / "report.html").read_text()


def test_scores_written_before_cells_carried_a_class_refuse_only_the_balanced_strategy(
    pool: Path, tiny_onnx: Path, embedded: Path, tmp_path: Path
) -> None:
    import shutil

    import pyarrow.parquet as pq

    older = tmp_path / "jsonl"
    shutil.copytree(embedded, older)
    lines = []
    for r in map(json.loads, (older / "scores.jsonl").read_text().splitlines()):
        (r.get("regions") or {}).pop("class", None)
        lines.append(json.dumps(r))
    (older / "scores.jsonl").write_text("\n".join(lines) + "\n")
    # Parquet scores of a third of the pool written before, resumed over all of it, merged
    first = tmp_path / "first.txt"
    first.write_text("\n".join(sorted(str(p) for p in pool.rglob("*.*"))[:4]) + "\n")
    parquet, merged = tmp_path / "pq", tmp_path / "merged"
    pq_args = ("--model", tiny_onnx, "--out", parquet, "--format", "parquet")
    assert deal_client("score", first, *REGIONS, *pq_args).exit_code == 0
    for part in (parquet / "scores.parquet").glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["region_class"]), part)
    assert deal_client("score", pool, *REGIONS, *pq_args).exit_code == 0
    assert len(list((parquet / "scores.parquet").glob("*.parquet"))) == 2
    assert deal_client("merge", parquet, "--out", merged, "--regions", "5%").exit_code == 0

    def files(folder: Path) -> list[tuple[str, int]]:
        return sorted((p.name, p.stat().st_size) for p in folder.rglob("*") if p.is_file())

    for scored, fmt in ((older, "jsonl"), (parquet, "parquet")):  # a resume ending refused:
        before = files(scored)
        balanced = ("-s", "region-ds-balanced", "--model", tiny_onnx, "--format", fmt)
        early = deal_client("score", pool, *REGIONS, *balanced, "--out", scored)  # refused first
        assert early.exit_code == 2 and "written before cells carried it" in early.output
        assert files(scored) == before
        fresh = deal_client("score", first, *REGIONS, *balanced, "--out", tmp_path / f"new-{fmt}")
        assert fresh.exit_code == 0, fresh.output  # a fresh out dir: nothing to refuse
    for scored in (older, parquet, merged):
        sel = tmp_path / f"sel-{scored.name}"
        refused = deal_client(
            "select", scored, "--regions", "5%", "-s", "region-ds-balanced", "--out", sel
        )
        assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
        assert "written before cells carried it" in refused.output
        assert deal_client("select", scored, "--regions", "5%", "--out", sel).exit_code == 0
        assert bought(sel) == bought(embedded)  # the default strategy reads no class
        assert all("class" not in r for r in map(json.loads, (sel / REGIONS_JSONL).open()))
