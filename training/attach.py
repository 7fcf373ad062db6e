"""The difficulty head on someone else's segmenter (`deal-train attach`).

A frozen ONNX segmentation model, with its own input layout, channel order, normalisation and
output (logits or probabilities, NCHW or NHWC, any class count), runs under ONNX Runtime; the
DEAL difficulty head (`model.DifficultyHead`, the read-outs of `model.HEAD_PARTS` that need no
decoder features) reads its per-pixel class scores. The exported graph (export/attach.py) is

    frame uint8 [B, H, W, 3] + valid box -> ForeignInput (their layout, channel order and
    normalisation; padding at their normalised zero) -> their model -> AttachedScores (their
    output as NCHW logits -> difficulty head -> pixel read-out -> the contract's scores,
    training/scores.py)

Training never moves their weights: (1) γ and the read-out on the train split's error masks
(grid cells' error shares, as `refit.fit_cells`), (2) the read-out refit on the val split
(`refit.refit_difficulty_head`; skipped with a warning, as `fit` does, when the val split is too
small for it), (3) the pixel read-out (`PixelReadout`: an MLP at the segmenter's output
resolution over the head's map and the probabilities' uncertainty, local range and context) on
the train split's pixels, left out only where the val split finds it worse than the grid in
95% of bootstrap resamples of its images, (4) the
map measured on the test split, which nothing was fit on: its pixel AUROC and the Spearman of
DS, DE and entropy with each image's error rate.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dealseg.core.files import atomic_output
from dealseg.core.metrics import auroc, spearman

from .checkpoint import CheckpointError, file_sha256
from .data import SegmentationDataset
from .losses import IGNORE_INDEX
from .model import DifficultyHead, config_from_dict, head_parts
from .novelty import Novelty, NoveltyStats
from .refit import (
    cell_shares,
    fit_cells,
    grid_inputs,
    refit_difficulty_head,
    standardise_inputs,
    wrong_pixels,
)
from .scores import (
    box_weights,
    class_fraction,
    difficulty_entropy,
    difficulty_score,
    entropy_map_uint8,
    pooled_embedding,
    softmax_entropy,
)

FORMAT = "dealseg-attached-head"
FORMAT_VERSION = 1
RANGES = (3, 7, 15)  # the pixel read-out's local ranges of the probabilities (output pixels)
CONTEXTS = (7, 21)  # and its means of the probabilities over these windows
# The pixel read-out is left out when its val AUROC is below the grid's in this share of
# KEEP_ROUNDS resamples of the val images (KEEP_PIXELS sampled pixels in all).
KEEP_CONFIDENCE = 0.95
KEEP_ROUNDS = 200
KEEP_PIXELS = 200_000
LAYOUTS = ("nchw", "nhwc")
OUTPUT_KINDS = ("logits", "probabilities")
CHANNEL_ORDERS = ("rgb", "bgr")
# What a foreign model may declare in its ONNX metadata (or the command line): these keys.
IO_KEYS = (
    "input",  # the input tensor's name (needed when the model has several)
    "input_layout",  # nchw | nhwc
    "input_size",  # HxW, when the model's spatial axes are dynamic
    "channel_order",  # rgb | bgr
    "pixel_range",  # what a white pixel is before normalisation: 1 or 255
    "mean",  # 3 values in the model's channel order and pixel range
    "std",
    "output",  # the output tensor's name (needed when the model has several)
    "output_layout",  # nchw | nhwc
    "output_kind",  # logits | probabilities
)


class AttachError(ValueError):
    """A foreign model or its declared settings cannot be attached (one line, actionable)."""


@dataclass(frozen=True)
class ForeignIO:
    """How to feed a foreign segmenter and read its output, all of it resolved."""

    input_name: str
    input_layout: str  # nchw | nhwc
    input_size: tuple[int, int]  # (H, W)
    channel_order: str  # rgb | bgr
    pixel_range: float  # input = (pixel / (255 / pixel_range) - mean) / std
    mean: tuple[float, float, float]  # in the model's channel order
    std: tuple[float, float, float]
    output_name: str
    output_layout: str  # nchw | nhwc
    output_kind: str  # logits | probabilities
    output_size: tuple[int, int]  # (h, w) of the output's spatial axes
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForeignIO:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def rgb_mean(self) -> tuple[float, float, float]:
        """The mean colour on the contract's 0..1 RGB scale (its `mean` metadata)."""
        return _rgb(self, self.mean)

    @property
    def rgb_std(self) -> tuple[float, float, float]:
        return _rgb(self, self.std)


