"""The camera over the street and the id canvas everything is drawn into (painter's
algorithm): class ids, projection, layers, noise and colour helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..camvid import CAMVID_CLASSES, CAMVID_VOID

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
VOID = CAMVID_VOID  # unlabelled things (bins, boxes): label value 11
NUM_LABELS = len(CAMVID_CLASSES) + 1  # 11 classes + void

REF_HEIGHT = 180  # pixel limits below are at this image height
POLE_MAX_PX = 3.0  # poles are 1..3 px wide
SIGN_MAX_PX = 12.0  # signs are a few px up to ~12 px
BICYCLIST_RATE = 0.05  # fraction of images with a bicyclist
Z_FAR = 3000.0  # metres; the ground ends at the horizon
NEAR = 0.3  # metres: the near clipping plane; surfaces closer to the camera are cut off
NEAR_OBJECT = 1.0  # metres: trees, poles and people closer than this (or passed) are not drawn

Point = tuple[float, float]
Vec3 = tuple[float, float, float]


# ---------------------------------------------------------------- camera and canvas


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking down the street (+z), `height` metres above the road (y = 0)."""

    f: float  # focal length in pixels
    cx: float  # column of the vanishing point
    cy: float  # row of the horizon
    height: float  # metres
    scale: float  # image height / REF_HEIGHT
    z0: float = 0.0  # metres driven down the street since the first frame of the drive

    def depth(self, z: float) -> float:
        """Distance in front of the camera of the world plane at z."""
        return z - self.z0

    def uv(self, x: float, y: float, z: float) -> Point:
        """Project world point (x right, y up, z forward) to image (column, row)."""
        d = self.depth(z)
        return self.cx + self.f * x / d, self.cy + self.f * (self.height - y) / d

    def px(self, metres: float, z: float) -> float:
        """Size in pixels of `metres` at world z."""
        return self.f * metres / self.depth(z)

    def outline(self, corners: list[Vec3]) -> list[Point]:
        """Image outline of a planar polygon, cut off where it passes the near plane."""
        near = self.z0 + NEAR
        if min(c[2] for c in corners) >= near:  # the common case: wholly in front
            return [self.uv(*c) for c in corners]
        kept: list[Vec3] = []
        for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
            if a[2] >= near:
                kept.append(a)
            if (a[2] >= near) != (b[2] >= near):
                t = (near - a[2]) / (b[2] - a[2])
                kept.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), near))
        return [self.uv(*c) for c in kept]


@dataclass(frozen=True)
class Layers:
    """A composed frame before weather and the camera's processing; arrays are [H, W]."""

    label: np.ndarray  # uint8 classes, 11 void
    rgb: np.ndarray  # [H, W, 3] float32, about 0..255
    ground: np.ndarray  # bool: road, sidewalks, verges
    glow: np.ndarray  # bool: lamps and lit windows (they shine at night)
    depth: np.ndarray  # float32 metres from the camera, inf for sky

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> Layers:
        """Every layer resampled at the same source pixels (rows, cols: [H, W] ints)."""
        return Layers(
            self.label[rows, cols],
            self.rgb[rows, cols],
            self.ground[rows, cols],
            self.glow[rows, cols],
            self.depth[rows, cols],
        )


class Canvas:
    """Id canvas: each drawn part gets an id; ids map to class, colour, texture and depth."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.ids = Image.new("I", (w, h), 0)
        self.draw = ImageDraw.Draw(self.ids)
        self.parts: list[tuple[float, ...]] = []

    def part(
        self, cls: int, rgb, coarse=0.05, fine=0.04, depth=0.0, ground=False, glow=False
    ) -> int:
        """Register a part: class, base colour, low/high-frequency texture, world depth (for
        haze), whether it lies on the ground and whether it glows (lamps)."""
        r, g, b = (min(255.0, max(0.0, float(c))) for c in rgb)
        self.parts.append((cls, r, g, b, coarse, fine, float(ground), depth, float(glow)))
        return len(self.parts) - 1

    def poly(self, pid: int, points: list[Point]) -> None:
        self.draw.polygon(points, fill=pid)

    def quad(self, cam: Camera, pid: int, corners: list[Vec3]) -> None:
        """A planar polygon in the world (mostly four corners), cut at the near plane."""
        points = cam.outline(corners)
        if len(points) >= 3:
            self.poly(pid, points)

    def ellipse(self, pid: int, u: float, v: float, ru: float, rv: float) -> None:
        self.draw.ellipse([u - ru, v - rv, u + ru, v + rv], fill=pid)

    def line(self, pid: int, points: list[Point], width: int = 1) -> None:
        self.draw.line(points, fill=pid, width=max(1, int(round(width))))

    def compose(self, cam: Camera, sky: np.ndarray, haze_rgb, visibility: float, noise) -> Layers:
        """Label, colour (textured, hazy with distance), masks and depth from the id canvas."""
        ids = np.asarray(self.ids)
        table = np.asarray(self.parts, dtype=np.float32)  # [P, 9]
        depth = np.maximum(table[:, 7] - cam.z0, 0)  # [P] metres from the camera
        fog = (1.0 - np.exp(-depth / visibility))[:, None]  # [P, 1]
        base = table[:, 1:4] * (1 - fog) + np.asarray(haze_rgb, np.float32) * fog
        coarse, fine = noise
        texture = 1 + (1 - fog[:, 0])[ids] * (table[ids, 4] * coarse + table[ids, 5] * fine)
        rgb = base[ids] * texture[..., None]
        is_sky = ids == 0
        rgb[is_sky] = sky[is_sky]
        label = table[:, 0].astype(np.uint8)[ids]
        ground = table[ids, 6] > 0
        return Layers(label, rgb, ground, table[ids, 8] > 0, _pixel_depth(cam, ids, depth, ground))


def _pixel_depth(
    cam: Camera, ids: np.ndarray, part_depth: np.ndarray, ground: np.ndarray
) -> np.ndarray:
    """Metres from the camera [H, W]: the ground's from its row, an object's from its part."""
    rows_below = np.arange(ids.shape[0], dtype=np.float32)[:, None] - cam.cy  # [H, 1]
    ground_depth = cam.f * cam.height / np.maximum(rows_below, 0.5)
    depth = np.where(ground, ground_depth, part_depth[ids]).astype(np.float32)
    depth[ids == 0] = np.inf
    return depth


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise [H, W] float32, about unit std, with features about `cell` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC))


def jitter(rng: np.random.Generator, rgb, spread: float = 12.0) -> np.ndarray:
    """Colour plus Gaussian noise (not clipped: `Canvas.part` clips)."""
    return np.asarray(rgb, dtype=float) + rng.normal(0, spread, 3)


def shaded(rgb, factor: float) -> np.ndarray:
    return np.asarray(rgb, dtype=float) * factor


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def child(rng: np.random.Generator) -> np.random.Generator:
    """A generator of its own for one object: whether the camera sees it changes no other."""
    return np.random.default_rng(rng.integers(1 << 63))


@dataclass(frozen=True)
class Drive:
    """The camera's run down the street."""

    speed: float  # metres per frame
    frame: int
    frames: int

    @property
    def reach(self) -> float:
        """Metres from the first frame's camera to the last's."""
        return self.speed * (self.frames - 1)
