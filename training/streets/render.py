"""One frame of a drive: the street drawn back to front, its shadows, the condition and the
camera's photometry (`render_scene`)."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from .canvas import SKY, Camera, Canvas, Drive, smooth_noise
from .conditions import CLEAR, CONDITIONS
from .objects import Footprints, draw_in_depth_order, place_road_users, place_side
from .scenery import (
    draw_backdrop,
    draw_facades,
    draw_fence,
    draw_ground,
    draw_hedge,
    random_camera,
    random_sides,
    shadow_mask,
    sky_field,
)

# ---------------------------------------------------------------- the scene


def _photometric(
    rng: np.random.Generator, frame_rng: np.random.Generator, rgb: np.ndarray, scale: float
) -> np.ndarray:
    """The drive's exposure, colour cast, gamma and vignetting, then the frame's sensor noise,
    and the drive's blur and JPEG round trip."""
    exposure = rng.uniform(0.6, 1.35) * frame_rng.uniform(0.96, 1.04)  # auto-exposure wobbles
    gain = (exposure * rng.uniform(0.88, 1.12, 3) / 255.0).astype(np.float32)
    rgb = 255.0 * np.clip(rgb * gain, 0, 1) ** np.float32(rng.uniform(0.8, 1.25))
    h, w = rgb.shape[:2]
    if rng.random() < 0.3:
        yy, xx = np.ogrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
        rgb *= (1 - rng.uniform(0.15, 0.4) * (xx**2 + yy**2) / 2).astype(np.float32)[..., None]
    sigma = np.float32(rng.uniform(0.5, 5))
    rgb += sigma * frame_rng.standard_normal(rgb.shape, dtype=np.float32)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if rng.random() < 0.35:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.3) * scale))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(30, 96)))
    return np.asarray(Image.open(buffer).convert("RGB"))


@dataclass(frozen=True)
class Shot:
    """Which frame of a drive to render, and in which condition the drive is filmed."""

    frame: int = 0  # the camera has driven frame x (the drive's speed) metres
    frames: int = 1  # frames in the drive: its lane is kept clear to the end
    condition: str = CLEAR  # a key of CONDITIONS

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(
                f"unknown condition {self.condition!r}; choose one of: {', '.join(CONDITIONS)}"
            )
        if not 0 <= self.frame < self.frames:
            raise ValueError(f"frame must be in 0..{self.frames - 1}, got {self.frame}")


def _frame_camera(cam: Camera, frame_rng: np.random.Generator, z0: float) -> Camera:
    """The drive's camera `z0` metres on, with a little yaw and pitch jitter (a few pixels)."""
    yaw, pitch = frame_rng.normal(0, 0.012, 2)  # radians; shifts the principal point
    return replace(cam, z0=z0, cx=cam.cx + cam.f * yaw, cy=cam.cy + cam.f * pitch)


def _draw_street(canvas: Canvas, cam: Camera, rng: np.random.Generator, drive: Drive) -> np.ndarray:
    """Draw the whole street back to front; return its shadows on the ground [H, W] 0..1."""
    sides = random_sides(rng)
    draw_ground(canvas, cam, rng, sides)
    shadow = shadow_mask(cam, rng, sides, canvas.h, canvas.w)
    draw_backdrop(canvas, cam, rng)
    for side in sides:
        if side.kind == "buildings":
            draw_facades(canvas, cam, rng, side)
    taken = Footprints()
    taken.take(-1.2, 1.2, -10.0, 6.0 + drive.reach)  # the ego lane ahead stays clear
    beyond, street = [], place_road_users(canvas, cam, rng, sides, taken, drive)
    for side in sides:
        side_beyond, side_street = place_side(canvas, cam, rng, side, taken)
        beyond, street = beyond + side_beyond, street + side_street
    draw_in_depth_order(beyond)
    for side in sides:
        if rng.random() < (0.7 if side.kind == "park" else 0.45):
            (draw_hedge if side.kind == "park" and rng.random() < 0.4 else draw_fence)(
                canvas, cam, rng, side
            )
    draw_in_depth_order(street)
    return shadow


def render_scene(
    rng: np.random.Generator, size: tuple[int, int] = (180, 240), shot: Shot = Shot()
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: image [H, W, 3] uint8 and label [H, W] uint8 (0..10, 11 void).

    `rng` draws the street. The frames of a drive are rendered from fresh generators with the
    same seed, so they show the same world from a camera that moves on by `shot.frame`.
    """
    h, w = size
    condition = CONDITIONS[shot.condition]
    frame_rng = np.random.default_rng([int(rng.integers(1 << 32)), shot.frame])
    drive = Drive(rng.uniform(0.5, 3.0), shot.frame, shot.frames)
    cam = condition.camera(random_camera(rng, h, w), rng)
    cam = _frame_camera(cam, frame_rng, drive.speed * drive.frame)
    canvas = Canvas(h, w)
    sky, horizon_rgb = sky_field(rng, h, w, cam.cy, cam.scale)
    canvas.part(SKY, horizon_rgb)  # id 0, the background; coloured from the sky field
    shadow = _draw_street(canvas, cam, rng, drive)
    noise = (
        smooth_noise(rng, h, w, 14 * cam.scale),
        0.6 * smooth_noise(rng, h, w, 2.5 * cam.scale)
        + 0.5 * rng.standard_normal((h, w), dtype=np.float32),
    )
    layers = canvas.compose(cam, sky, horizon_rgb, rng.uniform(150, 900), noise)
    darken = rng.uniform(0.3, 0.6) * condition.sunny * shadow * layers.ground
    layers = replace(layers, rgb=layers.rgb * (1 - darken.astype(np.float32))[..., None])
    layers = condition.apply(layers, cam, rng, frame_rng)
    return _photometric(rng, frame_rng, layers.rgb, cam.scale), layers.label