def _rgb(io: ForeignIO, values: tuple[float, float, float]) -> tuple[float, float, float]:
    ordered = values[::-1] if io.channel_order == "bgr" else values
    return tuple(v / io.pixel_range for v in ordered)  # type: ignore[return-value]


@dataclass(frozen=True)
class AttachConfig:
    """The head and its training; saved in the head's checkpoint."""

    attention_size: tuple[int, int] = (0, 0)  # the PAM grid (h, w); 0: a sixth of the input
    difficulty_inputs: str = "Q+U+UA+LP"  # model.HEAD_PARTS without DEC (no decoder features)
    # 0: the 1x1 conv read-out (the default: an MLP read-out overfits the val split it is
    # refit on; measured in the README, Bring your own segmenter); > 0: an MLP of this width
    difficulty_hidden: int = 0
    difficulty_context: int = 0  # > 1: the MLP's middle layer is a context x context conv
    pam_block: int = 512  # query rows per block of the exported (exact, blocked) PAM
    steps: int = 300  # stage 1: AdamW steps on γ and the read-out (train split)
    batch_size: int = 8  # images a step
    lr: float = 0.01
    loss: str = "wbce"  # stage 1's difficulty loss
    refit_loss: str = "bce"  # stage 2 on the val split: the map is an error probability
    refit_l2: float = 1e-2  # weight decay of an MLP read-out's refit
    # stage 3, the pixel read-out: its MLP's width (0: none, the map is the head's grid)
    pixel_hidden: int = 32
    pixel_steps: int = 3000  # AdamW steps of `pixel_batch` sampled output pixels
    pixel_batch: int = 4096
    pixel_samples: int = 1000  # output pixels sampled from each train image
    seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # measured only

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttachConfig:
        return config_from_dict(cls, d, "attach")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def grid(self, input_size: tuple[int, int]) -> tuple[int, int]:
        if self.attention_size != (0, 0):
            return self.attention_size
        return (max(4, math.ceil(input_size[0] / 6)), max(4, math.ceil(input_size[1] / 6)))


# ---------------------------------------------------------------- the foreign model's IO


def _triple(text: str, key: str) -> tuple[float, float, float]:
    try:
        raw = json.loads(text) if text.strip().startswith("[") else text.split(",")
        values = tuple(float(v) for v in raw)
    except (ValueError, TypeError):
        values = ()
    if len(values) != 3:
        raise AttachError(f"{key}={text!r}: give 3 numbers, e.g. 0.485,0.456,0.406")
    return values  # type: ignore[return-value]


def _choice(value: str, key: str, options: tuple[str, ...]) -> str:
    if value.lower() not in options:
        raise AttachError(f"{key}={value!r}: use one of {', '.join(options)}")
    return value.lower()


