"""Two segmenters that are not dealseg's, built, trained and exported to ONNX here, and the
street set in the plain layout they are attached on (tests/test_attach.py).

- `UNet`: a small U-Net, NCHW float input normalised by the caller with ImageNet statistics on
  0..1 RGB, logits NCHW at the input size. Its settings are given on the command line.
- `NHWCNet`: NHWC float input in 0..255 BGR with its own mean and std (the OpenCV
  convention), class probabilities NHWC at half the input size. It declares its settings in
  its ONNX metadata, as `deal-train attach` reads them.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dealseg.training.data import SegmentationDataset
from dealseg.training.streets.dataset import write_streets

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BGR_MEAN = (103.5, 116.3, 123.7)  # 0..255, blue first
BGR_STD = (57.4, 57.1, 58.4)
UNET_OPTIONS = {
    "mean": ",".join(map(str, IMAGENET_MEAN)),
    "std": ",".join(map(str, IMAGENET_STD)),
}
NHWC_METADATA = {
    "input_layout": "nhwc",
    "channel_order": "bgr",
    "pixel_range": "255",
    "mean": json.dumps(BGR_MEAN),
    "std": json.dumps(BGR_STD),
    "output_layout": "nhwc",
    "output_kind": "probabilities",
}


def street_set(root: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """`deal-train synth`'s street drives rewritten in the plain layout: images/, masks/, the
    class file and train/val/test.txt (the drives never straddle splits)."""
    streets = root / "streets"
    write_streets(streets, count, size, seed=seed)
    plain = root / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    for split in ("train", "val", "test"):
        stems = []
        for image in sorted((streets / split).glob("*.png")):
            shutil.copy(image, plain / "images" / image.name)
            shutil.copy(streets / f"{split}annot" / image.name, plain / "masks" / image.name)
            stems.append(image.stem)
        (plain / f"{split}.txt").write_text("\n".join(stems) + "\n")
    shutil.copy(streets / "classes.json", plain / "classes.json")
    return plain


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class UNet(nn.Module):
    """Two-level U-Net: [B, 3, H, W] normalised -> logits [B, C, H, W]."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        self.down1, self.down2 = block(3, width), block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2, self.up1 = block(6 * width, 2 * width), block(3 * width, width)
        self.classify = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(b, size=d2.shape[-2:]), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:]), d1], 1))
        return self.classify(u1)


class NHWCNet(nn.Module):
    """[B, H, W, 3] BGR 0..255 -> its own normalisation -> probabilities [B, H/2, W/2, C]."""

    def __init__(self, classes: int, width: int = 24) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(BGR_MEAN))
        self.register_buffer("std", torch.tensor(BGR_STD))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.body = block(width, width)
        self.context = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.classify = nn.Conv2d(2 * width, classes, 1)

    def normalised(self, bgr: torch.Tensor) -> torch.Tensor:
        """What a caller feeds: the model's input from 0..255 BGR NHWC."""
        return (bgr - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(self.stem(x.permute(0, 3, 1, 2)))
        logits = self.classify(torch.cat([f, self.context(f)], 1))
        return torch.softmax(logits, dim=1).permute(0, 2, 3, 1)


def unet_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] 0..1 RGB -> the U-Net's input (its owner's pre-processing)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (images - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def nhwc_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] 0..1 RGB -> the NHWC model's input: BGR 0..255, normalised."""
    bgr = (images * 255.0).round().flip(1).permute(0, 2, 3, 1)
    return (bgr - torch.tensor(BGR_MEAN)) / torch.tensor(BGR_STD)


def train_segmenter(
    model: nn.Module, data: Path, to_input, nhwc_out: bool, steps: int, seed: int = 0
) -> nn.Module:
    """A short Adam run on the train split (cross-entropy on the logits or log-probabilities)."""
    torch.manual_seed(seed)
    train = SegmentationDataset(data, "train")
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    step = 0
    while step < steps:
        for images, labels in loader:
            out = model(to_input(images))
            if nhwc_out:  # probabilities at half size -> log-probabilities at label size
                out = torch.log(out.permute(0, 3, 1, 2).clamp_min(1e-8))
                out = F.interpolate(out, size=labels.shape[-2:], mode="bilinear")
            loss = F.cross_entropy(out, labels, ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    return model.eval()


def export_segmenter(
    model: nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str] | None = None
) -> Path:
    """torch.onnx.export (the TorchScript exporter, opset 13: an older model than ours) with a
    dynamic batch axis, then the owner's metadata."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["pixels"],
            output_names=["scores"],
            dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}},
            opset_version=13,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def frames(data: Path, split: str) -> np.ndarray:
    """The split's images as uint8 frames [N, H, W, 3]."""
    names = (data / f"{split}.txt").read_text().split()
    return np.stack(
        [np.asarray(Image.open(data / "images" / f"{n}.png").convert("RGB")) for n in names]
    )


def with_pixel_readout(head: Path, out: Path, seed: int = 0) -> Path:
    """`head` (an attached head checkpoint) with a seeded, untrained pixel read-out put in,
    whatever its val split decided: a graph that carries the read-out's ops, as `out`."""
    from dealseg.training.attach import PixelReadout

    raw = torch.load(head, weights_only=True)
    torch.manual_seed(seed)
    readout = PixelReadout(len(raw["class_names"]), raw["config"]["pixel_hidden"])
    readout.input_std.fill_(0.5)
    raw["pixel_state_dict"] = readout.state_dict()
    torch.save(raw, out)
    return out
