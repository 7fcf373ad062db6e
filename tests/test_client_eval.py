"""`deal-client eval` and its metrics: hand-made inputs with known answers, then the whole command
on a hand-built contract model (`contract_model.py`) whose outputs are worked out by hand.

The evaluation set: 8 images of 32 x 48 pixels; image i has its top 4i rows red (255, the model
predicts class 1 there), green 200 - 20 i and blue 10 (PERM[i] + 1); every mask is class 0. So
image i's error rate is i / 8, ds = i / 8 exactly (it ranks as the oracle), de falls as the error
rises (Spearman -1) and entropy ranks the images with neighbours swapped (PERM).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from contract_model import CLASSES, SIZE, band_image, write_contract_model
from PIL import Image

from dealseg.client.cli import main
from dealseg.core.contract import IMAGE_SCORES, OUTPUTS
from dealseg.core.metrics import (
    JUDGED,
    augrc,
    aurc,
    auroc,
    capture_share,
    confusion_matrix,
    error_rate,
    judge,
    mean_iou,
    risk_coverage,
    spearman,
    worst_count,
)
from dealseg.core.ranking import path_hash

N = 8
PERM = [1, 0, 3, 2, 5, 4, 7, 6]  # entropy's order: neighbours swapped
ERRORS = [i / N for i in range(N)]
PERFECT = {
    "spearman_error": 1.0,
    "spearman_miou": 1.0,
    "auroc_worst10": 1.0,
    "auroc_worst25": 1.0,
    "aurc": np.mean([i / 16 for i in range(N)]),  # after i + 1 images: mean of 0..i / 8
    "augrc": (168 / 128 - 28 / 128) / 8,  # generalized risks i (i - 1) / 128, i = 1..8
    "capture_worst10": 1.0,
    "capture_worst25": 1.0,
}
EXPECTED = {
    "ds": PERFECT,
    "oracle": PERFECT,
    "entropy": {
        "spearman_error": 1 - 6 * N / (N * (N * N - 1)),  # every rank off by one: sum d^2 = 8
        "spearman_miou": 1 - 6 * N / (N * (N * N - 1)),
        "auroc_worst10": 6 / 7,  # the worst image has the 2nd highest entropy
        "auroc_worst25": 1.0,
        # accepted errors (x 1/8): 1, 0, 3, 2, 5, 4, 7, 6; cumulated 1, 1, 4, 6, 11, 15, 22, 28
        "aurc": np.mean([1 / 8, 1 / 16, 4 / 24, 6 / 32, 11 / 40, 15 / 48, 22 / 56, 28 / 64]),
        "augrc": (88 / 64 - 14 / 64) / 8,
        "capture_worst10": 0.0,
        "capture_worst25": 1.0,
    },
    "de": {
        "spearman_error": -1.0,
        "spearman_miou": -1.0,
        "auroc_worst10": 0.0,
        "auroc_worst25": 0.0,
        "aurc": np.mean([(15 - i) / 16 for i in range(1, N + 1)]),  # worst first
        "augrc": (168 / 64 - 14 / 64) / 8,
        "capture_worst10": 0.0,
        "capture_worst25": 0.0,
    },
}


def deal_client(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def save_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    return path


def write_set(images: Path, masks: Path, mask_size: tuple[int, int] = SIZE) -> list[Path]:
    """The evaluation set (module doc): img<i>.png in `images`, its mask in `masks`."""
    paths = []
    for i in range(N):
        path = images / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(band_image(4 * i, 200 - 20 * i, 10 * (PERM[i] + 1))).save(path)
        save_mask(masks / f"img{i}.png", np.zeros(mask_size, np.uint8))
        paths.append(path)
    return paths


def run_eval(pool: Path, labels: Path, model: Path, out: Path, *args: object) -> Result:
    return deal_client(
        "eval", pool, "--labels", labels, "--model", model, "--out", out, "--no-progress", *args
    )


def summary(out: Path) -> dict:
    return json.loads((out / "eval.json").read_bytes().decode("utf-8"))["summary"]


def metrics(out: Path) -> dict[str, dict]:
    return {s.pop("strategy"): s for s in summary(out)["strategies"]}


def table(stdout: str) -> dict[str, list[str]]:
    """The stdout table: strategy -> its cells."""
    rows = stdout.splitlines()[1:-1]
    return {row.split()[0]: row.split()[1:] for row in rows}


def assert_expected(got: dict[str, dict], pool_paths: list[str]) -> None:
    for name, want in EXPECTED.items():
        assert got[name] == pytest.approx(want, abs=1e-12), name
    errors, miou = np.array(ERRORS), np.array([1.0] + [(1 - e) / 2 for e in ERRORS[1:]])
    random = judge(pool_paths, path_hash(pool_paths, 0), errors, miou)
    assert got["random"] == pytest.approx(random, abs=1e-12)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_contract_model(tmp_path_factory.mktemp("model") / "contract.onnx")


@pytest.fixture(scope="module")
def evalset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("evalset")
    paths = write_set(root / "pool", root / "masks")
    return root / "pool", root / "masks", [str(p) for p in paths]


@pytest.fixture(scope="module")
def embedded(model: Path, evalset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    pool, masks, _ = evalset
    out = tmp_path_factory.mktemp("embedded")
    return out, run_eval(pool, masks, model, out)


# --------------------------------------------------------------------------- (a) metrics
def test_spearman_gives_ties_their_mean_rank() -> None:
    # ranks [0, 1.5, 1.5, 3] vs [0, 1, 2, 3]: covariance 4.5, variances 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman([3, 2, 1, 0], [0, 1, 2, 3]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant has no ranking


def test_auroc_counts_ties_as_half() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1], bool)) == 1.0
    # positives 0.5 and 0.9 against negatives 0.5 (a tie: 1/2) and 0.2: 3.5 of 4 pairs
    assert auroc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1], bool)) == 0.875


def test_risk_coverage_areas_of_a_hand_computed_curve() -> None:
    scores, errors = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 0.4, 0.2, 0.6])
    coverage, risk, general = risk_coverage(scores, errors)
    assert coverage == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert risk == pytest.approx([0.0, 0.2, 0.2, 0.3])  # cumulated 0, 0.4, 0.6, 1.2 over 1..4
    assert general == pytest.approx([0.0, 0.1, 0.15, 0.3])  # the same over 4
    assert aurc(scores, errors) == pytest.approx(0.7 / 4)
    # trapezoids from (0, 0): (0 + 0) / 2 + (0 + 0.1) / 2 + (0.1 + 0.15) / 2 + (0.15 + 0.3) / 2
    assert augrc(scores, errors) == pytest.approx(0.4 / 4)
    # shuffled input: the same curve
    assert aurc(scores[::-1], errors[::-1]) == pytest.approx(0.7 / 4)


def test_tied_scores_are_accepted_together_at_their_mean_error() -> None:
    scores, errors = np.array([0.1, 0.1, 0.3]), np.array([0.0, 0.6, 0.3])
    _, risk, general = risk_coverage(scores, errors)
    assert risk == pytest.approx([0.3, 0.3, 0.3]) and general == pytest.approx([0.1, 0.2, 0.3])
    assert augrc(scores, errors) == pytest.approx((0.6 - 0.15) / 3)
    assert augrc(scores[[1, 0, 2]], errors[[1, 0, 2]]) == augrc(scores, errors)


@pytest.mark.parametrize("seed", range(5))
def test_augrc_of_failures_is_traubs_closed_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    failed = rng.random(40) < 0.3
    pi = failed.mean()
    closed = pi**2 / 2 + pi * (1 - pi) * (1 - auroc(scores, failed))
    assert augrc(scores, failed.astype(float)) == pytest.approx(closed)


def test_capture_share_breaks_ties_by_path() -> None:
    paths = ["a", "b", "c", "d"]
    errors = np.array([0.9, 0.5, 0.5, 0.1])  # the worst 2: a, then b (tie with c, by path)
    assert capture_share(paths, np.array([0.2, 0.1, 0.8, 0.3]), errors, 2) == 0.0  # c, d
    assert capture_share(paths, np.array([0.9, 0.1, 0.1, 0.0]), errors, 2) == 1.0  # a, b
    assert capture_share(paths, np.array([0.0, 0.9, 0.1, 0.2]), errors, 2) == 0.5  # b, d


def test_worst_count_is_a_ceiling_of_at_least_one() -> None:
    assert [worst_count(n, 10) for n in (1, 8, 10, 20, 30, 31)] == [1, 1, 1, 2, 3, 4]
    assert [worst_count(n, 25) for n in (1, 8, 10)] == [1, 2, 3]


def test_error_rate_and_miou_of_one_image() -> None:
    label = np.array([[0, 0, 1, 11], [0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 0], [0, 0, 1, 0]])
    conf = confusion_matrix(pred, label, 11, ~np.isin(label, [11, 255]))
    assert error_rate(conf) == pytest.approx(2 / 6)
    assert mean_iou(conf) == pytest.approx((2 / 4 + 2 / 4) / 2)  # classes 0 and 1
    assert np.array_equal(confusion_matrix(pred, label, 11), conf)  # default: label 0..C-1


def test_image_scores_are_the_contracts_per_image_scores() -> None:
    per_image = {t.name for t in OUTPUTS if t.dims == () and t.dtype == "float32"}
    assert set(IMAGE_SCORES) == per_image - {"novelty"}  # how far from training: no strategy


def test_the_judged_metrics_are_the_tables_columns() -> None:
    from dealseg.client.evaluation import HEADERS

    assert list(HEADERS) == list(JUDGED)


# ----------------------------------------------------------------- (b) the contract model
def test_eval_gives_the_hand_computed_metrics(embedded, evalset) -> None:
    out, result = embedded
    assert result.exit_code == 0, result.stderr
    _, _, paths = evalset
    assert_expected(metrics(out), paths)
    doc = summary(out)
    assert doc["counts"] == {"images": N, "evaluated": N, "failed": 0}
    assert doc["ignored_values"] == [11, 255] and doc["model"].startswith("deal:7:")
    spearmans = [s["spearman_error"] for s in doc["strategies"]]
    assert spearmans == sorted(spearmans, reverse=True)
    names = [s["strategy"] for s in doc["strategies"]]
    assert names[:3] == ["ds", "oracle", "entropy"] and names[-1] == "de"


def test_eval_json_rows_hold_each_images_error_rate_miou_and_scores(embedded, evalset) -> None:
    out, _ = embedded
    rows = json.loads((out / "eval.json").read_text())["images"]
    assert [r["path"] for r in rows] == evalset[2]
    for i, row in enumerate(rows):
        assert row["error_rate"] == ERRORS[i] == row["ds"]
        assert row["miou"] == (1.0 if i == 0 else (1 - ERRORS[i]) / 2)
        assert row["de"] == pytest.approx((200 - 20 * i) / 255)
        assert row["entropy"] == pytest.approx(10 * (PERM[i] + 1) / 255)


def test_the_table_marks_the_best_per_column(embedded) -> None:
    _, result = embedded
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["strategy", "rho(err)", "rho(1-mIoU)", "AUROC@10%", "AUROC@25%"] + [
        "AURC",
        "AUGRC",
        "top10%",
        "top25%",
    ]
    cells = table(result.stdout)
    assert list(cells)[:3] == ["ds", "oracle", "entropy"]
    assert cells["ds"] == ["1.000*"] * 4 + ["0.219*", "0.137*"] + ["1.000*"] * 2
    assert cells["oracle"] == ["1.000"] * 4 + ["0.219", "0.137"] + ["1.000"] * 2  # never marked
    assert cells["entropy"] == ["0.905", "0.905", "0.857", "1.000*", "0.245", "0.145"] + [
        "0.000",
        "1.000*",
    ]
    assert cells["de"] == ["-1.000", "-1.000", "0.000", "0.000", "0.656", "0.301", "0.000"] + [
        "0.000"
    ]
    assert lines[-1].startswith("* best per column")


def test_json_prints_the_summary_and_a_risk_coverage_png_is_written(
    model: Path, evalset, embedded, tmp_path: Path
) -> None:
    pool, masks, _ = evalset
    result = run_eval(pool, masks, model, tmp_path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == summary(tmp_path) == summary(embedded[0])
    with Image.open(tmp_path / "risk_coverage.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600


# --------------------------------------------------------------------------- (c) bad labels
def test_each_bad_label_or_image_is_one_error_row_and_the_rest_is_evaluated(
    model: Path, tmp_path: Path
) -> None:
    pool, masks = tmp_path / "pool", tmp_path / "masks"
    paths = [str(p) for p in write_set(pool, masks)]
    image = band_image(0, 0, 0)
    for name in ("missing", "unreadable", "wrongsize", "unknown", "rgb", "broken"):
        Image.fromarray(image).save(pool / f"{name}.png")
    (masks / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save_mask(masks / "wrongsize.png", np.zeros((20, 20)))
    unknown = np.zeros(SIZE)
    unknown[0, :3] = [12, 40, 11]  # 11 and 255 are ignored, 12 and 40 are no class
    save_mask(masks / "unknown.png", unknown)
    Image.new("RGB", (48, 32)).save(masks / "rgb.png")
    (pool / "broken.png").write_bytes(b"not an image at all")
    save_mask(masks / "broken.png", np.zeros(SIZE))

    result = run_eval(pool, masks, model, tmp_path / "out")
    assert result.exit_code == 3 and "Traceback" not in result.stderr
    doc = json.loads((tmp_path / "out" / "eval.json").read_text())
    errors = {Path(e["path"]).stem: e["error"] for e in doc["errors"]}
    assert sorted(errors) == ["broken", "missing", "rgb", "unknown", "unreadable", "wrongsize"]
    assert errors["missing"].startswith("no label: no missing.png under")
    assert "unreadable" in errors["unreadable"] and "unreadable.png" in errors["unreadable"]
    assert "size 20x20 does not fit the image's 48x32" in errors["wrongsize"]
    assert "aspect ratio 1.000 vs 1.500" in errors["wrongsize"]
    assert "unknown class ids [12, 40]" in errors["unknown"] and "0..10" in errors["unknown"]
    assert "mode RGB" in errors["rgb"]
    assert errors["broken"].startswith("not an image")
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 6 and all(f"{name}.png: " in "".join(failed) for name in errors)
    assert doc["summary"]["counts"] == {"images": N + 6, "evaluated": N, "failed": 6}
    assert_expected(metrics(tmp_path / "out"), paths)


def test_ignored_values_are_not_evaluated(model: Path, tmp_path: Path) -> None:
    pool, masks = tmp_path / "pool", tmp_path / "masks"
    write_set(pool, masks)
    mask = np.zeros(SIZE)
    mask[:8], mask[8:12], mask[12:16] = 11, 255, 3  # over the red rows, where class 1 is predicted
    save_mask(masks / "img4.png", mask)
    result = run_eval(pool, masks, model, tmp_path / "a", "--ignore", 3)
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "a" / "eval.json").read_text())["images"]
    assert rows[4]["error_rate"] == 0.0 and rows[4]["miou"] == 1.0
    assert summary(tmp_path / "a")["ignored_values"] == [3, 11, 255]
    all_ignored = run_eval(pool, masks, model, tmp_path / "b", "--ignore", 0, "--ignore", 3)
    assert all_ignored.exit_code == 3 and "nothing to evaluate" in all_ignored.stderr


def test_usage_errors_exit_2(model: Path, evalset, tmp_path: Path) -> None:
    pool, masks, _ = evalset
    assert deal_client("eval", pool, "--model", model).exit_code == 2  # no --labels
    assert deal_client("eval", pool, "--labels", tmp_path / "none").exit_code == 2
    (tmp_path / "empty").mkdir()
    empty = deal_client("eval", pool, "--labels", tmp_path / "empty", "--model", model)
    assert empty.exit_code == 2 and "holds no mask PNGs" in empty.stderr
    both = deal_client("eval", pool, "--labels", masks, "--model", model, "--url", "x:1")
    assert both.exit_code == 2 and "exclude each other" in both.stderr


def test_labels_of_other_classes_are_refused_with_both_lists(
    model: Path, evalset, tmp_path: Path
) -> None:
    """A 4-class label set against the 11-class model once ran and printed a table."""
    pool, masks, _ = evalset
    root = tmp_path / "set"
    write_set(root / "test", root / "testannot")
    other = ["road", "car", "person", "sky"]
    (root / "classes.json").write_text(json.dumps({"classes": other}))
    for labels in (root, root / "testannot"):  # the class file in LABELS or the folder above
        result = run_eval(root / "test", labels, model, tmp_path / "out")
        assert result.exit_code == 2 and not (tmp_path / "out").exists()
        assert "has 4 classes ['road', 'car', 'person', 'sky']" in result.stderr
        assert f"has 11 {list(CLASSES)}" in result.stderr and "Traceback" not in result.stderr
    (root / "classes.json").write_text(json.dumps({"classes": list(CLASSES)}))
    assert run_eval(root / "test", root, model, tmp_path / "out").exit_code == 0


def test_odd_names_give_strict_utf8_json(model: Path, tmp_path: Path) -> None:
    pool, masks = tmp_path / "pool", tmp_path / "masks"
    write_set(pool, masks)
    odd = os.fsdecode(b"odd\xff")
    Image.fromarray(band_image(8, 0, 0)).save(pool / f"{odd}.png")
    save_mask(masks / f"{odd}.png", np.zeros(SIZE))
    Image.fromarray(band_image(8, 0, 0)).save(pool / f"{odd}2.png")  # no label
    result = run_eval(pool, masks, model, tmp_path / "out")
    assert result.exit_code == 3
    doc = json.loads((tmp_path / "out" / "eval.json").read_bytes().decode("utf-8", "strict"))
    row = next(r for r in doc["images"] if "path_b64" in r)
    assert row["path"].endswith("odd\\xff.png") and row["error_rate"] == 0.25
    (error,) = doc["errors"]
    assert "path_b64" in error and "odd\\xff2.png" in error["error"]


# -------------------------------------------------------------------- (e) label layouts
def test_camvid_layout_with_half_resolution_masks(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    paths = [str(p) for p in write_set(root / "test", root / "testannot", (16, 24))]
    write_set(root / "train", root / "trainannot")
    for i in range(N):  # the same stems in another split: the wrong masks
        save_mask(root / "trainannot" / f"img{i}.png", np.ones(SIZE))
    for labels in (root, root / "testannot"):
        out = tmp_path / labels.name
        result = run_eval(root / "test", labels, model, out)
        assert result.exit_code == 0, result.stderr
        assert_expected(metrics(out), paths)


def test_a_plain_mask_folder_is_searched_recursively(model: Path, tmp_path: Path) -> None:
    pool, masks = tmp_path / "pool", tmp_path / "masks"
    paths = [str(p) for p in write_set(pool / "cam0", masks / "deep" / "er")]
    save_mask(masks / "img3.png", np.zeros((16, 24)))  # a second img3 mask elsewhere
    result = run_eval(pool, masks, model, tmp_path / "out")
    assert result.exit_code == 3
    errors = json.loads((tmp_path / "out" / "eval.json").read_text())["errors"]
    assert [Path(e["path"]).name for e in errors] == ["img3.png"]
    assert errors[0]["error"].startswith("ambiguous label: 2 masks named img3.png")
    (masks / "img3.png").unlink()
    assert run_eval(pool, masks, model, tmp_path / "out").exit_code == 0
    assert_expected(metrics(tmp_path / "out"), paths)


# --------------------------------------------------------------------------- (d) Triton
@pytest.mark.triton
def test_triton_gives_the_embedded_table(model: Path, evalset, embedded, tmp_path: Path) -> None:
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    pool, masks, _ = evalset
    write_repository(model, tmp_path / "repo", target="python-cpu")
    with TritonServer(tmp_path / "repo") as server:
        for url, protocol in ((server.url_grpc, "grpc"), (server.url_http, "http")):
            out = tmp_path / protocol
            args = ("--url", url, "--protocol", protocol, "--out", out, "--batch-size", 3)
            result = deal_client("eval", pool, "--labels", masks, "--no-progress", *args)
            assert result.exit_code == 0, result.stderr
            assert result.stdout == embedded[1].stdout
            assert summary(out) == summary(embedded[0])
