"""Off-domain pictures made procedurally (numpy and Pillow only): what a street camera should
not be labelled on, in two families of different kinds, one to tune the novelty score on and
one to judge it on (bench/novelty.py).

    tune   flat colour, pixel noise, colour bars, box-blurred streets, stripes, a collage of blocks
    judge  a covered lens, a checkerboard chart, Gaussian-blurred streets, a room, a large
           object on a plain ground, a brick wall
    near   street frames somewhat degraded (mild blur, sensor noise, underexposure): in-domain
           still, to show where the score starts to call a frame off-domain

Each kind is a function (rng, size, street) -> uint8 [H, W, 3]; `street` is an in-domain frame
of that size (the blurred kinds blur it, the others ignore it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Kind = Callable[[np.random.Generator, tuple[int, int], np.ndarray], np.ndarray]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def flat(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """One colour everywhere, a little sensor noise."""
    frame = np.empty((*size, 3), np.float32)
    frame[:] = _colour(rng)
    return _clip(frame + rng.normal(0, 2, frame.shape))


def noise(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """Uniform noise, per pixel or in small blocks."""
    cell = int(rng.integers(1, 5))
    small = rng.integers(0, 256, (size[0] // cell + 1, size[1] // cell + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, cell, 0), cell, 1)[: size[0], : size[1]]


def colour_bars(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A broadcast test pattern: seven vertical bars over a strip of darker ones."""
    bars = np.array(
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0]]
        + [[0, 0, 192]],
        np.uint8,
    )
    h, w = size
    columns = np.arange(w) * len(bars) // w
    frame = np.repeat(bars[columns][None], h, 0)
    frame[int(h * 0.7) :] = bars[::-1][columns] // 3
    return frame


