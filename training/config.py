"""Training configuration and presets (frozen dataclasses, saved in every checkpoint)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .model import ModelConfig, config_from_dict


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # the paper retrains 100 epochs per stage
    batch_size: int = 4  # CamVid 4, Cityscapes 8
    lr: float = 0.01  # backbone; heads and gamma at 10x
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9  # lr * (1 - iter / max_iter) ** power, per iteration
    crop: tuple[int, int] = (360, 360)  # random crop after random scale
    scale: tuple[float, float] = (0.5, 2.0)
    color_jitter: float = 0.2
    val_every: int = 5  # epochs between validations (and the last epoch)
    difficulty_loss: str = "wbce"  # "bce" | "wbce"
    difficulty_weight: float = 1.0  # λ in L_seg + λ·L_dif
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all cores
    pretrained: bool = True  # ImageNet encoder weights
    train_split: str = "train"
    val_split: str = "val"
    # After training, refit the difficulty head's 1x1 conv on the val split's error masks
    # (training/refit.py): the same architecture, a sharper map on unseen images.
    refit_difficulty: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, d, "training")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    # The paper's CamVid setting (360x480, 256-wide decoder, 100 epochs, batch 4): for GPU hosts.
    "paper": Preset(ModelConfig(), TrainConfig()),
    # The paper's Cityscapes setting: images resized to 688x688, attention grid 86x86, batch 8
    # (use 10 DE bins: `--bins 10`).
    "paper-cityscapes": Preset(
        ModelConfig(num_classes=19, attention_size=(86, 86), input_size=(688, 688)),
        TrainConfig(batch_size=8, crop=(688, 688)),
    ),
    # What a 2-core CPU trains in under 30 minutes on the 180x240 street set: separable 96-wide
    # decoder, attention grid at the paper's 1/6 of the input, 12 epochs of 700 images (~1.1 s per
    # batch of 8 at 176x176: ~19 min), then the difficulty-head refit on the val split (~15 s).
    "cpu": Preset(
        ModelConfig(
            decoder_width=96, separable=True, attention_size=(30, 40), input_size=(180, 240)
        ),
        TrainConfig(
            epochs=12,
            batch_size=8,
            crop=(176, 176),
            scale=(0.75, 1.5),
            val_every=4,
            refit_difficulty=True,
        ),
    ),
    # `deal-train al` on the 180x240 street set: ds, de, random, entropy, one seed, 10% -> 40%
    # of the 700-image pool in about an hour on 2 cores with `--step 0.10 --subset 0.5`
    # (70, 140, 210, 280 labelled: 4 stages; the paper's 5% steps double the trainings).
    # Budget (rates measured with the `cpu` preset: ~5-7 img/s training at 176x176, ~25 img/s
    # inference at 180x240):
    #   train  128x128 crops are 0.53x the pixels of 176x176 -> ~8 img/s. Full batches over the
    #          stages: stage 0 (64) shared, then 136 + 208 + 280 per strategy:
    #          64 + 4 x 624 = 2560 images per epoch x 6 epochs = 15360 images      ~1900 s
    #   val    13 fits x 2 validations x 100 images at ~20 img/s                   ~130 s
    #   test   13 fits x 200 images                                                ~130 s
    #   score  ds, de, entropy on half the unlabelled pool, 3 stages               ~200 s
    #   other  model builds, checkpoint writes                                     ~60 s
    #   total  ~2400 s = ~40 min.
    "streets-cpu": Preset(
        ModelConfig(
            decoder_width=64, separable=True, attention_size=(30, 40), input_size=(180, 240)
        ),
        TrainConfig(epochs=6, batch_size=8, crop=(128, 128), scale=(0.75, 1.25), val_every=3),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def resolve_config(
    preset: str, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Preset:
    """Preset, then a JSON file {"model": {...}, "train": {...}}, then `key=value` overrides.

    Override keys name a field of either config (`epochs`, `decoder_width`); the model's wins
    nowhere since the two share no field names.
    """
    base = get_preset(preset)
    model, train = base.model.to_dict(), base.train.to_dict()
    if config_file is not None:
        data = json.loads(Path(config_file).read_text())
        model.update(data.get("model", {}))
        train.update(data.get("train", {}))
    for key, value in (overrides or {}).items():
        if key in model:
            model[key] = value
        elif key in train:
            train[key] = value
        else:
            raise KeyError(
                f"unknown setting {key!r}; model settings: {sorted(model)}; "
                f"training settings: {sorted(train)}"
            )
    return Preset(ModelConfig.from_dict(model), TrainConfig.from_dict(train))


def with_classes(preset: Preset, num_classes: int) -> Preset:
    return Preset(replace(preset.model, num_classes=num_classes), preset.train)
