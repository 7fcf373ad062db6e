"""From selection to labelling (issue 16): the report in a real Chromium, the hand-off formats,
the selections a labelling lead asks for, and the Python API.

Runs real ONNX Runtime on the tiny exported model (`tiny_onnx`), and hand-written out dirs
(`hand_scored`) where the outputs must be known exactly. The labelling tools' own validators
run where an interpreter that has them is named: DEALSEG_LABEL_STUDIO_PYTHON (label-studio-sdk:
LabelInterface and its brush RLE decoder) and DEALSEG_FIFTYONE_PYTHON (fiftyone's dataset
importer); both need numpy >= 2, which this project's pin excludes, so they live in venvs of
their own. Without them those two checks are skipped, and the formats are checked against the
tools' documented rules here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from chromium import Browser, find_chromium
from contract_model import CLASSES, contract_spec
from helpers import deal_client, spec_of_out, write_pool, write_streets_pool
from PIL import Image

from dealseg.client.handoff import brush_rle
from dealseg.client.maps import layer_names
from dealseg.client.outdir import open_writer
from dealseg.core.strategies import DEFAULT_STRATEGY

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = Path(os.environ.get("DEALSEG_ARTEFACTS", ROOT / "test-artefacts"))
BICYCLIST = CLASSES.index("Bicyclist")


# ---------------------------------------------------------------------------------- helpers
def hand_scored(out: Path, rows: Sequence[tuple[str, float, Sequence[float]]]) -> Path:
    """An out dir written by the real JSONL writer with outputs chosen by hand: (path, ds, class
    fractions) per image; de = 2 ds, entropy = 1 - ds, embeddings spread over a circle."""
    n = len(rows)
    angle = np.linspace(0, np.pi, n)
    outputs = {
        "ds": np.array([r[1] for r in rows], np.float32),
        "class_fraction": np.array([r[2] for r in rows], np.float32),
        "embedding": np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], 1).astype(np.float32),
    }
    outputs["de"], outputs["entropy"] = 2 * outputs["ds"], 1 - outputs["ds"]
    with open_writer(out, contract_spec()) as writer:
        writer.append_batch([r[0] for r in rows], outputs)
    return out


def mix(**shares: float) -> list[float]:
    """Class fractions [C] from class name -> share."""
    return [shares.get(name, 0.0) for name in CLASSES]


def selected(out: Path) -> list[str]:
    return (out / "selection.txt").read_text().splitlines()


def in_chromium(page: Path, tmp_path: Path, script: str, shot: str) -> dict:
    """Open `page` in headless Chromium; run `script` (an expression whose value is JSON text);
    keep a screenshot in the artefacts; fail on console errors or fetches off the disk."""
    exe, why = find_chromium()
    if exe is None:
        pytest.skip(f"no Chromium: {why}")
    browser = Browser(exe, tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        value = json.loads(browser.evaluate(script))
        browser.screenshot(ARTEFACTS / shot)
        errors, urls = browser.console_errors(), browser.requested_urls()
    finally:
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in urls), urls
    return value


PAGE_FACTS = """(async () => {
  const srcs = [...document.images].map(i => i.getAttribute("src"));
  const decoded = await Promise.all(srcs.map(src => {
    const im = new Image(); im.src = src;
    return im.decode().then(() => im.naturalWidth > 0, () => false);
  }));
  const cards = [...document.querySelectorAll("figure.card")];
  return JSON.stringify({
    srcs, decoded,
    lazy: [...document.images].every(i => i.loading === "lazy"),
    loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
    ranks: cards.map(c => Number(c.querySelector(".rank").textContent.slice(1))),
    paths: cards.map(c => c.querySelector(".path").title),
    dups: document.querySelectorAll("table.dups tr").length - 1,
    dupPicks: [...document.querySelectorAll("table.dups td.pick")].map(td => [
      td.querySelector("img") && td.querySelector("img").getAttribute("src"), td.textContent]),
    selected: document.getElementById("selected").textContent,
  });
})()"""


# ---------------------------------------------------------------------------- a scored run
@pytest.fixture(scope="module")
def run(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pool of 10 frames and an exact copy of each in dup/, scored by the tiny model with
    --report and --diverse 0.999: every copy of a pick is a near-duplicate that is skipped."""
    root = tmp_path_factory.mktemp("labelling")
    pool = write_pool(root / "pool", 10, size=(48, 64), seed=3)
    (pool / "dup").mkdir()
    for image in sorted(pool.glob("cam*/*")):
        shutil.copy(image, pool / "dup" / image.name)
    out = root / "run"
    r = deal_client(
        "score", pool, "-k", 6, "--model", tiny_onnx, "--out", out, "--report", "--diverse", 0.999
    )
    assert r.exit_code == 0, r.stderr
    assert f"report: {out / 'report.html'}" in r.stderr
    return out