def box_blur(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A street frame under a box blur a fifth of its width wide (a smeared, unfocused lens)."""
    radius = int(size[1] * rng.uniform(0.12, 0.2))
    return np.asarray(Image.fromarray(street).filter(ImageFilter.BoxBlur(radius)))


def stripes(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """Two colours in straight stripes at a random angle (fabric, a shutter)."""
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    band = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)[..., None]
    return np.where(band, _colour(rng), _colour(rng)).astype(np.uint8)


def blocks(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A collage of flat-coloured rectangles (a poster, a screen of windows)."""
    image = Image.new("RGB", size[::-1], _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = rng.integers(0, size[1]), rng.integers(0, size[0])
        x1, y1 = x0 + rng.integers(10, size[1] // 2), y0 + rng.integers(10, size[0] // 2)
        draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=_colour(rng))
    return np.asarray(image)


def covered_lens(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A lens cap or a finger: dark, reddish or grey, brighter toward one edge, noisy."""
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float32)
    cy, cx = rng.uniform(-0.5, 1.5) * size[0], rng.uniform(-0.5, 1.5) * size[1]
    glow = 1 - np.clip(np.hypot(yy - cy, xx - cx) / max(size), 0, 1)
    tint = np.array([rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.5)])
    if rng.random() < 0.5:
        tint = np.full(3, rng.uniform(0.3, 0.8))
    frame = glow[..., None] * tint * rng.uniform(40, 160)
    return _clip(frame + rng.normal(0, 4, frame.shape))


def checkerboard(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A calibration chart: black and white squares, sometimes with a grey border."""
    square = int(rng.integers(8, 30))
    yy, xx = np.mgrid[: size[0], : size[1]]
    board = (((yy // square) + (xx // square)) % 2 * 255).astype(np.uint8)
    frame = np.repeat(board[..., None], 3, 2)
    if rng.random() < 0.5:
        edge = int(rng.integers(4, 20))
        frame[:edge], frame[-edge:], frame[:, :edge], frame[:, -edge:] = 128, 128, 128, 128
    return frame


def gaussian_blur(
    rng: np.random.Generator, size: tuple[int, int], street: np.ndarray
) -> np.ndarray:
    """A street frame under a Gaussian blur of a tenth of its width (heavy defocus)."""
    radius = size[1] * rng.uniform(0.08, 0.14)
    return np.asarray(Image.fromarray(street).filter(ImageFilter.GaussianBlur(radius)))


def room(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """An indoor scene: floor, back wall and side walls in perspective, a door, a table."""
    h, w = size
    image = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(image)
    x0, x1 = int(w * rng.uniform(0.2, 0.35)), int(w * rng.uniform(0.65, 0.8))
    y0, y1 = int(h * rng.uniform(0.15, 0.3)), int(h * rng.uniform(0.55, 0.7))
    wall, side, floor = _colour(rng), _colour(rng), _colour(rng)
    draw.polygon([(0, h), (w, h), (x1, y1), (x0, y1)], fill=floor)
    draw.polygon([(0, 0), (x0, y0), (x0, y1), (0, h)], fill=side)
    draw.polygon([(w, 0), (x1, y0), (x1, y1), (w, h)], fill=tuple(v // 2 for v in side))
    draw.rectangle([x0, y0, x1, y1], fill=wall)
    door = int(x0 + (x1 - x0) * rng.uniform(0.1, 0.6))
    draw.rectangle([door, int(y0 + (y1 - y0) * 0.3), door + (x1 - x0) // 5, y1], fill=_colour(rng))
    tx = int(w * rng.uniform(0.2, 0.6))
    draw.rectangle([tx, int(h * 0.7), tx + w // 4, int(h * 0.75)], fill=_colour(rng))
    for leg in (tx + 2, tx + w // 4 - 4):
        draw.rectangle([leg, int(h * 0.75), leg + 2, int(h * 0.92)], fill=_colour(rng))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)))


def big_object(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A close-up of one large object (a pet, a cup) filling half the frame on a plain ground."""
    h, w = size
    ground = np.array(_colour(rng), np.float32)
    yy = np.linspace(0, 1, h)[:, None, None]
    frame = ground * (0.7 + 0.3 * yy) * np.ones((h, w, 3), np.float32)
    image = Image.fromarray(_clip(frame))
    draw = ImageDraw.Draw(image)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.4, 0.6)
    rx, ry = w * rng.uniform(0.2, 0.35), h * rng.uniform(0.25, 0.4)
    body = _colour(rng)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=body)
    head = rx * rng.uniform(0.35, 0.6)
    hx, hy = cx + rx * rng.choice([-0.8, 0.8]), cy - ry * 0.8
    draw.ellipse([hx - head, hy - head, hx + head, hy + head], fill=body)
    for ex in (-0.35, 0.35):
        e = head * 0.15
        draw.ellipse([hx + ex * head - e, hy - e, hx + ex * head + e, hy + e], fill=(10, 10, 10))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)))


def brick(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A brick wall seen square on: staggered courses, mortar lines, brick-to-brick shade."""
    h, w = size
    bh, bw = int(rng.integers(8, 18)), int(rng.integers(20, 44))
    base = np.array([rng.uniform(120, 190), rng.uniform(40, 90), rng.uniform(30, 70)])
    mortar = rng.uniform(150, 210)
    yy, xx = np.mgrid[:h, :w]
    course = yy // bh
    shifted = xx + (course % 2) * (bw // 2)
    brick_id = course * 1000 + shifted // bw
    shade = rng.uniform(0.75, 1.15, brick_id.max() + 1)[brick_id]
    frame = base * shade[..., None]
    joint = ((yy % bh) < 2) | ((shifted % bw) < 2)
    frame[joint] = mortar
    return _clip(frame + rng.normal(0, 6, frame.shape))


def mild_blur(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A street frame slightly out of focus (a Gaussian blur of 1-2% of its width)."""
    radius = size[1] * rng.uniform(0.01, 0.02)
    return np.asarray(Image.fromarray(street).filter(ImageFilter.GaussianBlur(radius)))


def sensor_noise(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A street frame with visible sensor noise (sigma 8-16 grey levels)."""
    return _clip(street + rng.normal(0, rng.uniform(8, 16), street.shape))


def underexposed(rng: np.random.Generator, size: tuple[int, int], street: np.ndarray) -> np.ndarray:
    """A street frame at a third to a half of its exposure."""
    return _clip(street * rng.uniform(0.33, 0.5))


def _clip(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


TUNE: dict[str, Kind] = {
    "flat": flat,
    "noise": noise,
    "colour-bars": colour_bars,
    "box-blur": box_blur,
    "stripes": stripes,
    "blocks": blocks,
}
JUDGE: dict[str, Kind] = {
    "covered-lens": covered_lens,
    "checkerboard": checkerboard,
    "gaussian-blur": gaussian_blur,
    "room": room,
    "big-object": big_object,
    "brick": brick,
}

# Street frames a camera still takes, somewhat degraded: not off-domain pictures; how many of
# them the score calls off-domain is a limit, not a target (bench/novelty.py).
NEAR: dict[str, Kind] = {
    "mild-blur": mild_blur,
    "sensor-noise": sensor_noise,
    "underexposed": underexposed,
}


def make_frames(
    kinds: dict[str, Kind], per_kind: int, streets: list[np.ndarray], seed: int
) -> list[tuple[str, np.ndarray]]:
    """`per_kind` frames of each kind as (kind, uint8 [H, W, 3]) at the streets' size; the
    blurred kinds blur `streets` in turn (frames not fitted on)."""
    rng = np.random.default_rng(seed)
    size = streets[0].shape[:2]
    return [
        (name, kind(rng, size, streets[i % len(streets)]))
        for name, kind in kinds.items()
        for i in range(per_kind)
    ]
