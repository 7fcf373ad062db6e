"""Checkpoints: plain dicts of tensors and built-in types, readable with `weights_only=True`."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dealseg.core.files import atomic_output

from .model import DEALNet, ModelConfig

FORMAT = "dealseg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it claims to hold."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    palette: list[list[int]]
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    epoch: int
    path: Path | None = None

    def build_model(self) -> DEALNet:
        """The model with these weights, strictly loaded; a mismatch becomes a CheckpointError."""
        model = DEALNet(self.model_config, pretrained=False)
        expected = model.state_dict()
        missing, unexpected = _key_diff(expected, self.state_dict)
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path}: weights do not fit a {self.model_config.encoder} DEALNet with "
                f"{self.model_config.num_classes} classes: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        bad = [
            f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
            for k, v in self.state_dict.items()
            if v.shape != expected[k].shape
        ]
        if bad:
            raise CheckpointError(f"{self.path}: tensor shapes do not fit the config: {bad[:5]}")
        model.load_state_dict(self.state_dict, strict=True)
        return model

    def build_model_with_head(self, inputs: str, hidden: int, context: int = 0) -> DEALNet:
        """This checkpoint's segmenter and γ under another difficulty-head read-out (`inputs`
        parts, `hidden` units, `context`), freshly initialised: the model a refit then fits."""
        trained = self.build_model().state_dict()
        cfg = replace(
            self.model_config,
            difficulty_inputs=inputs,
            difficulty_hidden=hidden,
            difficulty_context=context,
        )
        model = DEALNet(cfg, pretrained=False)
        new_head = ("difficulty_head.classifier.", "difficulty_head.input_")
        model.load_state_dict(
            {k: v for k, v in trained.items() if not k.startswith(new_head)}, strict=False
        )
        return model


def _key_diff(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))


def save_checkpoint(
    path: Path,
    model: DEALNet,
    class_names: list[str],
    palette: list[list[int]],
    train_config: dict[str, Any],
    metrics: dict[str, Any],
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write atomically (tmp + rename) so an interrupted save never leaves a broken file."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "palette": [list(map(int, c)) for c in palette],
        "train_config": train_config,
        "metrics": metrics,
        "epoch": epoch,
        **(extra or {}),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def read_raw(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refuses to load safely (it needs arbitrary code to unpickle: "
            f"{str(exc).splitlines()[0][:200]}). dealseg checkpoints hold only tensors and "
            "plain types; re-save it with `deal-train fit` or convert it to a state dict."
        ) from None
    except Exception as exc:  # torch raises many types on damaged files: all mean unreadable
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (corrupt or truncated?): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a dealseg checkpoint (expected a dict with format={FORMAT!r}); "
            "checkpoints are written by `deal-train fit`"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {raw.get('format_version')}, "
            f"this dealseg reads {FORMAT_VERSION}"
        )
    return raw


def load_checkpoint(path: Path) -> Checkpoint:
    raw = read_raw(path)
    try:
        cfg = ModelConfig.from_dict(raw["model_config"])
        names = list(raw["class_names"])
        ckpt = Checkpoint(
            model_config=cfg,
            state_dict=dict(raw["state_dict"]),
            class_names=names,
            palette=[list(c) for c in raw["palette"]],
            train_config=dict(raw.get("train_config", {})),
            metrics=dict(raw.get("metrics", {})),
            epoch=int(raw.get("epoch", 0)),
            path=Path(path),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed dealseg checkpoint: {exc}") from None
    if len(names) != cfg.num_classes or len(ckpt.palette) != cfg.num_classes:
        raise CheckpointError(
            f"{path}: {len(names)} class names and {len(ckpt.palette)} palette colours "
            f"for a model with {cfg.num_classes} classes"
        )
    return ckpt


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