def pool_of(run: Path) -> Path:
    return run.parent / "pool"


def test_the_report_loads_in_chromium_with_every_image_and_the_ranks(
    run: Path, tmp_path: Path
) -> None:
    facts = in_chromium(run / "report.html", tmp_path, PAGE_FACTS, "report.png")
    assert all(facts["decoded"]) and len(facts["srcs"]) >= 3 * 6
    assert facts["lazy"]
    assert facts["ranks"] == list(range(1, 7)) and facts["paths"] == selected(run)
    doc = json.loads((run / "selection.json").read_text())
    assert facts["dups"] == len(doc["near_duplicates"]) == doc["skipped"]["duplicate"] > 0
    # Each near-duplicate beside the pick it resembles: the pick's thumbnail, rank and name.
    rank_of = {r["path"]: r["rank"] for r in doc["rows"]}
    expected = [
        [f"report_files/{rank_of[d['of']]:04d}.jpg", f"#{rank_of[d['of']]} {Path(d['of']).name}"]
        for d in doc["near_duplicates"]
    ]
    assert facts["dupPicks"] == expected
    assert facts["selected"] == "6"


def test_the_report_command_rewrites_the_page_of_a_folder(run: Path, tmp_path: Path) -> None:
    mine = shutil.copytree(run, tmp_path / "run")
    (mine / "report.html").unlink()
    r = deal_client("report", mine)
    assert r.exit_code == 0 and r.stdout.strip() == str(mine / "report.html")
    assert selected(mine)[0] in (mine / "report.html").read_text()
    r = deal_client("report", tmp_path)
    assert r.exit_code == 1 and "holds no selection.json" in r.stderr


