"""Tests for the procedural street-scene generator (training/streets/)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dealseg.core.classes import read_class_file
from dealseg.training.cli import main
from dealseg.training.data import CAMVID_CLASSES, CAMVID_PALETTE
from dealseg.training.streets import canvas as streets_canvas
from dealseg.training.streets import dataset as streets_dataset
from dealseg.training.streets import objects as streets_objects
from dealseg.training.streets.conditions import CONDITIONS
from dealseg.training.streets.dataset import plan_streets, write_streets
from dealseg.training.streets.render import Shot, render_scene
from dealseg.training.tags import TAGS_FILE, read_tags

SMALL = (64, 80)  # (H, W)
TINY = (48, 64)
SKY, POLE, ROAD, SIGN, PEDESTRIAN, BICYCLIST = 0, 2, 3, 6, 9, 10
PLAN = dict(n=20, seed=3, sequence_length=4, rare_scale=5.0)  # 6 drives, most of them rare


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


def _frame(seed: int, shot: Shot, size=TINY) -> tuple[np.ndarray, np.ndarray]:
    image, label = render_scene(np.random.default_rng(seed), size, shot)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def streets(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("streets")
    return root, write_streets(root, size=SMALL, **PLAN)


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
    classes = read_class_file(root / "classes.json")  # the class file the loaders read
    assert classes.names == CAMVID_CLASSES and classes.palette == CAMVID_PALETTE
    assert classes.values == tuple(range(11)) and classes.ignore == (11, 255)
    assert sum(summary["class_share"].values()) + summary["void_share"] == pytest.approx(1.0)


def test_same_seed_gives_identical_bytes_with_any_worker_count(streets, tmp_path):
    root, summary = streets
    again = write_streets(tmp_path, size=SMALL, **PLAN, workers=2)
    assert TAGS_FILE in _digest(root) and "summary.json" in _digest(root)
    assert _digest(tmp_path) == _digest(root)
    assert again == summary == json.loads((root / "summary.json").read_text())


def test_different_seed_differs(streets, tmp_path):
    root, _ = streets
    write_streets(tmp_path, 4, SMALL, seed=4, split=(1.0, 0.0, 0.0), sequence_length=4)
    first = "train/s0000_f00.png"
    assert (tmp_path / first).read_bytes() != (root / first).read_bytes()


def test_synth_and_tags_import_without_torch():
    code = (
        "import sys, dealseg.training.streets.dataset, dealseg.training.tags; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_drives_stay_in_one_split_and_their_names_show_them():
    tags = plan_streets(203, sequence_length=5, seed=1)
    assert [t.split for t in tags].count("train") == 142  # splits count images, as before
    drives = defaultdict(list)
    for tag in tags:
        drives[tag.sequence].append(tag)
        assert tag.stem == f"s{tag.sequence:04d}_f{tag.frame:02d}"
        assert tag.image == f"{tag.split}/{tag.stem}.png"
    last_of_split = {max(t.sequence for t in tags if t.split == s) for s in streets_dataset.SPLITS}
    for sequence, frames in drives.items():
        assert len({t.split for t in frames}) == 1 and len({t.condition for t in frames}) == 1
        assert [t.frame for t in frames] == list(range(len(frames)))
        assert len(frames) == 5 or sequence in last_of_split  # only a split's last drive is short
    assert all(t.frame == 0 for t in plan_streets(30, sequence_length=1))


def test_consecutive_frames_are_near_duplicates():
    drives = [[_frame(seed, Shot(k, 3))[0] for k in range(3)] for seed in range(6)]
    consecutive = [np.abs(d[k + 1] - d[k]).mean() for d in drives for k in range(2)]
    across = [np.abs(d[0] - e[0]).mean() for d, e in zip(drives[:-1], drives[1:], strict=True)]
    assert min(consecutive) > 0  # the camera moves: not copies
    assert np.mean(consecutive) < 0.5 * np.mean(across)


def test_rare_conditions_come_at_their_rates():
    tags = plan_streets(600, sequence_length=5, seed=0)  # 120 drives of 5
    rates = streets_dataset.condition_rates()
    assert set(rates) == set(CONDITIONS) and sum(rates.values()) == pytest.approx(1.0)
    for name, rate in rates.items():
        share = sum(t.condition == name for t in tags) / len(tags)
        assert abs(share - rate) <= 1 / 120 + 1e-9, name  # within one drive of the rate
    assert np.mean([t.rare for t in tags]) == pytest.approx(1 - rates["clear"], abs=1 / 120)
    assert {t.condition for t in plan_streets(600, rare_scale=0)} == {"clear"}


def test_summary_lists_the_conditions_produced(streets):
    root, summary = streets
    tags = read_tags(root).values()
    assert summary["sequences"] == len({t.sequence for t in tags}) == 6
    for name, row in summary["conditions"].items():
        assert row["rate"] == streets_dataset.condition_rates(5.0)[name]
        assert row["frames"] == sum(t.condition == name for t in tags)
        assert row["share"] == row["frames"] / 20
    assert sum(t.rare for t in tags) >= 10


def test_tags_round_trip_through_the_reader(streets, tmp_path):
    root, _ = streets
    tags = read_tags(root)
    assert tags == {t.image: t for t in plan_streets(**PLAN)}
    on_disk = {
        str(p.relative_to(root)) for s in streets_dataset.SPLITS for p in (root / s).glob("*.png")
    }
    assert set(tags) == on_disk
    for tag in tags.values():
        assert (root / f"{tag.split}annot" / f"{tag.stem}.png").is_file()
        assert tag.rare == (tag.condition != "clear")
    with pytest.raises(FileNotFoundError, match="deal-train synth"):
        read_tags(tmp_path)
    (tmp_path / TAGS_FILE).write_text('{"image": "train/a.png"}\n')
    with pytest.raises(ValueError, match=":1: not a frame tag"):
        read_tags(tmp_path)


def _contrast(images: np.ndarray) -> float:
    return float(np.mean([image.std() / image.mean() for image in images]))


# How each condition must change frames [N, H, W, 3], against the same streets on a clear day
# (road: where the labels say road).
CHANGES = {
    "night": lambda clear, rare, road: rare.mean() < 0.5 * clear.mean(),
    "fog": lambda clear, rare, road: _contrast(rare) < 0.8 * _contrast(clear),
    "rain": lambda clear, rare, road: rare[road].mean() < 0.75 * clear[road].mean(),
    "snow": lambda clear, rare, road: rare[road].mean() > clear[road].mean() + 50,
    "fisheye": lambda clear, rare, road: True,  # its geometry differs: see the label check
    "glare": lambda clear, rare, road: (rare > 250).mean() > (clear > 250).mean() + 0.05,
}


@pytest.mark.parametrize("condition", sorted(CHANGES))
def test_each_condition_changes_the_image_and_keeps_labels_exact(condition):
    pairs = [(_frame(seed, Shot(1, 2)), _frame(seed, Shot(1, 2, condition))) for seed in range(4)]
    clear = np.stack([image for (image, _), _ in pairs])
    rare = np.stack([image for _, (image, _) in pairs])
    road = np.stack([label == ROAD for (_, label), _ in pairs])
    assert np.abs(rare - clear).mean() > 15
    assert CHANGES[condition](clear, rare, road)
    same_labels = [np.array_equal(a[1], b[1]) for a, b in pairs]
    assert all(same_labels) if condition != "fisheye" else not any(same_labels)
    for _, (_, label) in pairs:
        assert (label == ROAD).any() and set(np.unique(label).tolist()) <= set(range(12))


def test_cli_writes_drives_and_tags(tmp_path):
    args = ["synth", "--out", str(tmp_path), "--n", "6", "--size", "48x64", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--sequence-length", "3", "--rare-scale", "0"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()  # the 78-line summary once went to stdout
    assert line == (
        f"wrote 6 images (train 4, val 1, test 1) in 4 drives to {tmp_path}; "
        f"summary in {tmp_path / 'summary.json'}"
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sequences"] == 4  # train 4 frames (3 + 1), val 1, test 1
    assert summary["conditions"]["clear"]["frames"] == 6
    assert len(read_tags(tmp_path)) == 6
    result = CliRunner().invoke(main, [*args, "--rare-scale", "10"])
    assert result.exit_code == 2 and "rare_scale must be in 0..5.88" in result.output


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
    assert sign_h.size and sign_h.max() <= 13
    assert np.mean(sign_v <= 13) >= 0.99  # longer only where two poles' signs touch
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
    canvas = streets_canvas.Canvas(10, 12)
    canvas.part(SKY, (100, 150, 200))
    far = canvas.part(ROAD, (90, 90, 90))
    near = canvas.part(streets_canvas.CAR, (200, 0, 0))
    canvas.draw.rectangle([0, 5, 11, 9], fill=far)
    canvas.draw.rectangle([3, 3, 6, 7], fill=near)  # drawn later: in front
    zeros = np.zeros((10, 12), np.float32)
    sky = np.zeros((10, 12, 3), np.float32)
    cam = streets_canvas.Camera(f=10, cx=6, cy=2, height=1.5, scale=1)
    layers = canvas.compose(cam, sky, (0, 0, 0), 1e9, (zeros, zeros))
    expected = np.zeros((10, 12), np.uint8)
    expected[5:, :] = ROAD
    expected[3:8, 3:7] = streets_canvas.CAR
    np.testing.assert_array_equal(layers.label, expected)
    assert layers.rgb[4, 4].tolist() == [200, 0, 0]
    assert np.isinf(layers.depth[0, 0]) and not layers.ground.any()


def test_surfaces_passing_the_camera_are_cut_at_the_near_plane():
    cam = streets_canvas.Camera(f=100, cx=50, cy=40, height=1.5, scale=1, z0=10.0)
    road = [(-2, 0, 5.0), (2, 0, 5.0), (2, 0, 30.0), (-2, 0, 30.0)]  # starts behind the camera
    outline = cam.outline(road)
    assert len(outline) == 4 and max(v for _, v in outline) == pytest.approx(40 + 150 / 0.3)
    assert cam.outline([(0, 0, 1.0), (1, 0, 2.0), (0, 1, 3.0)]) == []  # all behind


def test_objects_are_drawn_back_to_front():
    order: list[float] = []
    draws = [(z, lambda z=z: order.append(z)) for z in (5.0, 40.0, 12.0, 80.0)]
    streets_objects.draw_in_depth_order(draws)
    assert order == [80.0, 40.0, 12.0, 5.0]


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="split"):
        write_streets(tmp_path, 3, SMALL, split=(0.5, -0.1, 0.6))
    with pytest.raises(ValueError, match="at least 1"):
        write_streets(tmp_path, 0, SMALL)
    with pytest.raises(ValueError, match="sequence_length"):
        write_streets(tmp_path, 3, SMALL, sequence_length=0)
    with pytest.raises(ValueError, match="rare_scale"):
        write_streets(tmp_path, 3, SMALL, rare_scale=7.0)
    with pytest.raises(ValueError, match="choose one of: clear, night"):
        Shot(condition="hail")
    with pytest.raises(ValueError, match="frame"):
        Shot(frame=3, frames=3)