def _hw(text: str, key: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AttachError(f"{key}={text!r} is not HxW (e.g. 180x240)") from None
    return h, w


def declared_settings(session: Any, options: Mapping[str, str | None]) -> dict[str, str]:
    """The model's IO settings: `options` (the command line) over the model's own metadata
    keys (`IO_KEYS`), unset ones left out."""
    meta = session.get_modelmeta().custom_metadata_map
    declared = {k: meta[k] for k in IO_KEYS if k in meta}
    unknown = sorted(set(options) - set(IO_KEYS))
    if unknown:
        raise AttachError(f"unknown settings {unknown}; valid: {', '.join(IO_KEYS)}")
    declared.update({k: str(v) for k, v in options.items() if v is not None})
    return declared


def _pick(tensors: list[Any], name: str | None, what: str) -> Any:
    names = [t.name for t in tensors]
    if name is None:
        if len(tensors) != 1:
            raise AttachError(f"the model has {len(tensors)} {what}s {names}: name one (--{what})")
        return tensors[0]
    if name not in names:
        raise AttachError(f"the model has no {what} {name!r}; its {what}s: {names}")
    return next(t for t in tensors if t.name == name)


def _layout(shape: tuple, size: int, declared: str | None, key: str, what: str) -> str:
    """nchw or nhwc: as declared, else where the axis of `size` channels is."""
    if declared is not None:
        return _choice(declared, key, LAYOUTS)
    first, last = shape[1] == size, shape[3] == size
    if first != last:
        return "nchw" if first else "nhwc"
    raise AttachError(
        f"cannot tell the {what} layout from its shape {list(shape)}: declare {key} (nchw or nhwc)"
    )


def _input_size(shape: tuple, layout: str, declared: str | None) -> tuple[int, int]:
    spatial = shape[2:] if layout == "nchw" else shape[1:3]
    fixed = all(isinstance(d, int) and d > 0 for d in spatial)
    if declared is not None:
        size = _hw(declared, "input_size")
        if fixed and tuple(spatial) != size:
            raise AttachError(
                f"input_size={declared} but the model's input is fixed at "
                f"{spatial[0]}x{spatial[1]}; leave it out"
            )
        return size
    if not fixed:
        raise AttachError(f"the model's input {list(shape)} has dynamic H and W: give --input-size")
    return int(spatial[0]), int(spatial[1])


def resolve_io(
    model_path: Path, num_classes: int, options: Mapping[str, str | None] | None = None
) -> ForeignIO:
    """Read a foreign ONNX segmenter's IO: declared settings (`options`, its metadata), the
    rest from its tensors' shapes and one run on a grey frame (output size and layout, and
    whether it outputs probabilities). AttachError names what is missing or wrong."""
    session = open_session(model_path)
    declared = declared_settings(session, options or {})
    tensor = _pick(session.get_inputs(), declared.get("input"), "input")
    shape = tuple(tensor.shape)
    if len(shape) != 4 or tensor.type != "tensor(float)":
        raise AttachError(
            f"input {tensor.name!r} is {tensor.type} {list(shape)}: dealseg feeds one float32 "
            "image batch [B, 3, H, W] or [B, H, W, 3]"
        )
    if isinstance(shape[0], int) and shape[0] > 0:
        raise AttachError(
            f"input {tensor.name!r} has a fixed batch of {shape[0]}: export the model with a "
            "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )
    layout = _layout(shape, 3, declared.get("input_layout"), "input_layout", "input")
    pixel_range = {"1": 1.0, "255": 255.0}.get(declared.get("pixel_range", "1").strip())
    if pixel_range is None:
        raise AttachError(f"pixel_range={declared['pixel_range']!r}: use 1 or 255")
    io = ForeignIO(
        input_name=tensor.name,
        input_layout=layout,
        input_size=_input_size(shape, layout, declared.get("input_size")),
        channel_order=_choice(
            declared.get("channel_order", "rgb"), "channel_order", CHANNEL_ORDERS
        ),
        pixel_range=pixel_range,
        mean=_triple(declared.get("mean", "0,0,0"), "mean"),
        std=_triple(declared.get("std", "1,1,1"), "std"),
        output_name=_pick(session.get_outputs(), declared.get("output"), "output").name,
        output_layout="nchw",
        output_kind="logits",
        output_size=(0, 0),
        num_classes=num_classes,
    )
    if any(s <= 0 for s in io.std):
        raise AttachError(f"std={list(io.std)}: every value must be positive")
    return _probe_output(session, io, declared)


def _probe_output(session: Any, io: ForeignIO, declared: Mapping[str, str]) -> ForeignIO:
    """Fill in the output's layout, size and kind from one run on a mid-grey frame."""
    grey = torch.full((1, *io.input_size, 3), 128, dtype=torch.uint8)
    x = ForeignInput(io)(grey, full_box(1, io.input_size)).numpy()
    try:
        out = session.run([io.output_name], {io.input_name: x})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).splitlines()[0][:300]
        raise AttachError(
            f"the model fails on a {io.input_size[0]}x{io.input_size[1]} {io.input_layout} "
            f"frame ({first}): check input_size and input_layout"
        ) from None
    if out.ndim != 4:
        raise AttachError(
            f"output {io.output_name!r} has shape {list(out.shape)}: dealseg reads per-pixel "
            "class scores [B, C, h, w] or [B, h, w, C]"
        )
    declared_layout = declared.get("output_layout")
    if declared_layout is None and io.num_classes not in (out.shape[1], out.shape[3]):
        raise AttachError(
            f"output {io.output_name!r} {list(out.shape)} has no axis of the data set's "
            f"{io.num_classes} classes (axis 1 or 3): is it the model of these classes?"
        )
    layout = _layout(out.shape, io.num_classes, declared_layout, "output_layout", "output")
    axis = 1 if layout == "nchw" else 3
    if out.shape[axis] != io.num_classes:
        raise AttachError(
            f"output {io.output_name!r} {list(out.shape)} has {out.shape[axis]} classes on its "
            f"{layout} class axis; the data set has {io.num_classes}"
        )
    if io.num_classes > 255:
        raise AttachError(f"{io.num_classes} classes: the segmentation map holds at most 255")
    kind = declared.get("output_kind")
    if kind is None:
        sums = out.sum(axis=axis)
        probabilities = out.min() >= 0 and out.max() <= 1 and np.allclose(sums, 1, atol=1e-3)
        kind = "probabilities" if probabilities else "logits"
    size = out.shape[2:] if layout == "nchw" else out.shape[1:3]
    return ForeignIO(
        **{
            **io.to_dict(),
            "output_layout": layout,
            "output_kind": _choice(kind, "output_kind", OUTPUT_KINDS),
            "output_size": (int(size[0]), int(size[1])),
        }
    )


def open_session(model_path: Path) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise AttachError(f"{model_path}: not a loadable ONNX model ({exc})") from None


def full_box(count: int, size: tuple[int, int]) -> torch.Tensor:
    return torch.tensor([[0, 0, size[0], size[1]]] * count, dtype=torch.int32)


# ---------------------------------------------------------------- the graph's two torch parts


class ForeignInput(nn.Module):
    """uint8 frames [B, H, W, 3] RGB + valid boxes -> the foreign model's float input:
    channel order, (pixel / (255 / pixel_range) - mean) / std, padding at 0 (their mean
    colour), their layout."""

    def __init__(self, io: ForeignIO) -> None:
        super().__init__()
        self.io = io
        self.register_buffer("mean", torch.tensor(io.mean).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(io.std).view(1, 1, 1, 3))

    def forward(self, image: torch.Tensor, valid_box: torch.Tensor) -> torch.Tensor:
        x = image.float()
        if self.io.channel_order == "bgr":
            x = x.flip(-1)
        x = (x / (255.0 / self.io.pixel_range) - self.mean) / self.std
        size = (image.shape[1], image.shape[2])
        x = x * box_weights(valid_box, size, size)[..., None]  # padding: their normalised 0
        return x.permute(0, 3, 1, 2) if self.io.input_layout == "nchw" else x


class AttachedScores(nn.Module):
    """The foreign model's output + valid boxes -> the contract's outputs (contract order)."""

    def __init__(
        self,
        io: ForeignIO,
        head: DifficultyHead,
        bins: int = 8,
        novelty: NoveltyStats | None = None,
        pixel: PixelReadout | None = None,
    ) -> None:
        super().__init__()
        self.io = io
        self.difficulty_head = head
        self.pixel = pixel
        self.bins = bins
        self.novelty = Novelty(novelty)

    @property
    def class_axis(self) -> int:
        return 1 if self.io.output_layout == "nchw" else 3

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """Their output -> logits [B, C, h, w] (log-probabilities of a probability output)."""
        x = output.permute(0, 3, 1, 2) if self.io.output_layout == "nhwc" else output
        return torch.log(x.clamp_min(1e-12)) if self.io.output_kind == "probabilities" else x

    def forward(self, valid_box: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(valid_box, output)[1]

    def run(
        self, valid_box: torch.Tensor, output: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(difficulty map at input size [B, H, W], the contract outputs). The contract's
        difficulty map is the head's grid, or with a pixel read-out the segmenter's output
        resolution."""
        size = self.io.input_size
        logits = self.logits(output)  # [B, C, h, w]
        pixels = box_weights(valid_box, size, size)
        cells = box_weights(valid_box, size, (logits.shape[2], logits.shape[3]))
        grid = self.difficulty_head(logits)  # [B, 1, ah, aw]
        if self.pixel is not None:
            grid = self.pixel(logits, grid)  # [B, 1, h, w]
        up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        difficulty = torch.sigmoid(up)[:, 0]  # [B, H, W]
        embedding = pooled_embedding(quadrant_probabilities(logits), cells)  # [B, 4C]
        outputs = (
            difficulty_score(difficulty, pixels),
            difficulty_entropy(difficulty, self.bins, pixels),
            softmax_entropy(logits, cells),
            class_fraction(logits, cells),
            embedding,
            self.novelty(embedding),
            torch.round(torch.sigmoid(grid[:, 0]) * 255.0).to(torch.uint8),
            output.argmax(dim=self.class_axis).to(torch.uint8),  # exactly their argmax
            entropy_map_uint8(logits),
        )
        return difficulty, outputs


def quadrant_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] logits -> [B, 4C, h, w]: the class probabilities in each quadrant of the
    frame (zero elsewhere); pooled, where each class is in the picture."""
    p = torch.softmax(logits, dim=1)
    h, w = logits.shape[2], logits.shape[3]
    top = (torch.arange(h, device=p.device) * 2 < h).to(p.dtype).view(1, 1, h, 1)
    left = (torch.arange(w, device=p.device) * 2 < w).to(p.dtype).view(1, 1, 1, w)
    return torch.cat(
        [p * top * left, p * top * (1 - left), p * (1 - top) * left, p * (1 - top) * (1 - left)],
        dim=1,
    )


def local_range(p: torch.Tensor, k: int) -> torch.Tensor:
    """[B, C, h, w] probabilities -> [B, 1, h, w]: the largest range of a class's probability
    over the k x k window around each pixel (high at a boundary the segmenter hesitates on)."""
    high = F.max_pool2d(p, k, 1, k // 2)
    low = -F.max_pool2d(-p, k, 1, k // 2)
    return (high - low).amax(dim=1, keepdim=True)


class PixelReadout(nn.Module):
    """The attached map's logit at the segmenter's output resolution: an MLP (1x1 convs) over
    the head's map (upsampled from its grid), the probabilities' entropy, 1 - max and margin,
    their local ranges (RANGES), the probabilities and their means over CONTEXTS windows,
    inputs standardised on the train split."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        dim = 4 + len(RANGES) + num_classes * (1 + len(CONTEXTS))
        self.register_buffer("input_mean", torch.zeros(1, dim, 1, 1))
        self.register_buffer("input_std", torch.ones(1, dim, 1, 1))
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    @staticmethod
    def features(logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] logits and the head's [B, 1, ah, aw] map logit -> [B, D, h, w]."""
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)
        top = p.topk(2, dim=1).values
        head = F.interpolate(grid, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        parts = [head, entropy, 1 - top[:, :1], top[:, :1] - top[:, 1:]]
        parts += [local_range(p, k) for k in RANGES]
        parts.append(p)
        parts += [F.avg_pool2d(p, k, 1, k // 2, count_include_pad=False) for k in CONTEXTS]
        return torch.cat(parts, dim=1)

    def forward(self, logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        x = self.features(logits, grid)
        return self.mlp((x - self.input_mean) / self.input_std)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on standardised feature rows [N, D] -> [N] logits (the 1x1 convs as
        matrix products: what training runs)."""
        for layer in self.mlp:
            if isinstance(layer, nn.Conv2d):
                x = F.linear(x, layer.weight.flatten(1), layer.bias)
            else:
                x = layer(x)
        return x[:, 0]


def build_head(io: ForeignIO, cfg: AttachConfig, pam_impl: str = "sdpa") -> DifficultyHead:
    parts = head_parts(cfg.difficulty_inputs)
    if "DEC" in parts:
        raise AttachError(
            "difficulty_inputs: DEC reads a DEALNet decoder's features; an attached head "
            "reads Q, U, UA and LP"
        )
    return DifficultyHead(
        io.num_classes,
        cfg.grid(io.input_size),
        cfg.pam_block,
        pam_impl,
        cfg.difficulty_inputs,
        cfg.difficulty_hidden,
        0,
        cfg.difficulty_context,
    )


class AttachedSegmenter(nn.Module):
    """The frozen foreign model (ONNX Runtime) and the difficulty head on its output: what
    the refit reads (`refit.HeadHost`)."""

    def __init__(
        self,
        model_path: Path,
        io: ForeignIO,
        head: DifficultyHead,
        pixel: PixelReadout | None = None,
    ) -> None:
        super().__init__()
        self.session = open_session(model_path)
        self.foreign_input = ForeignInput(io)
        self.scores = AttachedScores(io, head, pixel=pixel)
        self.difficulty_head = head
        self.io = io

    @torch.no_grad()
    def foreign_output(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in 0..1 (uint8 / 255, at the input size) -> their output."""
        frames = (images * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        x = self.foreign_input(frames.cpu(), full_box(len(frames), self.io.input_size))
        feeds = {self.io.input_name: x.contiguous().numpy()}
        return torch.from_numpy(self.session.run([self.io.output_name], feeds)[0])

    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.scores.logits(self.foreign_output(images)), None


# ---------------------------------------------------------------- training and measuring


@dataclass
class AttachResult:
    head_path: Path
    io: ForeignIO
    train: dict[str, Any]
    refit: dict[str, Any]
    pixel: dict[str, Any]
    test: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "head": str(self.head_path),
            "io": self.io.to_dict(),
            "train": self.train,
            "refit": self.refit,
            "pixel": self.pixel,
            "test": self.test,
        }


def attach(
    model_path: Path,
    data: Path,
    out: Path,
    cfg: AttachConfig,
    options: Mapping[str, str | None] | None = None,
) -> AttachResult:
    """Train the difficulty head on `model_path`'s frozen output over `data`'s splits and
    write `out`/head.pt and `out`/attach.json (the settings and the test split's metrics)."""
    torch.manual_seed(cfg.seed)
    probe = SegmentationDataset(data, cfg.train_split)
    io = resolve_io(model_path, probe.num_classes, options)
    splits = {
        name: SegmentationDataset(data, split, size=io.input_size)
        for name, split in (
            ("train", cfg.train_split),
            ("val", cfg.val_split),
            ("test", cfg.test_split),
        )
    }
    for dataset in splits.values():
        dataset.validate()
    model = AttachedSegmenter(model_path, io, build_head(io, cfg))
    train = train_head(model, splits["train"], cfg)
    try:
        refit = refit_difficulty_head(
            model, splits["val"], cfg.refit_loss, seed=cfg.seed, l2=cfg.refit_l2
        ).to_dict()
    except ValueError as exc:  # too small a val split: keep the trained read-out, as fit does
        refit = {"split": "val", "skipped": str(exc)}
        print(f"warning: the difficulty head is not refit: {exc}", file=sys.stderr)
    pixel = train_pixel_readout(model, splits["train"], splits["val"], cfg)
    test = measure(model, splits["test"])
    out.mkdir(parents=True, exist_ok=True)
    head_path = out / "head.pt"
    metrics = {"train": train, "refit": refit, "pixel": pixel, "test": test}
    save_head(head_path, model, cfg, model_path, probe, metrics)
    result = AttachResult(head_path, io, train, refit, pixel, test)
    (out / "attach.json").write_text(
        json.dumps({"config": cfg.to_dict(), **result.summary()}, indent=2)
    )
    return result


def train_head(model: AttachedSegmenter, dataset: SegmentationDataset, cfg: AttachConfig) -> dict:
    """Stage 1: γ and the read-out on the cells' error shares of `dataset` (inputs standardised
    on it first), their segmenter frozen."""
    head = model.difficulty_head
    if hasattr(head, "input_mean"):
        standardise_inputs(model, dataset)
    grid, share, labelled = grid_inputs(model, dataset, raw=True)
    if not (share > 0).any() or not (share < 1).any():
        raise AttachError(
            f"the segmenter gets every or no pixel of the {dataset.split} split wrong: the head "
            "needs both"
        )
    fit_cells(
        head,
        grid,
        share,
        labelled,
        loss=cfg.loss,
        weight_decay=0.0,
        seed=cfg.seed,
        steps=cfg.steps,
        lr=cfg.lr,
        batch=cfg.batch_size,
    )
    error = float((share * labelled).sum() / labelled.sum())
    return {"images": len(dataset), "error_rate": error, "gamma": float(head.gamma.detach())}


def train_pixel_readout(
    model: AttachedSegmenter,
    train: SegmentationDataset,
    val: SegmentationDataset,
    cfg: AttachConfig,
) -> dict[str, Any]:
    """Stage 3: the pixel read-out on output pixels sampled from `train` (BCE against each
    pixel's error share), set on `model` unless it is worse than the head's grid on `val`: its
    pixel AUROC below the grid's in KEEP_CONFIDENCE of bootstrap resamples of the val images (a
    val split of a few dozen images cannot tell AUROCs 0.01 apart; the grid's read-out was
    refit on half of it)."""
    if cfg.pixel_hidden <= 0:
        return {"kept": False, "skipped": "pixel_hidden=0"}
    torch.manual_seed(cfg.seed)
    readout = PixelReadout(model.io.num_classes, cfg.pixel_hidden)
    x, share, weight = pixel_inputs(model, train, cfg.pixel_samples, cfg.seed)
    readout.input_mean.copy_(x.mean(0).view_as(readout.input_mean))
    readout.input_std.copy_(x.std(0).clamp_min(1e-6).view_as(readout.input_std))
    x = (x - readout.input_mean.flatten()) / readout.input_std.flatten()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # products this small gain nothing from threads, which on a busy
    try:  # host spin-wait 100x their work
        _fit_rows(readout, x, share, weight, cfg)
    finally:
        torch.set_num_threads(threads)
    readout.eval()
    model.scores.pixel = None
    grid, wrong, _, _ = _sampled(model, val, KEEP_PIXELS)
    model.scores.pixel = readout
    pixel = _sampled(model, val, KEEP_PIXELS)[0]
    before = auroc(np.concatenate(grid), np.concatenate(wrong))
    after = auroc(np.concatenate(pixel), np.concatenate(wrong))
    worse = worse_share(pixel, grid, wrong, seed=cfg.seed)
    kept = bool(np.isfinite(after) and worse < KEEP_CONFIDENCE)
    if not kept:
        model.scores.pixel = None
        print(
            f"warning: the pixel read-out is left out: val AUROC {after:.3f} against the "
            f"head's grid {before:.3f}, below it in {worse:.0%} of resamples of the val images",
            file=sys.stderr,
        )
    return {
        "pixels": len(x),
        "val_auroc_before": before,
        "val_auroc_after": after,
        "val_worse_share": worse,
        "kept": kept,
    }


def _fit_rows(
    readout: PixelReadout,
    x: torch.Tensor,
    share: torch.Tensor,
    weight: torch.Tensor,
    cfg: AttachConfig,
) -> None:
    """AdamW steps of the pixel read-out's MLP on standardised rows: BCE against each pixel's
    error share, weighted by its labelled share."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(readout.mlp.parameters(), lr=3e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(cfg.pixel_steps):
            take = torch.randint(0, len(x), (cfg.pixel_batch,), generator=generator)
            z = readout.rows(x[take])
            bce = share[take] * F.softplus(-z) + (1 - share[take]) * F.softplus(z)
            loss = (weight[take] * bce).sum() / weight[take].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def pixel_inputs(
    model: AttachedSegmenter, dataset: SegmentationDataset, per_image: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to `per_image` labelled output pixels of each image of `dataset`: (the pixel
    read-out's features [N, D], error share [N], labelled share [N]); a pixel is wrong where
    the argmax of the logits, bilinearly resized to the label size, is not its label."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    xs, shares, weights = [], [], []
    for images, labels in DataLoader(dataset, batch_size=4):
        logits = model.segment(images)[0]
        x = PixelReadout.features(logits, model.difficulty_head(logits))
        error, valid = cell_shares(labels, wrong_pixels(logits, labels), logits.shape[-2:])
        error, valid = error[:, 0], valid[:, 0]
        for i in range(len(labels)):
            cells = torch.nonzero(valid[i].flatten() > 0)[:, 0]
            take = cells[torch.randperm(len(cells), generator=generator)[:per_image]]
            xs.append(x[i].flatten(1)[:, take].T)
            shares.append(error[i].flatten()[take])
            weights.append(valid[i].flatten()[take])
    return torch.cat(xs), torch.cat(shares), torch.cat(weights)


@torch.no_grad()
def measure(
    model: AttachedSegmenter, dataset: SegmentationDataset, max_pixels: int = 1_000_000
) -> dict:
    """On `dataset` (held out): the map's pixel AUROC for the error mask, and the Spearman of
    each image score with the image's error rate."""
    maps, wrongs, scores, errors = _sampled(model, dataset, max_pixels)
    result: dict[str, Any] = {
        "split": dataset.split,
        "images": len(errors),
        "error_rate": float(np.mean(errors)),
        "pixel_auroc": auroc(np.concatenate(maps), np.concatenate(wrongs)),
    }
    for name, values in scores.items():
        result[f"spearman_{name}"] = spearman(values, errors)
    return result


@torch.no_grad()
def _sampled(
    model: AttachedSegmenter, dataset: Dataset, max_pixels: int
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, list[float]], list[float]]:
    """Per image of `dataset`: the map and the error mask on up to max_pixels / images labelled
    pixels (the same pixels whatever the map), DS, DE and entropy, and the error rate."""
    model.eval()
    quota = max(1, math.ceil(max_pixels / max(len(dataset), 1)))
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {"ds": [], "de": [], "entropy": []}
    errors, maps, wrongs = [], [], []
    for images, labels in DataLoader(dataset, batch_size=4):
        output = model.foreign_output(images)
        difficulty, outs = model.scores.run(full_box(len(images), model.io.input_size), output)
        for name, value in zip(("ds", "de", "entropy"), outs[:3], strict=True):
            scores[name] += value.tolist()
        labelled = labels != IGNORE_INDEX
        wrong = wrong_pixels(model.scores.logits(output), labels)
        for i in range(len(labels)):
            errors.append(float(wrong[i].sum() / labelled[i].sum().clamp_min(1)))
            valid = np.flatnonzero(labelled[i].reshape(-1).numpy())
            take = rng.choice(valid, min(quota, len(valid)), replace=False)
            maps.append(difficulty[i].reshape(-1).numpy()[take])
            wrongs.append(wrong[i].reshape(-1).numpy()[take])
    return maps, wrongs, scores, errors


def worse_share(
    a: list[np.ndarray],
    b: list[np.ndarray],
    wrong: list[np.ndarray],
    rounds: int = KEEP_ROUNDS,
    seed: int = 0,
) -> float:
    """The share of bootstrap resamples of the images (each image's pixels kept together, both
    maps on the same resample) in which map `a`'s pixel AUROC is below map `b`'s."""
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(rounds):
        pick = rng.integers(0, len(a), len(a))
        w = np.concatenate([wrong[i] for i in pick])
        score_a = auroc(np.concatenate([a[i] for i in pick]), w)
        worse += bool(score_a < auroc(np.concatenate([b[i] for i in pick]), w))
    return worse / rounds


def save_head(
    path: Path,
    model: AttachedSegmenter,
    cfg: AttachConfig,
    model_path: Path,
    dataset: SegmentationDataset,
    metrics: dict[str, Any],
) -> None:
    pixel = model.scores.pixel
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "io": model.io.to_dict(),
        "segmenter_sha256": file_sha256(model_path),
        "state_dict": _cpu_state(model.difficulty_head),
        "pixel_state_dict": None if pixel is None else _cpu_state(pixel),
        "class_names": list(dataset.class_names),
        "palette": [list(map(int, c)) for c in dataset.palette],
        "metrics": metrics,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


@dataclass
class AttachedHead:
    """A head checkpoint read back: what export/attach.py composes the graph from."""

    config: AttachConfig
    io: ForeignIO
    segmenter_sha256: str
    state_dict: dict[str, torch.Tensor]
    pixel_state: dict[str, torch.Tensor] | None  # the pixel read-out, when it was kept
    class_names: list[str]
    palette: list[list[int]]
    metrics: dict[str, Any]
    path: Path

    def build_head(self, pam_impl: str = "blocked") -> DifficultyHead:
        head = build_head(self.io, self.config, pam_impl)
        head.load_state_dict(self.state_dict)
        return head.eval()

    def build_pixel(self) -> PixelReadout | None:
        if self.pixel_state is None:
            return None
        pixel = PixelReadout(self.io.num_classes, self.config.pixel_hidden)
        pixel.load_state_dict(self.pixel_state)
        return pixel.eval()

    def scores(self, bins: int = 8, novelty: NoveltyStats | None = None) -> AttachedScores:
        """The graph's scoring part: the head (exact, blocked PAM) and its pixel read-out."""
        return AttachedScores(
            self.io, self.build_head("blocked"), bins, novelty, self.build_pixel()
        ).eval()

    def check_segmenter(self, model_path: Path) -> None:
        """The head was trained on this very file (its sha256), or CheckpointError."""
        if file_sha256(model_path) != self.segmenter_sha256:
            raise CheckpointError(
                f"{model_path} is not the segmenter {self.path} was trained on (sha256 "
                f"{self.segmenter_sha256[:16]}...); attach the head to that file, or train "
                "one on this model with `deal-train attach`"
            )


def load_head(path: Path) -> AttachedHead:
    """Read a head checkpoint written by `attach` (weights_only), or CheckpointError."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on damaged files
        raise CheckpointError(f"{path}: not a readable head checkpoint ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an attached difficulty head (written by `deal-train attach` as "
            "head.pt); a `deal-train fit` checkpoint is exported with `deal-export onnx`"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: head format {raw.get('format_version')}, expected 1")
    return AttachedHead(
        config=AttachConfig.from_dict(raw["config"]),
        io=ForeignIO.from_dict(raw["io"]),
        segmenter_sha256=raw["segmenter_sha256"],
        state_dict=dict(raw["state_dict"]),
        pixel_state=None if raw.get("pixel_state_dict") is None else dict(raw["pixel_state_dict"]),
        class_names=list(raw["class_names"]),
        palette=[list(c) for c in raw["palette"]],
        metrics=dict(raw["metrics"]),
        path=path,
    )


def head_sha256(head: AttachedHead) -> str:
    """The identity of the attached model: the head file and the segmenter it reads."""
    return hashlib.sha256((file_sha256(head.path) + head.segmenter_sha256).encode()).hexdigest()
