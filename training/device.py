"""Where a run computes: `--device auto|cpu|cuda[:N]`, mixed precision and the data loaders.

The device is not part of a run's configuration: a checkpoint holds CPU tensors (readable with
`torch.load(weights_only=True)` anywhere) and a run resumes on another device. On the CPU
nothing changes from a run without these settings: float32, no loader workers, the same
numbers. On CUDA, autocast runs in bf16 where the GPU supports it, else in fp16 with a gradient
scaler; loaders use worker processes and pinned memory, and cuDNN picks its fastest kernels.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_LOADER_WORKERS = 8


class DeviceError(ValueError):
    """A --device this machine cannot run on; the message is the user's one line."""


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`, checked."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise DeviceError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        built = "a CUDA build" if torch.backends.cuda.is_built() else "a CPU-only build"
        raise DeviceError(
            f"--device {name}: no CUDA device on this machine (torch {torch.__version__}, "
            f"{built}); use --device cpu, or auto to take CUDA only when present"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def choose_precision(device_type: str, bf16_supported: bool, amp: bool = True) -> str:
    """fp32 on the CPU or with `amp` off; on CUDA bf16 where supported, else fp16."""
    if not amp or device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def loader_workers(device_type: str, cpu_count: int | None) -> int:
    """DataLoader worker processes: none on the CPU (the run's threads compute there and the
    augmentation stream stays the one seeded in the main process), up to 8 on CUDA."""
    if device_type != "cuda":
        return 0
    return max(1, min(MAX_LOADER_WORKERS, (cpu_count or 2) - 1))


@dataclass(frozen=True)
class Runtime:
    """How a run uses its device (not saved in checkpoints: it is not the model's config)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (autocast + grad scaler)
    workers: int = 0  # DataLoader worker processes

    @classmethod
    def for_device(
        cls, name: str = "auto", amp: bool = True, workers: int | None = None
    ) -> Runtime:
        """The runtime of `--device name`; raises DeviceError when the device is missing."""
        device = resolve_device(name)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: the fastest kernels win
        if workers is None:
            workers = loader_workers(device.type, os.cpu_count())
        return cls(device, choose_precision(device.type, bf16, amp), workers)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def loader_options(self) -> dict[str, object]:
        """DataLoader keywords: workers and pinned memory (none of either on the CPU)."""
        return {"num_workers": self.workers, "pin_memory": self.pin_memory}

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for the forward pass and loss; nothing in fp32."""
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.precision]):
            yield

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16; a disabled one (scale 1, a plain step) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name}), {self.precision}, {self.workers} loader workers"


CPU = Runtime()
