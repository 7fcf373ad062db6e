"""Dataset loaders: CamVid (SegNet layout), Cityscapes (gtFine labelIds) and the plain layout.

Every layout is read from a user path, never downloaded. Every sample is a pair of files
(`Sample`). The dataset's classes (`ClassTable`) come from its class file (core/classes.py),
else from the layout's built-in table (CamVid, Cityscapes; the plain layout needs a class file).
Mask values are mapped to train ids on load (CamVid void 11 -> 255, Cityscapes official id ->
trainId, a class file's values -> their classes' positions) and anything else fails fast with a
`DataError` that names the file.

The plain layout is what CVAT and Label Studio mask exports reduce to:

    root/images/<stem>.jpg|png|...   root/masks/<stem>.png (class values, mode L or P)
    root/classes.json                root/train.txt, val.txt, test.txt (optional: one stem a line)

Without split files each image goes to train, val or test by a hash of its stem (80/10/10).

Images come out as float tensors [3, H, W] in 0..1 (not normalised) and labels as long tensors
[H, W] with `IGNORE_INDEX` (255) for pixels the loss must skip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dealseg.core.classes import (
    IGNORE_INDEX,
    INVALID,
    ClassTable,
    DataError,
    find_class_file,
    read_class_file,
)
from dealseg.core.regions import RegionSpec, partition

from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CAMVID_VOID
from .losses import PSEUDO_OFFSET

# Cityscapes' 19 evaluation classes, in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
# Official cityscapesScripts labels.py: id -> trainId (255 = ignored in evaluation).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    0: 255,
    1: 255,
    2: 255,
    3: 255,
    4: 255,
    5: 255,
    6: 255,
    7: 0,
    8: 1,
    9: 255,
    10: 255,
    11: 2,
    12: 3,
    13: 4,
    14: 255,
    15: 255,
    16: 255,
    17: 5,
    18: 255,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    29: 255,
    30: 255,
    31: 16,
    32: 17,
    33: 18,
    -1: 255,  # license plate; stored as 255 in 8-bit labelIds images
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class Sample:
    """One image and its label file."""

    image: Path
    label: Path


CAMVID_TABLE = ClassTable(
    names=CAMVID_CLASSES,
    palette=CAMVID_PALETTE,
    values=tuple(range(len(CAMVID_CLASSES))),
    ignore=(CAMVID_VOID, IGNORE_INDEX),
    source="CamVid's built-in table",
)
CITYSCAPES_TABLE = ClassTable(
    names=CITYSCAPES_CLASSES,
    palette=CITYSCAPES_PALETTE,
    values=tuple(
        next(i for i, t in CITYSCAPES_ID_TO_TRAINID.items() if t == train_id)
        for train_id in range(len(CITYSCAPES_CLASSES))
    ),
    ignore=tuple(sorted(i % 256 for i, t in CITYSCAPES_ID_TO_TRAINID.items() if t == 255)),
    source="Cityscapes' built-in table",
)


# ---------------------------------------------------------------- listing


def detect_layout(root: Path) -> str:
    """Return "camvid", "cityscapes" or "plain" for a dataset root, or raise `DataError`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory")
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "plain"
    if any((root / f"{split}annot").is_dir() for split in ("train", "val", "test")):
        return "camvid"
    raise DataError(
        f"cannot tell the dataset layout of {root}: expected CamVid in SegNet layout "
        "(train/ trainannot/ val/ valannot/ test/ testannot/), Cityscapes (leftImg8bit/ and "
        "gtFine/) or the plain layout (images/ and masks/ with a classes.json); point the path "
        "at the folder that holds them"
    )


def dataset_classes(root: Path, layout: str) -> ClassTable:
    """The classes of a dataset: its class file, else the layout's built-in table."""
    path = find_class_file(root)
    if path is not None:
        return read_class_file(path)
    table = BUILT_IN_CLASSES.get(layout)
    if table is None:
        raise DataError(
            f"{root} has no class file: the {layout} layout needs one, e.g. {root}/classes.json "
            '= {"classes": [{"name": "road", "value": 1}, {"name": "car", "value": 2}], '
            '"ignore": [0, 255]} (see core/classes.py)'
        )
    return table


def _resolve_listed(root: Path, token: str) -> Path:
    """Resolve a SegNet list entry: relative to root, or absolute from another machine."""
    path = Path(token)
    if not path.is_absolute():
        return root / path
    if path.exists():
        return path
    # e.g. /SegNet/CamVid/train/x.png -> root/train/x.png
    return root / path.parent.name / path.name


