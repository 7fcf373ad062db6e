"""Tests for the procedural street-scene generator (training/synth.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dealseg.training import synth
from dealseg.training.data import CAMVID_CLASSES, CAMVID_PALETTE
from dealseg.training.synth import render_scene, write_streets

SMALL = (64, 80)  # (H, W)
SKY, POLE, ROAD, SIGN, PEDESTRIAN, BICYCLIST = 0, 2, 3, 6, 9, 10


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of horizontal runs of True in a [H, W] mask."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    return np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]


def _labels(seed: int, count: int, size=SMALL) -> list[np.ndarray]:
    return [render_scene(np.random.default_rng([seed, i]), size)[1] for i in range(count)]


@pytest.fixture(scope="module")
def streets(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("streets")
    return root, write_streets(root, 20, SMALL, seed=3)


def test_layout_split_files_and_classes(streets):
    root, summary = streets
    assert summary["splits"] == {"train": 14, "val": 2, "test": 4}
    for split, count in summary["splits"].items():
        lines = (root / f"{split}.txt").read_text().splitlines()
        assert len(lines) == count == len(list((root / split).glob("*.png")))
        for line in lines:
            image, label = line.split()
            assert image.startswith(f"{split}/") and label.startswith(f"{split}annot/")
            assert Path(image).name == Path(label).name
            rgb, lab = Image.open(root / image), Image.open(root / label)
            assert (rgb.mode, rgb.size) == ("RGB", (SMALL[1], SMALL[0]))
            assert (lab.mode, lab.size) == ("L", rgb.size)
    classes = json.loads((root / "classes.json").read_text())
    assert classes["classes"] == list(CAMVID_CLASSES)
    assert [tuple(c) for c in classes["palette"]] == list(CAMVID_PALETTE)
    assert sum(summary["class_share"].values()) + summary["void_share"] == pytest.approx(1.0)


def test_same_seed_gives_identical_bytes_with_any_worker_count(streets, tmp_path):
    root, summary = streets
    again = write_streets(tmp_path, 20, SMALL, seed=3, workers=2)
    assert _digest(tmp_path) == _digest(root)
    assert again == summary


def test_different_seed_differs(streets, tmp_path):
    root, _ = streets
    write_streets(tmp_path, 4, SMALL, seed=4, split=(1.0, 0.0, 0.0))
    first = "train/street_00000.png"
    assert (tmp_path / first).read_bytes() != (root / first).read_bytes()


def test_labels_are_classes_or_void_and_every_image_has_road_and_sky():
    for label in _labels(seed=11, count=60):
        assert label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(12))
        assert (label == ROAD).any() and (label == SKY).any()


def test_poles_are_slender_and_signs_small_at_reference_size():
    labels = _labels(seed=5, count=30, size=(180, 240))
    pole_runs = np.concatenate([_runs(lab == POLE) for lab in labels])
    assert sum((lab == POLE).any() for lab in labels) >= 25  # poles are common...
    assert pole_runs[pole_runs <= 3].sum() >= 0.85 * pole_runs.sum()  # ...and 1-3 px wide
    sign_h = np.concatenate([_runs(lab == SIGN) for lab in labels])
    sign_v = np.concatenate([_runs((lab == SIGN).T) for lab in labels])
    assert sign_h.size and sign_h.max() <= 13 and sign_v.max() <= 13
    assert np.median(sign_h) <= 6  # most signs are a few pixels


def test_bicyclists_are_rare_and_pedestrians_common():
    labels = _labels(seed=7, count=300, size=(48, 64))
    with_bicyclist = np.mean([(lab == BICYCLIST).any() for lab in labels])
    with_pedestrian = np.mean([(lab == PEDESTRIAN).any() for lab in labels])
    assert 0.01 <= with_bicyclist <= 0.10
    assert with_pedestrian >= 0.5


def test_classes_are_imbalanced_like_real_streets():
    counts = np.bincount(np.concatenate([lab.ravel() for lab in _labels(9, 40)]), minlength=12)
    share = counts / counts.sum()
    large = share[[0, 1, 3]]  # sky, building, road
    tiny = share[[POLE, SIGN, BICYCLIST]]
    assert large.min() > 0.08 and tiny.max() < 0.02
    assert share[ROAD] > share[4]  # more road than pavement


def test_other_sizes_render():
    for size in [(360, 480), (64, 80), (33, 47)]:
        image, label = render_scene(np.random.default_rng(0), size)
        assert image.shape == (*size, 3) and image.dtype == np.uint8
        assert label.shape == size


def test_canvas_label_is_exactly_what_was_drawn_last():
    canvas = synth._Canvas(10, 12)
    canvas.part(SKY, (100, 150, 200))
    far = canvas.part(ROAD, (90, 90, 90))
    near = canvas.part(synth.CAR, (200, 0, 0))
    canvas.draw.rectangle([0, 5, 11, 9], fill=far)
    canvas.draw.rectangle([3, 3, 6, 7], fill=near)  # drawn later: in front
    zeros = np.zeros((10, 12), np.float32)
    sky = np.zeros((10, 12, 3), np.float32)
    label, rgb, _ = canvas.compose(sky, (0, 0, 0), 1e9, (zeros, zeros))
    expected = np.zeros((10, 12), np.uint8)
    expected[5:, :] = ROAD
    expected[3:8, 3:7] = synth.CAR
    np.testing.assert_array_equal(label, expected)
    assert rgb[4, 4].tolist() == [200, 0, 0]


def test_objects_are_drawn_back_to_front():
    order: list[float] = []
    draws = [(z, lambda z=z: order.append(z)) for z in (5.0, 40.0, 12.0, 80.0)]
    synth._draw_in_depth_order(draws)
    assert order == [80.0, 40.0, 12.0, 5.0]


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="split"):
        write_streets(tmp_path, 3, SMALL, split=(0.5, -0.1, 0.6))
    with pytest.raises(ValueError, match="at least 1"):
        write_streets(tmp_path, 0, SMALL)
