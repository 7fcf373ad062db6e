"""The exported graph: uint8 NHWC image and its valid box in, every contract output out. Scores
come from `dealseg.training.scores`, the same functions the research loop uses.

Letterbox padding (the frame outside `valid_box`) is blanked to the normalised zero (the
model's mean colour) before the network, so what a client pads with does not matter, and it is
left out of every score: DS and DE count the picture's pixels only, entropy, class fractions and
the embedding the stride-4 cells by their share of picture. With the whole frame as the box the
outputs are those of the graph without a box.

The uint8 `image` is read by one Cast to float32 and nothing else: TensorRT lets a UInt8 network
input feed only a Cast (its parser refuses a Transpose or a Shape of it), and the cast value is
exact (0..255 in float32), so the outputs are those of casting after the transpose.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dealseg.training.model import DEALNet, DEALOutput
from dealseg.training.novelty import Novelty, NoveltyStats
from dealseg.training.scores import (
    box_weights,
    class_fraction,
    difficulty_entropy,
    difficulty_score,
    entropy_map_uint8,
    pooled_embedding,
    softmax_entropy,
)


class DEALGraph(nn.Module):
    """Normalise -> DEALNet -> DS, DE, entropy, class fractions, embedding, novelty (of the
    embedding, with `novelty`'s statistics; NaN without), uint8 maps."""

    def __init__(self, model: DEALNet, bins: int, novelty: NoveltyStats | None = None) -> None:
        super().__init__()
        self.novelty = Novelty(novelty)
        self.model = copy.deepcopy(model).eval()
        self.model.difficulty_head.pam_impl = "blocked"  # exact, no N x N tensor in the graph
        self.bins = bins
        cfg = model.cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)

    def forward(
        self, image: torch.Tensor, valid_box: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """image [B, H, W, 3] uint8 RGB, valid_box [B, 4] int32 (top, left, bottom, right; the
        whole frame when None) -> outputs in contract order (contract.OUTPUT_NAMES)."""
        return self.run(image, valid_box)[1]

    def run(
        self, image: torch.Tensor, valid_box: torch.Tensor | None = None
    ) -> tuple[DEALOutput, tuple[torch.Tensor, ...]]:
        """The model's forward pass on the blanked frame and the contract outputs of it."""
        frame = image.to(torch.float32)  # the one reader of the uint8 input (module docstring)
        size = (frame.shape[1], frame.shape[2])
        if valid_box is None:
            whole = torch.tensor([[0, 0, size[0], size[1]]], device=frame.device)
            valid_box = whole.expand(frame.shape[0], 4)
        pixels = box_weights(valid_box, size, size)  # [B, H, W] 1 picture, 0 padding
        out = self.model(self.normalise(frame) * pixels[:, None])
        cells = box_weights(valid_box, size, (out.logits.shape[2], out.logits.shape[3]))
        return out, self.outputs(out, pixels, cells)

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        """float32 [B, H, W, 3] in 0..255 -> the model's normalised input [B, 3, H, W]."""
        return (frame.permute(0, 3, 1, 2) - self.mean) / self.std

    def outputs(
        self, out: DEALOutput, pixels: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The contract outputs of one forward pass; `pixels` [B, H, W] and `cells`
        [B, H/4, W/4] weigh each pixel and stride-4 cell by its share of picture."""
        difficulty = out.difficulty()  # [B, H, W] in (0, 1)
        grid = torch.sigmoid(out.difficulty_logits[:, 0])  # [B, h, w] attention grid
        embedding = pooled_embedding(out.features, cells)  # [B, D]
        return (
            difficulty_score(difficulty, pixels),
            difficulty_entropy(difficulty, self.bins, pixels),
            softmax_entropy(out.logits, cells),
            class_fraction(out.logits, cells),
            embedding,
            self.novelty(embedding),
            torch.round(grid * 255.0).to(torch.uint8),
            out.logits.argmax(dim=1).to(torch.uint8),
            entropy_map_uint8(out.logits),
        )