def _read_split_file(root: Path, list_file: Path) -> list[Sample]:
    samples = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise DataError(
                f"{list_file}:{line_no}: expected 'image_path label_path', got {line.strip()!r}"
            )
        image, label = (_resolve_listed(root, t) for t in tokens)
        if not image.is_file():
            raise DataError(f"{list_file}:{line_no}: image {image} does not exist; fix the list")
        if not label.is_file():
            raise DataError(
                f"image without label: {image} (listed label {label} does not exist, "
                f"{list_file}:{line_no}); add the annotation or remove the line"
            )
        samples.append(Sample(image, label))
    return samples


def _scan_split_dirs(root: Path, split: str) -> list[Sample]:
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir():
        raise DataError(f"split {split!r} not found: {image_dir} is not a directory")
    samples = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise DataError(
                f"image without label: {image} (expected {label}); add the annotation or "
                "remove the image"
            )
        samples.append(Sample(image, label))
    return samples


def list_camvid(root: Path, split: str) -> list[Sample]:
    """List CamVid samples of a split (SegNet layout), from `{split}.txt` when it exists."""
    root = Path(root)
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        samples = _read_split_file(root, list_file)
    else:
        samples = _scan_split_dirs(root, split)
    if not samples:
        where = list_file if list_file.is_file() else root / split
        raise DataError(f"split {split!r} is empty: no images in {where}")
    return samples


def list_cityscapes(root: Path, split: str) -> list[Sample]:
    """List Cityscapes samples: leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine labelIds."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(f"split {split!r} not found: {image_dir} is not a directory")
    samples = []
    for image in sorted(image_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}")):
        stem = image.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        label = root / "gtFine" / split / image.parent.name / f"{stem}{CITYSCAPES_LABEL_SUFFIX}"
        if not label.is_file():
            raise DataError(
                f"image without label: {image} (expected {label}); add the gtFine annotation "
                "or remove the image"
            )
        samples.append(Sample(image, label))
    if not samples:
        raise DataError(f"split {split!r} is empty: no *{CITYSCAPES_IMAGE_SUFFIX} in {image_dir}")
    return samples


def _plain_images(root: Path) -> dict[str, Path]:
    """stem -> image file of root/images/; two images with one stem are an error."""
    images: dict[str, Path] = {}
    for image in sorted((root / "images").iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            continue
        if image.stem in images:
            raise DataError(
                f"two images share the stem {image.stem!r}: {images[image.stem]} and {image}; "
                "masks are matched by stem, rename or remove one"
            )
        images[image.stem] = image
    return images


def _hashed_split(stem: str) -> str:
    """train, val or test for an image of a plain dataset without split files (80/10/10)."""
    tenth = int(hashlib.sha256(stem.encode()).hexdigest(), 16) % 10
    return {0: "test", 1: "val"}.get(tenth, "train")


def _listed_stems(list_file: Path, images: dict[str, Path]) -> list[str]:
    """The stems a plain split file names (one stem or image file name a line), checked."""
    stems = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
        if stem not in images:
            raise DataError(
                f"{list_file}:{line_no}: no image with stem {stem!r} in {list_file.parent}/images"
            )
        stems.append(stem)
    return stems


def _split_stems(root: Path, split: str, images: dict[str, Path]) -> tuple[list[str], Path]:
    """(stems of the split, where they come from): its split file, or the stems' hash."""
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        return _listed_stems(list_file, images), list_file
    if any((root / f"{name}.txt").is_file() for name in ("train", "val", "test")):
        raise DataError(f"split {split!r} not found: {root} has split files but no {split}.txt")
    return [s for s in images if _hashed_split(s) == split], root / "images"


def list_plain(root: Path, split: str) -> list[Sample]:
    """List the plain layout's samples of a split: images/<stem>.* with masks/<stem>.png."""
    root = Path(root)
    images = _plain_images(root)
    stems, where = _split_stems(root, split, images)
    samples = []
    for stem in stems:
        mask = root / "masks" / f"{stem}.png"
        if not mask.is_file():
            raise DataError(
                f"image without mask: {images[stem]} (expected {mask}); add the mask or remove "
                "the image"
            )
        samples.append(Sample(images[stem], mask))
    if not samples:
        raise DataError(
            f"split {split!r} is empty: no images in {where}"
            + ("" if where.suffix == ".txt" else f" hash to it; list them in {root}/{split}.txt")
        )
    return samples


LISTERS: dict[str, Callable[[Path, str], list[Sample]]] = {
    "camvid": list_camvid,
    "cityscapes": list_cityscapes,
    "plain": list_plain,
}
BUILT_IN_CLASSES: dict[str, ClassTable] = {
    "camvid": CAMVID_TABLE,
    "cityscapes": CITYSCAPES_TABLE,
}