def test_a_report_of_1000_picks_loads_its_thumbnails_lazily(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    rows = []
    for i in range(1000):
        path = pool / f"f{i:04d}.png"
        Image.new("RGB", (32, 24), (i % 256, (7 * i) % 256, 90)).save(path)
        rows.append((str(path), 1 - i / 1000, mix(Road=0.5, Sky=0.5)))
    out = hand_scored(tmp_path / "out", rows)
    r = deal_client("select", out, "-s", "ds", "-k", 1000, "--report", "--no-maps")
    assert r.exit_code == 0, r.stderr
    facts = in_chromium(out / "report.html", tmp_path, PAGE_FACTS, "report-1000.png")
    assert facts["ranks"] == list(range(1, 1001)) and facts["paths"] == selected(out)
    assert all(facts["decoded"]) and len(facts["srcs"]) == 1000
    assert facts["lazy"] and facts["loaded"] < 1000  # those far below the fold wait


# ------------------------------------------------------------------------------ selections
COMMON = mix(Road=0.45, Sky=0.3, Building=0.25)
RARE = mix(Road=0.35, Sky=0.25, Building=0.2, Bicyclist=0.2)


def planted(out: Path) -> Path:
    """12 common frames with the highest ds, then a cluster of 8 with a rare class (Bicyclist
    20%) just below them, then 20 common frames with low ds."""
    rows = [(f"/pool/common/a{i:02d}.png", 0.9 - 0.02 * i, COMMON) for i in range(12)]
    rows += [(f"/pool/rare/r{i:02d}.png", 0.58 - 0.01 * i, RARE) for i in range(8)]
    rows += [(f"/pool/common/z{i:02d}.png", 0.4 - 0.01 * i, COMMON) for i in range(20)]
    return hand_scored(out, rows)


def test_balance_picks_more_of_a_planted_rare_class_cluster_than_ds(tmp_path: Path) -> None:
    out = planted(tmp_path / "scores")
    rare = {}
    for name, extra in (("ds", []), ("balanced", ["--balance"])):
        r = deal_client("select", out, "-s", "ds", "-k", 5, "-o", tmp_path / name, *extra)
        assert r.exit_code == 0, r.stderr
        rare[name] = sum("/rare/" in p for p in selected(tmp_path / name))
    assert rare == {"ds": 0, "balanced": 5}  # ds alone never reaches the cluster
    doc = json.loads((tmp_path / "balanced" / "selection.json").read_text())
    assert doc["balance"] == {} and doc["strategy"] == "ds"
    # Road wanted above all: the rare cluster (less road) is left alone
    r = deal_client(
        "select", out, "-s", "ds", "-k", 5, "-o", tmp_path / "w", "--class-weight", "Road=50"
    )
    assert r.exit_code == 0 and not any("/rare/" in p for p in selected(tmp_path / "w"))
    r = deal_client("select", out, "-k", 5, "-o", tmp_path / "x", "--class-weight", "Cyclist=2")
    assert r.exit_code == 2 and "no class 'Cyclist'; classes: Sky, Building" in r.stderr
    r = deal_client("select", out, "-k", 5, "-o", tmp_path / "x", "--class-weight", "Road")
    assert r.exit_code == 2 and "is not CLASS=WEIGHT" in r.stderr


def test_per_group_quota_and_the_reason_when_fewer_than_k(tmp_path: Path) -> None:
    rows = [
        (f"/pool/cam{c}/f{i}.png", 0.9 - 0.1 * c - 0.01 * i, mix(Road=1.0))
        for c in range(3)
        for i in range(4)
    ]
    out = hand_scored(tmp_path / "scores", rows)
    r = deal_client("select", out, "-s", "ds", "-k", 3, "--per-group", 1, "-o", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    assert selected(tmp_path / "a") == [f"/pool/cam{c}/f0.png" for c in range(3)]
    r = deal_client("select", out, "-s", "ds", "-k", 5, "--per-group", 1, "-o", tmp_path / "b")
    assert r.exit_code == 3 and len(selected(tmp_path / "b")) == 3
    why = "selected 3 of the 5 asked: 9 images of full groups skipped (at most 1 a group)"
    assert why in r.stderr
    # a regex's group: cam0 and cam1 are one group each, cam2's paths match nothing (alone)
    regex = ["--per-group", 2, "--group-by", "/(cam[01])/", "-o", tmp_path / "c"]
    r = deal_client("select", out, "-s", "ds", "-k", 6, *regex)
    assert r.exit_code == 0 and "matches no part of 4 of 12 paths" in r.stderr
    got = selected(tmp_path / "c")
    assert sum("/cam0/" in p for p in got) == sum("/cam1/" in p for p in got) == 2
    r = deal_client("select", out, "-k", 2, "--per-group", 1, "--group-by", "(", "-o", tmp_path)
    assert r.exit_code == 2 and "not a regular expression" in r.stderr
    r = deal_client("select", out, "-k", 2, "--group-by", "cam", "-o", tmp_path / "d")
    assert r.exit_code == 2 and "give both" in r.stderr


def test_a_labelled_list_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    out = planted(tmp_path / "scores")
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("/elsewhere/a.png\n/elsewhere/b.png\n")
    r = deal_client("select", out, "-k", 3, "--labeled", labelled, "-o", tmp_path / "a")
    assert r.exit_code == 1 and "none of the 2 labelled paths" in r.stderr


def test_select_keeps_its_own_folder_and_redraws_maps_and_report(
    run: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    mine = shutil.copytree(run, tmp_path / "run")
    r = deal_client("select", mine, "-s", "ds", "-k", 3)
    assert r.exit_code == 1 and f"holds another selection ({DEFAULT_STRATEGY}, top 6" in r.stderr
    assert "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = deal_client("select", mine, "-s", "ds", "-k", 3, "--force")  # the shipped model
    assert r.exit_code == 2 and "the maps need the model that scored" in r.stderr
    r = deal_client("select", mine, "-s", "ds", "-k", 3, "--force", "--model", tiny_onnx)
    assert r.exit_code == 0, r.stderr
    doc = json.loads((mine / "selection.json").read_text())
    want = {name for row in doc["rows"] for name in layer_names(row["rank"], row["path"])}
    maps = {p.name for p in (mine / "maps").iterdir()}
    assert want <= maps and len(maps) == 3 * 3  # the old picks' maps are gone
    assert len(list((mine / "report_files").glob("????.jpg"))) == 3  # the report, redrawn
    r = deal_client("select", mine, "-s", "ds", "-k", 3, "--model", tiny_onnx)
    assert r.exit_code == 0, r.stderr  # the same selection again: nothing to refuse


# ---------------------------------------------------------------------------------- export
def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio's brush RLE read as its reader does (label-studio-sdk's
    `converter.brush.decode_rle`): the flat RGBA values."""
    bits = "".join(f"{b:08b}" for b in rle)
    at = 0

    def read(n: int) -> int:
        nonlocal at
        at += n
        return int(bits[at - n : at], 2)

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(count, np.uint8), 0
    while i < count:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out


def test_brush_rle_round_trips() -> None:
    rng = np.random.default_rng(0)
    for mask in (rng.random((37, 50)) > 0.7, np.ones((300, 300), bool), np.zeros((2, 3), bool)):
        flat = decode_brush_rle(brush_rle(mask))
        assert np.array_equal(flat, np.repeat(np.where(mask.ravel(), 255, 0), 4))


def export(run: Path, fmt: str, dest: Path, *extra: object) -> list[str]:
    r = deal_client("export", run, "--format", fmt, "--dest", dest, *extra)
    assert r.exit_code == 0, r.stderr
    return sorted(Path(line).name for line in r.stdout.splitlines())


def tool_check(variable: str, code: str, folder: Path) -> None:
    """Run `code` (argv[1]: the export folder) with the labelling tool's own library, in the
    interpreter that $variable names; skip when none is named."""
    python = os.environ.get(variable)
    if not python:
        pytest.skip(f"{variable} names no interpreter with the tool's library")
    done = subprocess.run([python, "-c", code, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


LABEL_STUDIO_CHECK = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.converter.brush import decode_rle
folder = sys.argv[1]
li = LabelInterface(open(f"{folder}/labeling_config.xml").read())
li.validate()
for t in json.load(open(f"{folder}/tasks.json")):
    assert li.validate_task({"data": t["data"]}), t["data"]
    for p in t.get("predictions", []):
        assert li.validate_prediction(p, return_errors=True) == [], p
        for r in p["result"]:
            flat = decode_rle(r["value"]["rle"])
            assert flat.size == r["original_width"] * r["original_height"] * 4
"""

FIFTYONE_CHECK = """
import sys
import fiftyone.utils.data.importers as foud
importer = foud._handle_legacy_formats(foud.FiftyOneDatasetImporter(sys.argv[1]))
with importer:
    assert "default_mask_targets" in importer.get_dataset_info()
    for sample in importer:
        assert isinstance(sample["ds"], float) and sample["rank"] >= 1
        assert sample["prediction"].get_mask().ndim == 2
"""


def test_label_studio_tasks_with_predictions(run: Path, tmp_path: Path) -> None:
    pool, remote = pool_of(run), "https://data.example/my pool"
    files = export(run, "labelstudio", tmp_path, "--predictions", "--path-map", f"{pool}={remote}")
    assert files == ["labeling_config.xml", "tasks.json"]
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    config = ET.parse(tmp_path / "labeling_config.xml").getroot()
    image, brush = config.find("Image"), config.find("BrushLabels")
    assert image is not None and brush is not None
    assert image.get("value") == "$image" and brush.get("toName") == image.get("name")
    names = list(spec_of_out(run).class_names)
    assert [label.get("value") for label in brush.findall("Label")] == names
    assert [t["data"]["path"] for t in tasks] == selected(run)
    for t in tasks:
        data, (prediction,) = t["data"], t["predictions"]
        rest = data["path"][len(str(pool)) :]
        assert data["image"] == "https://data.example/my pool" + rest.replace(" ", "%20")
        assert {"rank", "score", "ds", "de", "entropy", *map(class_key, names)} <= set(data)
        seg = Image.open(run / "maps" / layer_names(data["rank"], data["path"])[1])
        for region in prediction["result"]:
            assert (region["from_name"], region["to_name"]) == ("label", "image")
            assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
            (label,) = region["value"]["brushlabels"]
            h, w = region["original_height"], region["original_width"]
            mask = decode_brush_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 0] == 255
            want = np.asarray(seg.resize((w, h), Image.Resampling.NEAREST)) == names.index(label)
            assert np.array_equal(mask, want)


def test_label_studio_sdk_accepts_the_tasks(run: Path, tmp_path: Path) -> None:
    export(run, "labelstudio", tmp_path, "--predictions")
    tool_check("DEALSEG_LABEL_STUDIO_PYTHON", LABEL_STUDIO_CHECK, tmp_path)


def class_key(name: str) -> str:
    return "class_" + re.sub(r"\W+", "_", name)


def test_cvat_manifest_follows_cvats_manifest_rules(run: Path, tmp_path: Path) -> None:
    pool = pool_of(run)
    assert export(run, "cvat", tmp_path, "--path-map", f"{pool}=s3://bucket/pool") == [
        "images.txt",
        "manifest.jsonl",
    ]
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    # CVAT's dataset manifest 1.1 (utils/dataset_manifest): version, type, then one image a line
    assert lines[:2] == [{"version": "1.1"}, {"type": "images"}]
    for item, path in zip(lines[2:], selected(run), strict=True):
        assert set(item) == {"name", "extension", "width", "height"}
        assert item["name"] + item["extension"] == os.path.relpath(path, pool)
        with Image.open(path) as im:
            assert (item["width"], item["height"]) == im.size
    listed = (tmp_path / "images.txt").read_text().splitlines()
    assert listed == [f"s3://bucket/pool/{os.path.relpath(p, pool)}" for p in selected(run)]


def test_fiftyone_dataset_holds_the_scores_as_sample_fields(run: Path, tmp_path: Path) -> None:
    assert export(run, "fiftyone", tmp_path, "--predictions") == ["metadata.json", "samples.json"]
    samples = json.loads((tmp_path / "samples.json").read_text())["samples"]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    # FiftyOne's JSON dataset layout (LegacyFiftyOneDataset, read by fo.types.FiftyOneDataset):
    # metadata.json without "version", samples.json {"samples": [{"filepath", "tags", ...}]}
    assert "version" not in meta and meta["media_type"] == "image"
    assert meta["info"]["default_mask_targets"]["0"] == spec_of_out(run).class_names[0]
    assert [s["filepath"] for s in samples] == selected(run)
    for s in samples:
        assert s["tags"] == ["dealseg"] and isinstance(s["ds"], float)
        assert s["prediction"]["_cls"] == "Segmentation"
        with Image.open(s["prediction"]["mask_path"]) as mask, Image.open(s["filepath"]) as im:
            assert mask.mode == "L" and mask.size == im.size


def test_fiftyones_importer_reads_the_dataset(run: Path, tmp_path: Path) -> None:
    export(run, "fiftyone", tmp_path, "--predictions")
    tool_check("DEALSEG_FIFTYONE_PYTHON", FIFTYONE_CHECK, tmp_path)


def test_csv_has_a_named_column_per_class_and_every_path_mapped(run: Path, tmp_path: Path) -> None:
    pool = pool_of(run)
    export(run, "csv", tmp_path, "--path-map", f"{pool}=/mnt/share/pool")
    with open(tmp_path / "selection.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = spec_of_out(run).class_names
    head = ["rank", "path", "local_path", "score", "ds", "de", "entropy", "novelty"]
    assert list(rows[0])[:8] == head
    assert list(rows[0])[8:] == [class_key(n) for n in names]
    assert {r["novelty"] for r in rows} == {""}  # the tiny model has no novelty statistics
    assert [r["local_path"] for r in rows] == selected(run)
    assert all(r["path"] == "/mnt/share/pool" + r["local_path"][len(str(pool)) :] for r in rows)
    scores = {
        r["path"]: r for r in map(json.loads, (run / "scores.jsonl").read_text().splitlines())
    }
    for r in rows:
        record = scores[r["local_path"]]
        assert float(r["ds"]) == pytest.approx(record["ds"])
        shares = [float(r[class_key(n)]) for n in names]
        assert shares == pytest.approx([record["class_fraction"][n] for n in names], abs=1e-6)


def test_export_errors_are_one_line(run: Path, tmp_path: Path) -> None:
    bare = shutil.copytree(run, tmp_path / "bare", ignore=shutil.ignore_patterns("maps"))
    cases = [
        (["csv", "--path-map", "/elsewhere=s3://b"], 1, "6 selected paths are under no"),
        (["csv", "--path-map", "no-equals-sign"], 2, "is not LOCAL=REMOTE"),
        (["cvat", "--predictions"], 2, "cvat takes no predictions"),
    ]
    for args, code, words in cases:
        r = deal_client("export", run, "--format", *args, "--dest", tmp_path / "x")
        assert r.exit_code == code and words in r.stderr, r.stderr
        assert sum(line.startswith("Error:") for line in r.stderr.splitlines()) == 1
    r = deal_client("export", bare, "--format", "labelstudio", "--predictions")
    assert r.exit_code == 1 and "draw the maps first" in r.stderr


# ------------------------------------------------------------------------------ python api
def readme_example() -> str:
    """The Python example of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    write_streets_pool(tmp_path / "pool", 6)  # the shipped model's own kind of frame
    code = readme_example()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "rank" in done.stdout


def test_import_dealseg_stays_light() -> None:
    code = (
        "import sys, dealseg\n"
        "light = [m for m in ('numpy', 'PIL', 'onnxruntime', 'torch') if m in sys.modules]\n"
        "print(light, callable(dealseg.score), callable(dealseg.select))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "True", "True"]


# --------------------------------------------------------------------------------- colours
def test_one_colour_map_close_to_matplotlibs_inferno() -> None:
    from matplotlib import colormaps

    from dealseg.core.colors import DIFFICULTY_LUT, difficulty_rgb

    reference = colormaps["inferno"](np.arange(256) / 255.0)[:, :3] * 255
    assert np.abs(DIFFICULTY_LUT.astype(float) - reference).max() <= 8
    assert np.array_equal(difficulty_rgb(np.array([0.0, 1.0])), DIFFICULTY_LUT[[0, 255]])
