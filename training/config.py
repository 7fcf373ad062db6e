"""Training configuration and presets (frozen dataclasses, saved in every checkpoint)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dealseg.core.registry import Registry

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
    # After training, refit the difficulty head's read-out on the val split's error masks
    # (training/refit.py): the same architecture, a sharper map on unseen images.
    refit_difficulty: bool = False
    refit_loss: str = "wbce"  # "bce": the map becomes an error probability, DS an error rate
    refit_l2: float = 0.0  # penalty on the read-out's weights (for an MLP read-out)
    # Samples drawn per epoch (the labelled set repeated in fresh shuffles); 0 = one pass over
    # the labelled set. Setting it fixes the training budget (epochs x samples_per_epoch samples
    # seen) whatever the labelled set's size, so active-learning stages compare fairly.
    samples_per_epoch: int = 0
    # Masks whose unlabelled pixels are void (labels bought by the region): the difficulty head
    # learns the error mask on labelled pixels only (the segmenter always ignores void pixels).
    partial_labels: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, d, "training")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig


# The refit of dealseg's own difficulty heads: plain BCE, so the map is an error probability.
FLEET_REFIT: dict[str, Any] = {"refit_difficulty": True, "refit_loss": "bce"}

PRESETS: Registry[Preset] = Registry(
    "preset",
    **{
        # The paper's CamVid setting (360x480, 256-wide decoder, 100 epochs, batch 4): GPU hosts.
        "paper": Preset(ModelConfig(), TrainConfig()),
        # The paper's Cityscapes setting: images resized to 688x688, attention grid 86x86, batch 8
        # (use 10 DE bins: `--bins 10`).
        "paper-cityscapes": Preset(
            ModelConfig(num_classes=19, attention_size=(86, 86), input_size=(688, 688)),
            TrainConfig(batch_size=8, crop=(688, 688)),
        ),
        # 16:9 fleet frames on GPU hosts (`--device cuda`): the paper's model and schedule at
        # 288x512 and 720x1280 (both divisible by the output stride 16), the attention grid at
        # about 1/6 and 1/8 of the input. Not yet run on a GPU by this project.
        "paper-288x512": Preset(
            ModelConfig(input_size=(288, 512), attention_size=(48, 86)),
            TrainConfig(batch_size=8, crop=(288, 512)),
        ),
        "paper-720x1280": Preset(
            ModelConfig(input_size=(720, 1280), attention_size=(90, 160)),
            TrainConfig(batch_size=4, crop=(720, 720)),
        ),
        # The shipped street-set model on a 2-core CPU: separable 96-wide decoder, attention grid
        # at the paper's 1/6 of the input, a difficulty head that reads the attended
        # probabilities, each pixel's uncertainty and log-probabilities and the decoder's
        # features through a 16-unit MLP with a 3x3 context layer, refit on the val split with
        # plain BCE so that the map is an error probability and DS an expected error rate (the
        # variants compared, and why this one: the README). Measured times are in the README.
        "cpu": Preset(
            ModelConfig(
                decoder_width=96,
                separable=True,
                attention_size=(30, 40),
                input_size=(180, 240),
                difficulty_inputs="Q+U+UA+LP+DEC",
                difficulty_hidden=16,
                difficulty_context=3,
            ),
            TrainConfig(
                epochs=12,
                batch_size=8,
                crop=(176, 176),
                scale=(0.75, 1.5),
                val_every=4,
                refit_l2=1e-2,
                **FLEET_REFIT,
            ),
        ),
        # `deal-train al` on the 180x240 street set on a 2-core CPU: a narrower decoder, shorter
        # training on smaller crops, so that a study of several strategies fits in hours (the
        # README gives the command and its measured time). Each stage's difficulty head reads the
        # attended probabilities, uncertainty and decoder features through a 1x1 conv (a refit in
        # seconds, where the shipped model's MLP takes minutes).
        "streets-cpu": Preset(
            ModelConfig(
                decoder_width=64,
                separable=True,
                attention_size=(30, 40),
                input_size=(180, 240),
                difficulty_inputs="Q+U+UA+DEC",
            ),
            TrainConfig(
                epochs=6,
                batch_size=8,
                crop=(128, 128),
                scale=(0.75, 1.25),
                val_every=3,
                refit_l2=1e-4,
                **FLEET_REFIT,
            ),
        ),
    },
)


def resolve_config(
    preset: str, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Preset:
    """Preset, then a JSON file {"model": {...}, "train": {...}}, then `key=value` overrides.

    Override keys name a field of either config (`epochs`, `decoder_width`); the model's wins
    nowhere since the two share no field names.
    """
    base = PRESETS[preset]
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
