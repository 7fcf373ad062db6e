"""Tests for the dataset loaders and augmentation (training/data.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dealseg.training.data import (
    CAMVID_CLASSES,
    CAMVID_TABLE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    Augment,
    DataError,
    SegmentationDataset,
    detect_layout,
    list_camvid,
    list_cityscapes,
    list_plain,
    validate,
)
from dealseg.training.streets.dataset import write_streets

SMALL = (64, 80)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _camvid_tree(root: Path, n: int = 3, size=(8, 10), split: str = "train") -> Path:
    """Tiny SegNet-layout CamVid: labels cycle through 0..11 (11 = void)."""
    h, w = size
    for i in range(n):
        _save(root / split / f"im{i}.png", _rgb(h, w, i))
        label = ((np.arange(h * w) + i) % 12).reshape(h, w).astype(np.uint8)
        _save(root / f"{split}annot" / f"im{i}.png", label)
    return root


def _cityscapes_tree(root: Path, ids: np.ndarray, split: str = "train") -> Path:
    h, w = ids.shape
    for city, frame in [("aachen", "000000_000019"), ("bochum", "000001_000002")]:
        stem = f"{city}_{frame}"
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(h, w))
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    return root


@pytest.fixture(scope="module")
def streets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("streets")
    write_streets(root, 10, SMALL, seed=0)
    return root


# ---------------------------------------------------------------- CamVid


def test_camvid_loader_reads_synth_output(streets):
    assert detect_layout(streets) == "camvid"
    samples = list_camvid(streets, "train")
    assert len(samples) == 7
    assert all(s.image.name == s.label.name for s in samples)
    assert all(s.label.parent.name == "trainannot" for s in samples)
    validate(samples, CAMVID_TABLE)
    ds = SegmentationDataset(streets, "train")
    assert (ds.layout, ds.num_classes, ds.class_names) == ("camvid", 11, CAMVID_CLASSES)
    image, label = ds[0]
    assert image.shape == (3, *SMALL) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.2
    assert label.shape == SMALL and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}


def test_camvid_split_file_and_directory_scan_agree(streets, tmp_path):
    copy = Path(shutil.copytree(streets, tmp_path / "copy"))
    from_list = [(s.image.name, s.label.name) for s in list_camvid(copy, "val")]
    (copy / "val.txt").unlink()
    from_dirs = [(s.image.name, s.label.name) for s in list_camvid(copy, "val")]
    assert from_list == from_dirs and len(from_dirs) == 1


def test_segnet_absolute_list_paths_resolve_under_root(tmp_path):
    root = _camvid_tree(tmp_path, n=2)
    lines = [f"/SegNet/CamVid/train/im{i}.png /SegNet/CamVid/trainannot/im{i}.png" for i in (1, 0)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    samples = list_camvid(root, "train")
    assert [s.image for s in samples] == [root / "train/im1.png", root / "train/im0.png"]


def test_camvid_void_maps_to_ignore(tmp_path):
    ds = SegmentationDataset(_camvid_tree(tmp_path), "train")
    raw = np.asarray(Image.open(ds.samples[0].label)).astype(np.int64)
    _, label = ds[0]
    expected = np.where(raw == 11, IGNORE_INDEX, raw)
    np.testing.assert_array_equal(label.numpy(), expected)
    assert (label == IGNORE_INDEX).any()


def test_indices_and_size(tmp_path):
    root = _camvid_tree(tmp_path, n=4, size=(16, 20))
    ds = SegmentationDataset(root, "train", size=(8, 12), indices=[3, 1])
    assert len(ds) == 2 and [s.image.name for s in ds.samples] == ["im3.png", "im1.png"]
    image, label = ds[1]
    assert image.shape == (3, 8, 12) and label.shape == (8, 12)
    assert set(label.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}


def test_dataloader_batches(tmp_path):
    ds = SegmentationDataset(_camvid_tree(tmp_path, n=4), "train", augment=Augment(crop=(6, 6)))
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 6, 6) and labels.shape == (4, 6, 6)


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_ids_map_to_train_ids(tmp_path):
    ids = np.array([[0, 7, 26, 8], [33, 24, 23, 255]], dtype=np.uint8)  # 255: license plate (-1)
    root = _cityscapes_tree(tmp_path, ids)
    assert detect_layout(root) == "cityscapes"
    samples = list_cityscapes(root, "train")
    assert [s.image.parent.name for s in samples] == ["aachen", "bochum"]
    assert samples[0].label.name == "aachen_000000_000019_gtFine_labelIds.png"
    ds = SegmentationDataset(root, "train")
    assert ds.num_classes == 19 and ds.class_names == CITYSCAPES_CLASSES
    assert len(ds.palette) == 19 == len(CITYSCAPES_PALETTE)
    _, label = ds[0]
    expected = [[255, 0, 13, 1], [18, 11, 10, 255]]
    assert label.tolist() == expected


def test_cityscapes_mapping_is_the_official_one():
    train_ids = sorted(t for t in CITYSCAPES_ID_TO_TRAINID.values() if t != 255)
    assert train_ids == list(range(19))
    assert CITYSCAPES_ID_TO_TRAINID[7] == 0 and CITYSCAPES_ID_TO_TRAINID[26] == 13
    assert CITYSCAPES_ID_TO_TRAINID[0] == 255 and CITYSCAPES_ID_TO_TRAINID[33] == 18


def test_detect_layout_names_the_path_when_neither(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="CamVid") as err:
        detect_layout(tmp_path)
    assert str(tmp_path) in str(err.value)


# ---------------------------------------------------------------- plain layout, class files

ROADS = {
    "classes": [
        {"name": "road", "value": 10, "color": [128, 64, 128]},
        {"name": "lane", "value": 20},
        {"name": "car", "value": 30, "color": [0, 0, 142]},
        {"name": "person", "value": 40},
    ],
    "ignore": [0, 255],
}


def _plain_tree(root: Path, n: int = 6, splits: dict[str, list[int]] | None = None) -> Path:
    """images/f<i>.jpg + masks/f<i>.png holding the four ROADS values and ignored 0."""
    for i in range(n):
        _save(root / "images" / f"f{i}.jpg", _rgb(8, 10, i))
        mask = np.array([0, 10, 20, 30, 40], np.uint8)[(np.arange(80) + i) % 5].reshape(8, 10)
        _save(root / "masks" / f"f{i}.png", mask)
    (root / "classes.json").write_text(json.dumps(ROADS))
    for split, ids in (splits or {}).items():
        (root / f"{split}.txt").write_text("".join(f"f{i}\n" for i in ids))
    return root


def test_plain_layout_reads_its_class_file(tmp_path):
    root = _plain_tree(tmp_path, splits={"train": [0, 2, 3], "val": [1], "test": [4, 5]})
    assert detect_layout(root) == "plain"
    ds = SegmentationDataset(root, "train")
    assert ds.class_names == ("road", "lane", "car", "person") and ds.num_classes == 4
    assert ds.palette[0] == (128, 64, 128) and ds.palette[2] == (0, 0, 142)
    assert [s.image.name for s in ds.samples] == ["f0.jpg", "f2.jpg", "f3.jpg"]
    raw = np.asarray(Image.open(ds.samples[0].label)).astype(np.int64)
    _, label = ds[0]
    lut = {0: IGNORE_INDEX, 10: 0, 20: 1, 30: 2, 40: 3}
    np.testing.assert_array_equal(label.numpy(), np.vectorize(lut.get)(raw))
    ds.validate()


def test_a_yaml_class_file_reads_as_the_json_one(tmp_path):
    yaml = pytest.importorskip("yaml")
    root = _plain_tree(tmp_path / "json", splits={"train": [0, 1]})
    copy = Path(shutil.copytree(root, tmp_path / "yaml"))
    (copy / "classes.json").unlink()
    (copy / "classes.yaml").write_text(yaml.safe_dump(ROADS))
    a, b = SegmentationDataset(root, "train"), SegmentationDataset(copy, "train")
    assert (a.class_names, a.palette) == (b.class_names, b.palette)
    assert torch.equal(a[1][1], b[1][1])


def test_without_split_files_a_hash_of_the_stem_splits_the_images(tmp_path):
    root = _plain_tree(tmp_path, n=40)
    splits = {s: [x.image.stem for x in list_plain(root, s)] for s in ("train", "val", "test")}
    stems = [stem for names in splits.values() for stem in names]
    assert sorted(stems) == sorted(f"f{i}" for i in range(40))  # each image in one split
    assert len(splits["train"]) > len(splits["val"]) > 0 and len(splits["test"]) > 0
    assert splits == {s: [x.image.stem for x in list_plain(root, s)] for s in splits}


def test_a_class_file_holds_2_to_255_classes(tmp_path):
    from dealseg.core.classes import read_class_file

    for count, ok in ((1, False), (2, True), (255, True)):
        doc = {"classes": [f"c{i}" for i in range(count)], "ignore": []}
        (tmp_path / "classes.json").write_text(json.dumps(doc))
        if ok:
            assert read_class_file(tmp_path / "classes.json").num_classes == count
            continue
        with pytest.raises(DataError, match="1 classes; dealseg trains 2 to 255"):
            read_class_file(tmp_path / "classes.json")


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"classes": ["a", "a"]}, "class names must be unique; repeated: ['a']"),
        ({"classes": ["a", {"name": "b", "value": 255}]}, "values [255] are both a class value"),
        ({"classes": ["a", {"name": "b", "color": [1, 2]}]}, "class 'b' color must be [r, g, b]"),
        ({"classes": ["a", {"name": "b", "value": 300}]}, "value must be an integer in 0..255"),
        ({"names": ["a", "b"]}, "expected an object with a 'classes' list"),
    ],
)
def test_a_bad_class_file_is_one_error_naming_it(tmp_path, doc, words):
    root = _plain_tree(tmp_path, splits={"train": [0]})
    (root / "classes.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        SegmentationDataset(root, "train")
    assert str(root / "classes.json") in str(err.value) and words in str(err.value)


def test_plain_layout_needs_a_class_file(tmp_path):
    root = _plain_tree(tmp_path, splits={"train": [0]})
    (root / "classes.json").unlink()
    with pytest.raises(DataError, match="has no class file: the plain layout needs one"):
        SegmentationDataset(root, "train")


def test_plain_layout_bad_data_names_the_file(tmp_path):
    root = _plain_tree(tmp_path, splits={"train": [0, 1, 2], "val": [], "test": [3]})
    _save(root / "masks" / "f1.png", np.full((8, 10), 7, np.uint8))  # 7: no class
    _save(root / "masks" / "f2.png", np.zeros((4, 10), np.uint8))  # another size
    with pytest.raises(DataError) as err:
        SegmentationDataset(root, "train").validate()
    text = str(err.value)
    assert "2 bad sample" in text and str(root / "masks" / "f1.png") in text
    assert "values [7] that are not classes (expected class values 10, 20, 30, 40" in text
    assert str(root / "masks" / "f2.png") in text and "size mismatch" in text
    with pytest.raises(DataError, match="split 'val' is empty"):
        list_plain(root, "val")
    (root / "masks" / "f3.png").unlink()
    with pytest.raises(DataError, match="image without mask") as err:
        list_plain(root, "test")
    assert str(root / "images" / "f3.jpg") in str(err.value)
    (root / "test.txt").write_text("f0\nnope\n")
    with pytest.raises(DataError, match=r"test.txt:2: no image with stem 'nope'"):
        list_plain(root, "test")


# ---------------------------------------------------------------- bad data


def _no_label(root: Path) -> Path:
    (root / "trainannot" / "im1.png").unlink()
    return root / "train" / "im1.png"


def _size_mismatch(root: Path) -> Path:
    return _save(root / "trainannot" / "im1.png", np.zeros((5, 5), np.uint8))


def _bad_camvid_values(root: Path) -> Path:
    return _save(root / "trainannot" / "im1.png", np.full((8, 10), 12, np.uint8))


def _unreadable_image(root: Path) -> Path:
    path = root / "train" / "im1.png"
    path.write_bytes(b"this is not a png")
    return path


def _colour_label(root: Path) -> Path:
    return _save(root / "trainannot" / "im1.png", np.zeros((8, 10, 3), np.uint8))


@pytest.mark.parametrize(
    "corrupt", [_size_mismatch, _bad_camvid_values, _unreadable_image, _colour_label]
)
def test_bad_item_fails_on_load_and_in_validate_naming_the_file(
    tmp_path, corrupt: Callable[[Path], Path]
):
    root = _camvid_tree(tmp_path)
    bad_file = corrupt(root)
    ds = SegmentationDataset(root, "train")
    ds[0]  # good items still load
    with pytest.raises(DataError) as err:
        ds[1]
    assert str(bad_file) in str(err.value)
    with pytest.raises(DataError) as err:
        ds.validate()
    assert str(bad_file) in str(err.value) and "1 bad sample" in str(err.value)


def test_image_without_label_fails_at_listing(tmp_path):
    image = _no_label(_camvid_tree(tmp_path))
    with pytest.raises(DataError, match="without label") as err:
        list_camvid(tmp_path, "train")
    assert str(image) in str(err.value)


def test_image_without_label_in_split_file(tmp_path):
    root = _camvid_tree(tmp_path)
    lines = "train/im0.png trainannot/im0.png\ntrain/im2.png nope/im2.png\n"
    (root / "train.txt").write_text(lines)
    with pytest.raises(DataError, match="without label") as err:
        list_camvid(root, "train")
    assert str(root / "train" / "im2.png") in str(err.value) and "train.txt:2" in str(err.value)


def test_validate_reports_every_bad_file(tmp_path):
    root = _camvid_tree(tmp_path)
    first = _size_mismatch(root)
    second = _save(root / "trainannot/im2.png", np.full((8, 10), 99, np.uint8))
    with pytest.raises(DataError, match="2 bad sample") as err:
        validate(list_camvid(root, "train"), CAMVID_TABLE)
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_bad_cityscapes_id_fails(tmp_path):
    root = _cityscapes_tree(tmp_path, np.array([[7, 40]], dtype=np.uint8))
    ds = SegmentationDataset(root, "train")
    with pytest.raises(DataError, match=r"\[40\]") as err:
        ds[0]
    assert str(ds.samples[0].label) in str(err.value)


def test_empty_split_fails(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(DataError, match="empty") as err:
        list_camvid(tmp_path, "val")
    assert str(tmp_path / "val") in str(err.value)
    (tmp_path / "leftImg8bit" / "val" / "aachen").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        list_cityscapes(tmp_path, "val")


# ---------------------------------------------------------------- augmentation


def _coded_pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Label with every value in 0..10 plus ignore, and an image that encodes it (channel 0)."""
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(rng.choice([*range(11), IGNORE_INDEX], size=(h, w))).long()
    image = (label.float() / 255).expand(3, h, w).clone()
    return image, label


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    crop=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    seed=st.integers(0, 2**16),
)
def test_augment_shapes_and_label_values(h, w, crop, seed):
    image, label = _coded_pair(h, w, seed)
    torch.manual_seed(seed)
    out_image, out_label = Augment(crop=crop)(image, label)
    assert out_image.shape == (3, *crop) and out_label.shape == crop
    assert out_image.dtype == torch.float32 and out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= set(label.unique().tolist()) | {IGNORE_INDEX}
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_flip_and_crop_keep_image_and_label_aligned():
    image, label = _coded_pair(12, 16)
    augment = Augment(crop=(10, 12), scale=(1.0, 1.0), color_jitter=0.0)
    flipped = 0
    for seed in range(20):
        out_image, out_label = augment(image, label, torch.Generator().manual_seed(seed))
        torch.testing.assert_close((out_image[0] * 255).round().long(), out_label)
        rows = [label[r] for r in range(12)]
        row = out_label[0]
        flipped += not any(_contains(r, row) for r in rows)
    assert 0 < flipped < 20  # both flipped and unflipped crops occur


def _contains(row: torch.Tensor, part: torch.Tensor) -> bool:
    n = part.numel()
    return any(torch.equal(row[i : i + n], part) for i in range(row.numel() - n + 1))


def test_padding_is_zero_image_and_ignore_label():
    image, label = torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long)
    out_image, out_label = Augment(crop=(6, 8), scale=(1.0, 1.0), flip=False, color_jitter=0)(
        image, label
    )
    assert (out_label[4:] == IGNORE_INDEX).all() and (out_label[:, 5:] == IGNORE_INDEX).all()
    assert (out_image[:, 4:] == 0).all() and (out_image[:, :4, :5] == 1).all()


def test_augment_is_deterministic_under_torch_seed():
    image, label = _coded_pair(20, 24)
    augment = Augment(crop=(16, 16))
    torch.manual_seed(123)
    a = augment(image, label)
    torch.manual_seed(123)
    b = augment(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_color_jitter_changes_image_not_label():
    image, label = torch.rand(3, 8, 8), torch.randint(0, 11, (8, 8))
    augment = Augment(crop=(8, 8), scale=(1.0, 1.0), flip=False, color_jitter=0.5)
    out_image, out_label = augment(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out_label, label) and not torch.allclose(out_image, image)
