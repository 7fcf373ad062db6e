"""Conditions a drive is filmed in (clear, night, fog, rain, snow, fisheye, glare): they
change the pixels, never the labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .canvas import Camera, Layers, smooth_noise

# ---------------------------------------------------------------- conditions


CLEAR = "clear"


class Condition:
    """Clear day, the common condition. A rare one changes the camera or the composed frame."""

    rate = 0.0  # share of drives (so about that share of frames) filmed in this condition
    sunny = True  # hard shadows fall on the ground

    def camera(self, cam: Camera, rng: np.random.Generator) -> Camera:
        return cam

    def apply(
        self, layers: Layers, cam: Camera, rng: np.random.Generator, frame_rng: np.random.Generator
    ) -> Layers:
        """Change the frame's colours, or warp every layer alike, so labels stay exact. `rng`
        is the drive's (the same draws in every frame), `frame_rng` the frame's own."""
        return layers


class Night(Condition):
    """Dark blue ambient light, headlights on the near street; lamps and lit windows glow."""

    rate = 0.03
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        ambient = rng.uniform(0.04, 0.1) * np.float32([0.75, 0.85, 1.2])  # moonlit blue
        reach = rng.uniform(8, 20)  # metres the headlights carry
        headlights = rng.uniform(0.5, 0.9) * np.exp(-layers.depth / reach)
        rgb = layers.rgb * (ambient + headlights[..., None] * np.float32([1.0, 0.95, 0.8]))
        lamps = np.where(layers.glow[..., None], layers.rgb * 1.3, 0).astype(np.float32)
        rgb = np.maximum(rgb, lamps) + 0.8 * _blur(lamps, 2.0 * cam.scale)
        rgb += frame_rng.normal(0, 3, rgb.shape).astype(np.float32)  # high-gain sensor
        return replace(layers, rgb=rgb)


class Fog(Condition):
    """Thick fog: everything fades into a grey veil within 10-35 m; the sky is the veil."""

    rate = 0.03
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        veil = rng.uniform(170, 215) * np.float32([1.0, 1.01, 1.03])
        return replace(layers, rgb=_haze(layers, rng.uniform(10, 35), veil))


class Rain(Condition):
    """Dull grey light, a dark wet road with puddles that mirror the sky, rain streaks."""

    rate = 0.04
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        h, w = layers.label.shape
        grey = rng.uniform(120, 160)
        rgb = _haze(layers, rng.uniform(60, 150), grey)
        rgb = _desaturate(rgb, 0.5) * rng.uniform(0.6, 0.8)
        rgb[layers.ground] *= 0.7
        puddles = smooth_noise(rng, h, w, 8 * cam.scale) > rng.uniform(0.8, 1.3)
        puddles &= layers.ground
        rgb[puddles] = 0.6 * rgb[puddles] + 0.4 * grey
        slant = rng.uniform(-0.4, 0.4)
        streaks = _speckle(frame_rng, h, w, int(0.004 * h * w), cam.scale, slant)
        return replace(layers, rgb=_over(rgb, streaks * 0.35, 210.0))


class Snow(Condition):
    """Snow on the ground, a pale sky, low contrast and flakes in the air."""

    rate = 0.02
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        h, w = layers.label.shape
        white = np.float32([228, 232, 238])
        rgb = _haze(layers, rng.uniform(40, 120), 0.9 * white)
        patches = smooth_noise(rng, h, w, 6 * cam.scale)
        cover = np.clip(rng.uniform(0.6, 0.9) + 0.2 * patches, 0, 1) * layers.ground
        rgb = _over(rgb, cover, white)
        flakes = _speckle(frame_rng, h, w, int(0.005 * h * w), cam.scale, slant=None)
        return replace(layers, rgb=_over(rgb, flakes, white))


class Fisheye(Condition):
    """Another camera: wide angle, mounted low, rolled, with fisheye-like barrel distortion."""

    rate = 0.03

    def camera(self, cam: Camera, rng: np.random.Generator) -> Camera:
        return replace(cam, f=cam.f * rng.uniform(0.45, 0.65), height=rng.uniform(0.45, 0.9))

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        roll = rng.choice([-1, 1]) * rng.uniform(0.08, 0.2)  # radians
        return layers.gather(*_fisheye_source(*layers.label.shape, roll, rng.uniform(0.2, 0.45)))


class Glare(Condition):
    """Overexposed through a dirty lens: washed-out highlights, a veil of stray light and
    smudges that stay put for the whole drive."""

    rate = 0.02

    def apply(self, layers, cam, rng, frame_rng) -> Layers:
        h, w = layers.label.shape
        rgb = layers.rgb * rng.uniform(1.6, 2.4) + rng.uniform(15, 40)
        smudges = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(smudges)
        for _ in range(int(rng.integers(3, 8))):
            u, v, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 14) * cam.scale
            draw.ellipse([u - r, v - r, u + r, v + r], fill=int(rng.uniform(90, 160)))
        alpha = np.asarray(smudges.filter(ImageFilter.GaussianBlur(3 * cam.scale)), np.float32)
        return replace(layers, rgb=_over(rgb, alpha / 255.0, np.float32([90, 80, 60])))


CONDITIONS: dict[str, Condition] = {
    CLEAR: Condition(),
    "night": Night(),
    "fog": Fog(),
    "rain": Rain(),
    "snow": Snow(),
    "fisheye": Fisheye(),
    "glare": Glare(),
}


def _haze(layers: Layers, visibility: float, colour) -> np.ndarray:
    """Colours fading with distance into `colour` (the sky, at infinite depth, becomes it)."""
    fog = (1 - np.exp(-layers.depth / np.float32(visibility)))[..., None]
    return layers.rgb * (1 - fog) + np.asarray(colour, np.float32) * fog


def _desaturate(rgb: np.ndarray, amount: float) -> np.ndarray:
    grey = rgb.mean(axis=2, keepdims=True)
    return rgb * (1 - amount) + grey * amount


def _over(rgb: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """`colour` laid over `rgb` with opacity alpha [H, W] in 0..1."""
    alpha = alpha.astype(np.float32)[..., None]
    return rgb * (1 - alpha) + np.asarray(colour, np.float32) * alpha


def _blur(rgb: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32)


def _speckle(
    rng: np.random.Generator, h: int, w: int, count: int, scale: float, slant: float | None
) -> np.ndarray:
    """Opacity [H, W] 0..1 of `count` rain streaks (slant: dx per dy) or, if None, flakes."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    u, v = rng.uniform(0, w, count), rng.uniform(0, h, count)
    size = rng.uniform(0.5, 1.5, count) * scale
    for k in range(count):
        if slant is None:
            draw.ellipse([u[k] - size[k], v[k] - size[k], u[k] + size[k], v[k] + size[k]], 255)
        else:
            length = 8 * size[k]
            draw.line([(u[k], v[k]), (u[k] + slant * length, v[k] + length)], fill=255)
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(0.5 * scale)), np.float32) / 255.0


def _fisheye_source(h: int, w: int, roll: float, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Source (rows, cols) [H, W] of a view rolled by `roll` radians with barrel distortion k:
    the centre is magnified 1 + k, corners stay, and the roll is zoomed to keep the frame full."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    radius = np.hypot(cx, cy)
    dy, dx = (yy - cy) / radius, (xx - cx) / radius
    bend = (1 + k * (dx**2 + dy**2)) / (1 + k)
    c, s = np.cos(roll), np.sin(roll)
    zoom = abs(c) + max(w / h, h / w) * abs(s)
    sx, sy = (c * dx - s * dy) * bend / zoom, (s * dx + c * dy) * bend / zoom
    rows = np.clip(np.rint(cy + sy * radius), 0, h - 1).astype(np.intp)
    cols = np.clip(np.rint(cx + sx * radius), 0, w - 1).astype(np.intp)
    return rows, cols
