"""The one colour map of difficulty, and the class colours: the `--maps` panels, the report and
the training eval figure all draw with these. Numpy only.

Difficulty 0..1 (the graph's `difficulty` output is that x 255) runs dark purple -> red ->
yellow: matplotlib's "inferno", perceptually uniform and readable in grey, sampled at 17 points
and interpolated linearly (a test keeps it within 8 levels of matplotlib's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIFFICULTY_LABEL = "difficulty 0..1"
_INFERNO = np.array(  # matplotlib's inferno at 0, 1/16, ..., 1 (RGB 0..255)
    [
        [0, 0, 4],
        [11, 7, 36],
        [33, 12, 74],
        [61, 9, 101],
        [87, 16, 110],
        [113, 25, 110],
        [138, 34, 106],
        [163, 44, 97],
        [188, 55, 84],
        [210, 70, 68],
        [228, 90, 49],
        [241, 115, 29],
        [249, 142, 9],
        [252, 172, 17],
        [249, 203, 53],
        [242, 234, 105],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
DIFFICULTY_LUT: np.ndarray = (  # uint8 [256, 3]: difficulty x 255 -> RGB
    np.stack(
        [
            np.interp(np.arange(256), np.linspace(0, 255, len(_INFERNO)), _INFERNO[:, c])
            for c in range(3)
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)


def difficulty_rgb(difficulty: np.ndarray) -> np.ndarray:
    """uint8 [...] difficulty x 255 -> uint8 [..., 3] colours; floats 0..1 are scaled first."""
    d = np.asarray(difficulty)
    if d.dtype != np.uint8:
        d = (np.clip(np.nan_to_num(d), 0.0, 1.0) * 255).round().astype(np.uint8)
    return DIFFICULTY_LUT[d]


def colour_bar(width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: difficulty 0 at the left to 1 at the right."""
    ramp = np.linspace(0, 255, max(width, 1)).round().astype(np.uint8)
    return np.broadcast_to(DIFFICULTY_LUT[ramp][None], (height, max(width, 1), 3)).copy()


def css_gradient() -> str:
    """The colour map as a CSS `linear-gradient` from 0 (left) to 1 (right)."""
    stops = ", ".join(
        f"#{r:02x}{g:02x}{b:02x} {100 * i / (len(_INFERNO) - 1):.1f}%"
        for i, (r, g, b) in enumerate(_INFERNO.astype(int))
    )
    return f"linear-gradient(to right, {stops})"


def class_colors(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 [256, 3]: class id -> palette colour; ids beyond the palette are grey."""
    colors = np.full((256, 3), 128, dtype=np.uint8)
    colors[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return colors