# ---------------------------------------------------------------- reading and checking


def read_image(path: Path) -> Image.Image:
    """Open an image as RGB, or raise `DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"unreadable image {path}: {err}; re-export or remove it") from err


def read_label(path: Path, classes: ClassTable) -> np.ndarray:
    """Read a mask file and map it to train ids [H, W] uint8 (255 = ignore), checking values."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"label {path} has mode {im.mode}; labels must be single-channel class "
                    "values (convert colour-coded annotations to value images first)"
                )
            raw = np.asarray(im)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"unreadable label {path}: {err}; re-export or remove it") from err
    if raw.min() < 0 or raw.max() > 255:
        raise DataError(f"label {path} has values outside 0..255 ({raw.min()}..{raw.max()})")
    mapped = classes.lut()[raw.astype(np.uint8)]
    bad = mapped == INVALID
    if bad.any():
        values = sorted(set(np.unique(raw[bad]).tolist()))[:10]
        raise DataError(
            f"label {path} has values {values} that are not classes (expected "
            f"{classes.describe_values()}); fix the mask or the class file"
        )
    return mapped.astype(np.uint8)


def _check_sizes(sample: Sample, image_size: tuple[int, int], label_size: tuple[int, int]) -> None:
    if image_size != label_size:
        raise DataError(
            f"image/label size mismatch: {sample.image} is {image_size[0]}x{image_size[1]} but "
            f"{sample.label} is {label_size[0]}x{label_size[1]} (WxH); re-export the label"
        )


def load_sample(sample: Sample, classes: ClassTable) -> tuple[Image.Image, np.ndarray]:
    """Read and check one sample: RGB image and train-id label [H, W] uint8."""
    if not sample.label.is_file():
        raise DataError(f"image without label: {sample.image} (expected {sample.label})")
    image = read_image(sample.image)
    label = read_label(sample.label, classes)
    _check_sizes(sample, image.size, (label.shape[1], label.shape[0]))
    return image, label


