"""DEALNet: DeepLabV3+ segmenter with the DEAL difficulty branch.

image -> encoder -> decoder -> segmentation_head -> logits (stride 4)
                   difficulty_head(logits, decoded) -> difficulty map (input size, in (0, 1))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dealseg.core.registry import Registry

from .encoders import build_encoder

C = TypeVar("C")
HEAD_LR_SCALE = 10.0  # the paper: decoder, heads and gamma at 10x the backbone's learning rate


def _fits(value: Any, like: Any) -> bool:
    """Whether `value` has the JSON type of the default `like` (ints count as floats)."""
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, tuple):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(like)
            and all(_fits(v, w) for v, w in zip(value, like, strict=True))
        )
    if isinstance(like, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(like))


def config_from_dict(cls: type[C], d: dict[str, Any], what: str) -> C:
    """A frozen config dataclass from its JSON form (lists back to tuples).

    Unknown keys fail, and so do values of the wrong type or length (`attention_size="45,60"`
    instead of `[45, 60]`), naming the key and the expected form.
    """
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; valid: {sorted(fields)}")
    for key, value in d.items():
        default = fields[key].default
        if not _fits(value, default):
            example = json.dumps(list(default) if isinstance(default, tuple) else default)
            raise ValueError(
                f"{what} setting {key}={value!r}: expected a value like {example} "
                f"(on the command line: {key}={example.replace(' ', '')})"
            )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "efficientnet_lite0"  # a key of encoders.ENCODERS
    num_classes: int = 11
    decoder_width: int = 256  # ASPP and decoder channels (the paper: 256)
    separable: bool = False  # depthwise-separable 3x3 convs in ASPP and decoder
    low_level_channels: int = 48  # skip-path projection width (the paper: 48)
    aspp_rates: tuple[int, int, int] = (6, 12, 18)  # at output stride 16
    aspp_dropout: float = 0.5
    decoder_dropout: tuple[float, float] = (0.5, 0.2)
    attention_size: tuple[int, int] = (60, 80)  # PAM grid (h, w): CamVid 60x80, Cityscapes 86x86
    pam_block: int = 512  # query rows per block in the exact blocked PAM
    pam_impl: str = "sdpa"  # "sdpa" (training), "blocked" (export), "naive" (reference)
    # What the difficulty head reads, parts joined by "+": "Q" (the attended probabilities, as
    # published), "U"/"UA" (entropy, 1 - max, 1 - margin of P / of the attended P), "LP"
    # (log-probabilities), "DEC" (the decoder's features); see model.HEAD_PARTS.
    difficulty_inputs: str = "Q"
    difficulty_hidden: int = 0  # 0: the 1x1 conv read-out; > 0: a 1x1 MLP with this many units
    difficulty_context: int = 0  # > 1: the MLP's middle layer is a context x context conv
    input_size: tuple[int, int] = (360, 480)  # (H, W) the model is exported at
    # Input normalisation on 0..1 RGB: EfficientNet-Lite's own (127/255, 128/255); ImageNet
    # statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for torchvision-style backbones.
    mean: tuple[float, float, float] = (0.498, 0.498, 0.498)
    std: tuple[float, float, float] = (0.502, 0.502, 0.502)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return config_from_dict(cls, d, "model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> normalised input (the exported graph does the same from uint8)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def conv_bn_relu(
    cin: int, cout: int, k: int, dilation: int = 1, separable: bool = False
) -> nn.Sequential:
    pad = dilation * (k // 2)
    if separable and k > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, k, padding=pad, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    def __init__(
        self, cin: int, width: int, rates: tuple[int, ...], dropout: float, separable: bool
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, width, 1)]
            + [conv_bn_relu(cin, width, 3, r, separable) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            conv_bn_relu(width * (len(rates) + 2), width, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on stride-16 features, fused with projected stride-4 features, two 3x3 convs."""

    def __init__(self, low_channels: int, high_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.out_channels = w  # of the decoded features the segmentation head reads
        self.feature_channels = w + cfg.low_level_channels  # of the features pooled to embeddings
        self.aspp = ASPP(high_channels, w, cfg.aspp_rates, cfg.aspp_dropout, cfg.separable)
        self.low_project = conv_bn_relu(low_channels, cfg.low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(w + cfg.low_level_channels, w, 3, separable=cfg.separable),
            nn.Dropout(cfg.decoder_dropout[0]),
            conv_bn_relu(w, w, 3, separable=cfg.separable),
            nn.Dropout(cfg.decoder_dropout[1]),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        high = F.interpolate(
            self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        skip = torch.cat([high, self.low_project(low)], dim=1)  # [B, w + 48, H/4, W/4]
        return self.fuse(skip), skip


def pam_naive(p: torch.Tensor, block: int = 0) -> torch.Tensor:
    """Reference PAM output P Aᵀ with A = softmax(PᵀP): p [B, C, N] -> [B, C, N]. O(N²) memory.

    `block` is unused (every query at once); the PAM functions share one signature."""
    attention = torch.softmax(p.transpose(1, 2) @ p, dim=-1)  # [B, N, N]
    return p @ attention.transpose(1, 2)


def pam_blocked(p: torch.Tensor, block: int = 512) -> torch.Tensor:
    """Exact PAM in static query blocks: O(block·N) memory; exports without an N x N tensor."""
    pt = p.transpose(1, 2)  # [B, N, C]
    outs = []
    for start in range(0, pt.shape[1], block):
        energy = pt[:, start : start + block] @ p  # [B, b, N]
        outs.append(torch.softmax(energy, dim=-1) @ pt)  # [B, b, C]
    return torch.cat(outs, dim=1).transpose(1, 2)


def pam_sdpa(p: torch.Tensor, block: int = 0) -> torch.Tensor:
    """Exact PAM through fused attention (query = key = value = Pᵀ, scale 1); `block` is unused.

    The input must be a contiguous 4-D [B, 1, N, C] tensor: on a 3-D or strided one, torch's CPU
    kernel silently takes the N x N math path (4x the memory, 2-4x the time in training).
    """
    pt = p.transpose(1, 2).contiguous().unsqueeze(1)  # [B, 1, N, C]
    return F.scaled_dot_product_attention(pt, pt, pt, scale=1.0)[:, 0].transpose(1, 2)


# PAM implementations by name: "sdpa" trains, "blocked" exports, "naive" is the reference.
PAM_IMPLS: Registry[Callable[[torch.Tensor, int], torch.Tensor]] = Registry(
    "PAM implementation", naive=pam_naive, blocked=pam_blocked, sdpa=pam_sdpa
)


def uncertainty(p: torch.Tensor) -> torch.Tensor:
    """Per-pixel uncertainty of class probabilities p [B, C, N] -> [B, 3, N]: entropy / ln C,
    1 - the top probability, and 1 - the margin between the top two."""
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1, keepdim=True) / math.log(p.shape[1])
    top = torch.topk(p, 2, dim=1).values  # [B, 2, N]
    return torch.cat([entropy, 1 - top[:, :1], 1 - (top[:, :1] - top[:, 1:])], dim=1)


@dataclass(frozen=True)
class HeadInputs:
    """What the difficulty head sees on its grid: P (probabilities), A = PAM(P), Q = γ·A + P,
    all [B, C, N], and D, the decoder's features [B, W, N]."""

    p: torch.Tensor
    a: torch.Tensor
    q: torch.Tensor
    d: torch.Tensor


# The difficulty head's input parts by name: (the part [B, ., N], its channels for C classes and
# W decoder channels). The paper's head reads Q alone.
HEAD_PARTS: Registry[tuple[Callable[[HeadInputs], torch.Tensor], Callable[[int, int], int]]] = (
    Registry(
        "difficulty head input",
        Q=(lambda x: x.q, lambda c, w: c),  # the attended probabilities (the paper's)
        U=(lambda x: uncertainty(x.p), lambda c, w: 3),  # entropy, 1 - max, 1 - margin of P
        UA=(lambda x: uncertainty(x.a), lambda c, w: 3),  # the same of the attended P
        LP=(lambda x: torch.log(x.p.clamp_min(1e-6)), lambda c, w: c),  # log-probabilities
        DEC=(lambda x: x.d, lambda c, w: w),  # decoder features (no gradient flows back)
    )
)


def head_parts(inputs: str) -> list[str]:
    """ "Q+U+DEC" -> ["Q", "U", "DEC"], each a known part (else UnknownName)."""
    parts = inputs.split("+")
    for part in parts:
        HEAD_PARTS[part]  # noqa: B018 - an unknown name fails here, listing the valid ones
    return parts


def read_out(channels: int, hidden: int, context: int = 0) -> nn.Module:
    """The head's read-out: a 1x1 conv, or an MLP of 1x1 convs with `hidden` units, with a
    `context` x `context` conv between them when `context` > 1 (each pixel sees its
    neighbours on the grid)."""
    if hidden == 0:
        return nn.Conv2d(channels, 1, 1)
    layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.ReLU()]
    if context > 1:
        layers += [nn.Conv2d(hidden, hidden, context, padding=context // 2), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(hidden, 1, 1))


class DifficultyHead(nn.Module):
    """The DEAL branch: softmax -> probability attention -> read-out -> difficulty logits.

    As published (`inputs="Q"`, `hidden=0`) the read-out is a 1x1 conv of the attended
    probabilities Q. Other inputs add parts of `HEAD_PARTS` (each pixel's uncertainty, log-
    probabilities, the decoder's features); they are standardised by `input_mean`/`input_std`
    (set by the refit) before the read-out.
    """

    def __init__(
        self,
        num_classes: int,
        attention_size: tuple[int, int],
        pam_block: int,
        pam_impl: str,
        inputs: str = "Q",
        hidden: int = 0,
        decoder_channels: int = 0,
        context: int = 0,
    ):
        super().__init__()
        PAM_IMPLS[pam_impl]  # noqa: B018 - an unknown name fails here, listing the valid ones
        self.parts = head_parts(inputs)
        self.attention_size = tuple(attention_size)
        self.pam_block = pam_block
        self.pam_impl = pam_impl
        self.gamma = nn.Parameter(torch.zeros(1))
        channels = sum(HEAD_PARTS[p][1](num_classes, decoder_channels) for p in self.parts)
        if self.parts != ["Q"]:
            self.register_buffer("input_mean", torch.zeros(1, channels, 1, 1))
            self.register_buffer("input_std", torch.ones(1, channels, 1, 1))
        self.classifier = read_out(channels, hidden, context)

    def attend(self, p: torch.Tensor) -> torch.Tensor:
        return PAM_IMPLS[self.pam_impl](p, self.pam_block)

    def features(self, logits: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, C, h4, w4] and decoder features [B, W, h4, w4] (needed for "DEC") -> the
        read-out's input [B, F, h, w] on the attention grid (Q for the paper's head),
        standardised."""
        size = self.attention_size
        x = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        b, c, h, w = x.shape
        p = torch.softmax(x, dim=1).reshape(b, c, h * w)  # [B, C, N]
        a = self.attend(p)
        inputs = HeadInputs(p, a, self.gamma * a + p, self._decoded(decoded, size, b, h * w))
        f = torch.cat([HEAD_PARTS[part][0](inputs) for part in self.parts], dim=1)
        f = f.reshape(b, -1, h, w)
        if self.parts == ["Q"]:
            return f
        return (f - self.input_mean) / self.input_std

    def _decoded(self, decoded: torch.Tensor | None, size: tuple, b: int, n: int) -> torch.Tensor:
        if "DEC" not in self.parts:
            return torch.zeros(0)
        if decoded is None:
            raise ValueError("a difficulty head reading DEC needs the decoder's features")
        d = F.interpolate(decoded.detach(), size=size, mode="bilinear", align_corners=False)
        return d.reshape(b, -1, n)

    def forward(self, logits: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, C, h4, w4], decoder features [B, W, h4, w4] -> difficulty logits
        [B, 1, h, w] on the attention grid."""
        return self.classifier(self.features(logits, decoded))


@dataclass
class DEALOutput:
    logits: torch.Tensor  # [B, C, H/4, W/4]
    difficulty_logits: torch.Tensor  # [B, 1, h, w] attention grid
    features: torch.Tensor  # [B, w + 48, H/4, W/4] decoder input (ASPP ⊕ skip), for embeddings
    decoded: torch.Tensor  # [B, w, H/4, W/4] decoder output, the segmentation head's input
    input_size: tuple[int, int] = field(default=(0, 0))

    def full_logits(self) -> torch.Tensor:
        """Segmentation logits bilinearly resized to the input size: [B, C, H, W]."""
        return F.interpolate(
            self.logits, size=self.input_size, mode="bilinear", align_corners=False
        )

    def difficulty(self) -> torch.Tensor:
        """Difficulty map in (0, 1) at input size: [B, H, W]."""
        up = F.interpolate(
            self.difficulty_logits, size=self.input_size, mode="bilinear", align_corners=False
        )
        return torch.sigmoid(up)[:, 0]


class DEALNet(nn.Module):
    def __init__(
        self, cfg: ModelConfig, pretrained: bool = True, encoder_weights: Path | None = None
    ):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, pretrained, encoder_weights)
        self.decoder = DeepLabV3PlusDecoder(
            self.encoder.low_channels, self.encoder.out_channels, cfg
        )
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, cfg.num_classes, 1)
        self.difficulty_head = DifficultyHead(
            cfg.num_classes,
            cfg.attention_size,
            cfg.pam_block,
            cfg.pam_impl,
            cfg.difficulty_inputs,
            cfg.difficulty_hidden,
            self.decoder.out_channels,
            cfg.difficulty_context,
        )

    def forward(self, x: torch.Tensor) -> DEALOutput:
        """x: normalised images [B, 3, H, W] (any size; SAME padding handles odd strides)."""
        h, w = x.shape[-2:]
        low, high = self.encoder(x)
        decoded, features = self.decoder(low, high)
        logits = self.segmentation_head(decoded)
        difficulty = self.difficulty_head(logits, decoded)
        return DEALOutput(logits, difficulty, features, decoded, (h, w))

    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in 0..1 -> (segmentation logits [B, C, H/4, W/4], decoder
        features [B, w, H/4, W/4]): what the difficulty head reads (training/refit.py)."""
        out = self(normalise(images, self.cfg.mean, self.cfg.std))
        return out.logits, out.decoded

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The paper's optimiser groups: backbone at lr, heads and gamma at 10x lr."""
        backbone = list(self.encoder.parameters())
        ids = {id(p) for p in backbone}
        heads = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": backbone, "lr": lr}, {"params": heads, "lr": HEAD_LR_SCALE * lr}]
