"""The exported graph: uint8 NHWC image in, every contract output out. Scores come from
`dealseg.training.scores`, the same functions the research loop uses."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dealseg.training.model import DEALNet, DEALOutput
from dealseg.training.scores import (
    class_fraction,
    difficulty_entropy,
    difficulty_score,
    pooled_embedding,
    softmax_entropy,
)


class DEALGraph(nn.Module):
    """Normalise -> DEALNet -> DS, DE, entropy, class fractions, embedding, uint8 maps."""

    def __init__(self, model: DEALNet, bins: int) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.model.difficulty_head.pam_impl = "blocked"  # exact, no N x N tensor in the graph
        self.bins = bins
        cfg = model.cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image [B, H, W, 3] uint8 RGB -> outputs in contract order (contract.OUTPUT_NAMES)."""
        return self.outputs(self.model(self.normalise(image)))

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> the model's normalised float input [B, 3, H, W]."""
        return (image.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def outputs(self, out: DEALOutput) -> tuple[torch.Tensor, ...]:
        """The contract outputs of one forward pass of the model."""
        difficulty = out.difficulty()  # [B, H, W] in (0, 1)
        grid = torch.sigmoid(out.difficulty_logits[:, 0])  # [B, h, w] attention grid
        return (
            difficulty_score(difficulty),
            difficulty_entropy(difficulty, self.bins),
            softmax_entropy(out.logits),
            class_fraction(out.logits),
            pooled_embedding(out.features),
            torch.round(grid * 255.0).to(torch.uint8),
            out.logits.argmax(dim=1).to(torch.uint8),
        )