def _check_image_file(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(f"unreadable image {path}: {err}; re-export or remove it") from err


def validate(samples: Sequence[Sample], classes: ClassTable, max_errors: int = 20) -> None:
    """Check every sample up front (files exist and read, sizes match, label values are classes).

    Raises one `DataError` listing every bad file (up to `max_errors`).
    """
    if not samples:
        raise DataError("no samples to validate: the split is empty")
    errors: list[str] = []
    for sample in samples:
        try:
            if not sample.label.is_file():
                raise DataError(f"image without label: {sample.image} (expected {sample.label})")
            image_size = _check_image_file(sample.image)
            label = read_label(sample.label, classes)
            _check_sizes(sample, image_size, (label.shape[1], label.shape[0]))
        except DataError as err:
            errors.append(str(err))
            if len(errors) >= max_errors:
                break
    if errors:
        more = " (stopped early)" if len(errors) >= max_errors else ""
        raise DataError(f"{len(errors)} bad sample(s){more}:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------- augmentation


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class Augment:
    """The paper's training augmentation: random scale, random crop, h-flip, colour jitter."""

    crop: tuple[int, int]  # output (H, W); smaller inputs are padded with 0 image / 255 label
    scale: tuple[float, float] = (0.5, 2.0)  # random resize factor range
    flip: bool = True  # horizontal flip with probability 0.5
    color_jitter: float = 0.2  # brightness/contrast/saturation factors in [1 - j, 1 + j]

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment image [3, H, W] float 0..1 and label [H, W] long; uses torch's RNG."""
        image, label = self._rescale(image, label, generator)
        image, label = self._crop(image, label, generator)
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if self.color_jitter > 0:
            image = self._jitter(image, generator)
        return image.contiguous(), label.contiguous()

    def _rescale(self, image, label, generator):
        factor = _uniform(*self.scale, generator)
        h, w = label.shape
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        if size == (h, w):
            return image, label
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=factor < 1
        )[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
        return image.clamp_(0, 1), label.long()

    def _crop(self, image, label, generator):
        (ch, cw), (h, w) = self.crop, label.shape
        pad_h, pad_w = max(0, ch - h), max(0, cw - w)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
            h, w = label.shape
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        return image[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]

    def _jitter(self, image, generator):
        j = self.color_jitter
        brightness, contrast, saturation = (_uniform(1 - j, 1 + j, generator) for _ in range(3))
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        image = image * brightness
        mean = (image * weights).sum(0).mean()
        image = (image - mean) * contrast + mean
        gray = (image * weights).sum(0, keepdim=True)
        image = (image - gray) * saturation + gray
        return image.clamp_(0, 1)


# ---------------------------------------------------------------- dataset


def _to_tensors(image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [H, W, 3]
    return pixels.permute(2, 0, 1).contiguous(), torch.from_numpy(label.astype(np.int64))


@dataclass(frozen=True)
class PartialLabels:
    """Labels bought by the region: for each train-split index, the ids of its labelled regions
    (`regions` cut at the model's input size, `dealseg.core.regions.partition`); every other
    pixel of that frame reads as void (IGNORE_INDEX), as a labelling tool returns it.

    `pseudo` (optional): per index a guessed label [H, W] at that size (a class, or
    IGNORE_INDEX where there is no guess); outside the bought regions a guessed pixel reads as
    PSEUDO_OFFSET + its class, which the loss trains the segmenter on apart from the bought
    labels and keeps out of the difficulty head's target (`losses.deal_loss`). `pseudo_key`
    names the guesses in `to_dict` (a run's cache key)."""

    regions: RegionSpec
    picked: Mapping[int, Sequence[int]]
    pseudo: Mapping[int, np.ndarray] | None = field(default=None, compare=False)
    pseudo_key: str = ""

    def apply(self, index: int, image: Image.Image, label: np.ndarray) -> np.ndarray:
        """The label [H, W] with the pixels outside the frame's picked regions void (or their
        guess, marked)."""
        ids = partition(self.regions, label.shape, image=np.asarray(image))
        keep = np.isin(ids, np.asarray(self.picked.get(index, ()), dtype=np.int64))
        out = np.where(keep, label, IGNORE_INDEX).astype(label.dtype)
        guess = None if self.pseudo is None else self.pseudo.get(index)
        if guess is not None:
            if guess.shape != label.shape:
                raise ValueError(
                    f"pseudo-labels of frame {index} are {guess.shape}, its label {label.shape}"
                )
            marked = (guess.astype(np.int64) + PSEUDO_OFFSET).astype(label.dtype)
            out = np.where(keep | (guess == IGNORE_INDEX), out, marked)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": str(self.regions),
            "picked": {
                str(i): sorted(int(r) for r in ids) for i, ids in sorted(self.picked.items())
            },
            **({"pseudo": self.pseudo_key} if self.pseudo is not None else {}),
        }


class SegmentationDataset(torch.utils.data.Dataset):
    """A split of a dataset as (image [3, H, W] float 0..1, label [H, W] long, 255 = ignore).

    `layout` is "auto" (detected), "camvid", "cityscapes" or "plain"; the classes are the
    dataset's (`dataset_classes`). `size` (H, W) resizes before augmentation (image bilinear,
    label nearest); `indices` restricts the dataset to a subset of the sorted split (active
    learning's labelled set); `partial` voids every pixel outside a frame's bought regions
    (after the resize, before augmentation).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        size: tuple[int, int] | None = None,
        augment: Augment | None = None,
        layout: str = "auto",
        indices: Sequence[int] | None = None,
        partial: PartialLabels | None = None,
    ) -> None:
        self.root = Path(root)
        self.partial = partial
        self.split = split
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        if self.layout not in LISTERS:
            raise KeyError(f"unknown layout {layout!r}; valid: 'auto', {', '.join(LISTERS)}")
        self.classes = dataset_classes(self.root, self.layout)
        self.class_names, self.palette = self.classes.names, self.classes.palette
        self.num_classes = self.classes.num_classes
        self.size = size
        self.augment = augment
        all_samples = LISTERS[self.layout](self.root, split)
        self.indices = list(range(len(all_samples))) if indices is None else list(indices)
        self.samples = [all_samples[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.samples)

    def validate(self) -> None:
        """Check every sample of this dataset up front; see `validate`."""
        validate(self.samples, self.classes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = load_sample(self.samples[i], self.classes)
        if self.size is not None and tuple(self.size) != (label.shape[0], label.shape[1]):
            h, w = self.size
            image = image.resize((w, h), Image.BILINEAR)
            label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
        if self.partial is not None:
            label = self.partial.apply(self.indices[i], image, label)
        image_t, label_t = _to_tensors(image, label)
        if self.augment is not None:
            image_t, label_t = self.augment(image_t, label_t)
        return image_t, label_t


def decode_label(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Colour a train-id label [H, W] with a palette -> [H, W, 3] uint8 (ignore is black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(label).astype(np.uint8)]


__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_ID_TO_TRAINID",
    "IGNORE_INDEX",
    "Augment",
    "PartialLabels",
    "ClassTable",
    "DataError",
    "Sample",
    "SegmentationDataset",
    "dataset_classes",
    "decode_label",
    "detect_layout",
    "list_camvid",
    "list_cityscapes",
    "list_plain",
    "load_sample",
    "validate",
]
