"""Procedural street scenes in CamVid layout: the offline benchmark (see docs/architecture.md).

A scene is a pinhole camera over a flat street seen down its length: sky, a perspective road
with sidewalks, facades with windows, fences, trees, slender poles with small signs, cars,
pedestrians and rare bicyclists. Everything is drawn back to front into an *id canvas*
(painter's algorithm), so occlusion is right and the label is exactly the object drawn at each
pixel; each id carries a class, a colour and a texture. Lighting, shadows, haze, blur and a JPEG
round trip then make the image hard, in the ways the DEAL paper says matter: slender and tiny
objects, rare classes, occlusion and confusable surfaces.

Sizes in metres are projected with the camera; pixel limits (pole width 1-3 px, signs up to
~12 px) are given at 180 px image height and scale with the image.

Like fleet video, a data set is made of *drives*: a sequence of frames of one street, the camera
advancing a few metres per frame with a little yaw and pitch jitter and the traffic moving, so
consecutive frames are near-duplicates. Every frame of a drive is drawn from a generator with the
drive's seed, so the world is the same; only the camera, the traffic and the sensor noise change.
Each drive is filmed in one condition: mostly clear day, sometimes night, fog, rain, snow, another
camera (fisheye) or glare, at long-tail rates (`CONDITIONS`). Conditions change the pixels, never
the labels. A drive never straddles splits; `tags.jsonl` (see tags.py) records each frame's drive
and condition.
"""

from __future__ import annotations

import io
import json
import multiprocessing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dealseg.core.classes import IGNORE_INDEX, ClassTable

from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CAMVID_VOID
from .tags import FrameTag, write_tags

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
class _Layers:
    """A composed frame before weather and the camera's processing; arrays are [H, W]."""

    label: np.ndarray  # uint8 classes, 11 void
    rgb: np.ndarray  # [H, W, 3] float32, about 0..255
    ground: np.ndarray  # bool: road, sidewalks, verges
    glow: np.ndarray  # bool: lamps and lit windows (they shine at night)
    depth: np.ndarray  # float32 metres from the camera, inf for sky

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> _Layers:
        """Every layer resampled at the same source pixels (rows, cols: [H, W] ints)."""
        return _Layers(
            self.label[rows, cols],
            self.rgb[rows, cols],
            self.ground[rows, cols],
            self.glow[rows, cols],
            self.depth[rows, cols],
        )


class _Canvas:
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

    def compose(self, cam: Camera, sky: np.ndarray, haze_rgb, visibility: float, noise) -> _Layers:
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
        return _Layers(label, rgb, ground, table[ids, 8] > 0, _pixel_depth(cam, ids, depth, ground))


def _pixel_depth(
    cam: Camera, ids: np.ndarray, part_depth: np.ndarray, ground: np.ndarray
) -> np.ndarray:
    """Metres from the camera [H, W]: the ground's from its row, an object's from its part."""
    rows_below = np.arange(ids.shape[0], dtype=np.float32)[:, None] - cam.cy  # [H, 1]
    ground_depth = cam.f * cam.height / np.maximum(rows_below, 0.5)
    depth = np.where(ground, ground_depth, part_depth[ids]).astype(np.float32)
    depth[ids == 0] = np.inf
    return depth


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise [H, W] float32, about unit std, with features about `cell` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC))


def _jitter(rng: np.random.Generator, rgb, spread: float = 12.0) -> np.ndarray:
    """Colour plus Gaussian noise (not clipped: `_Canvas.part` clips)."""
    return np.asarray(rgb, dtype=float) + rng.normal(0, spread, 3)


def _shade(rgb, factor: float) -> np.ndarray:
    return np.asarray(rgb, dtype=float) * factor


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _child(rng: np.random.Generator) -> np.random.Generator:
    """A generator of its own for one object: whether the camera sees it changes no other."""
    return np.random.default_rng(rng.integers(1 << 63))


# ---------------------------------------------------------------- the street


@dataclass(frozen=True)
class _Side:
    """One side of the street, seen from the road: curb, sidewalk, verge, then facades or park."""

    sign: int  # -1 left, +1 right
    curb: float  # |x| of the road edge, metres
    walk: float  # sidewalk width, 0 = none
    verge: float  # grass strip beyond the sidewalk
    kind: str  # "buildings" or "park"

    @property
    def outer(self) -> float:
        return self.curb + self.walk + self.verge

    def x(self, distance: float) -> float:
        """World x of a point `distance` metres from the street axis on this side."""
        return self.sign * distance


def _random_camera(rng: np.random.Generator, h: int, w: int) -> Camera:
    return Camera(
        f=w * rng.uniform(0.5, 0.8),
        cx=w * rng.uniform(0.3, 0.7),
        cy=h * rng.uniform(0.4, 0.58),
        height=rng.uniform(1.2, 1.8),
        scale=h / REF_HEIGHT,
    )


def _random_sides(rng: np.random.Generator) -> tuple[_Side, _Side]:
    width = rng.uniform(5.0, 13.0)
    offset = rng.uniform(-0.35, 0.35) * width  # camera's place across the road
    both = rng.random() < 0.7
    walk_side = int(rng.integers(2))
    sides = []
    for k, sign in enumerate((-1, 1)):
        has_walk = both or k == walk_side
        walk = rng.uniform(2.0, 6.0) if has_walk else 0.0
        verge = rng.uniform(0.5, 3.0) if (not has_walk or rng.random() < 0.15) else 0.0
        kind = "buildings" if rng.random() < 0.75 else "park"
        sides.append(_Side(sign, width / 2 - sign * offset, walk, verge, kind))
    return sides[0], sides[1]


# ---------------------------------------------------------------- sky and background


def _sky_field(rng: np.random.Generator, h: int, w: int, horizon: float, s: float) -> tuple:
    """Sky colour [H, W, 3] (gradient + clouds) and the colour at the horizon (for haze)."""
    if rng.random() < 0.3:  # overcast: pale grey, close to light facades
        zenith = _jitter(rng, [175, 180, 190], 15)
        low = _shade(zenith, rng.uniform(1.0, 1.15))
    else:
        zenith = _jitter(rng, [75, 125, 205], 18)
        low = _jitter(rng, [195, 210, 232], 12)
    t = np.clip(np.arange(h, dtype=np.float32) / max(horizon, 1.0), 0, 1) ** rng.uniform(0.5, 1.2)
    sky = zenith[None, None] * (1 - t[:, None, None]) + low[None, None] * t[:, None, None]
    sky = np.broadcast_to(sky.astype(np.float32), (h, w, 3))
    clouds = _smooth_noise(rng, h, w, 22 * s) + 0.5 * _smooth_noise(rng, h, w, 6 * s)
    alpha = np.clip((clouds - rng.uniform(-0.5, 1.8)) * rng.uniform(0.4, 1.0), 0, 1)
    cloud_rgb = _jitter(rng, [235, 235, 238], 10).astype(np.float32)
    cloud_rgb = cloud_rgb * (1 - 0.15 * np.clip(clouds, 0, 1))[..., None]
    sky = sky * (1 - alpha[..., None]) + cloud_rgb * alpha[..., None]
    return sky, low


def _draw_backdrop(canvas: _Canvas, cam: Camera, rng: np.random.Generator) -> None:
    """Distant skyline or tree line across the end of the street (sometimes open sky)."""
    if rng.random() < 0.2:
        return
    z = rng.uniform(60.0, 250.0)
    trees = rng.random() < 0.3
    x = -1.6 * z
    while x < 1.6 * z:
        width = rng.uniform(0.05, 0.25) * z
        top = rng.uniform(4, 12) if trees else rng.uniform(5, 40)
        rgb = _jitter(rng, [70, 95, 60] if trees else [150, 140, 130], 25)
        pid = canvas.part(TREE if trees else BUILDING, rgb, coarse=0.1, fine=0.06, depth=z)
        canvas.quad(cam, pid, [(x, 0, z), (x + width, 0, z), (x + width, top, z), (x, top, z)])
        x += width


# ---------------------------------------------------------------- ground


ROAD_COLOURS = ([92, 92, 96], [70, 70, 74], [110, 106, 100], [82, 84, 92])
WALK_COLOURS = ([160, 158, 152], [150, 100, 85], [178, 168, 140], [120, 120, 124], [190, 190, 185])
GRASS_COLOURS = ([80, 120, 50], [110, 125, 60], [95, 105, 70])


def _ground_strip(
    canvas: _Canvas, cam: Camera, pid: int, x0: float, x1: float, z0: float = 0.3, z1: float = Z_FAR
) -> None:
    canvas.quad(cam, pid, [(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)])


def _draw_ground(canvas: _Canvas, cam: Camera, rng: np.random.Generator, sides) -> None:
    """Road, curbs, sidewalks, verges and whatever lies beyond, all on the plane y = 0."""
    road_rgb = _jitter(rng, _pick(rng, ROAD_COLOURS), 8)
    road_tex = (rng.uniform(0.02, 0.08), rng.uniform(0.04, 0.12))
    confusable = rng.random() < 0.3  # sidewalk paved like the road
    if confusable:
        walk_rgb, walk_tex = _shade(road_rgb, rng.uniform(0.95, 1.12)), road_tex
    else:
        walk_rgb = _jitter(rng, _pick(rng, WALK_COLOURS), 10)
        walk_tex = (rng.uniform(0.03, 0.12), rng.uniform(0.03, 0.1))
    grass_rgb = _jitter(rng, _pick(rng, GRASS_COLOURS), 12)
    for side in sides:
        beyond = TREE if side.kind == "park" else PAVEMENT
        far = canvas.part(beyond, grass_rgb if beyond == TREE else walk_rgb, 0.15, 0.1, ground=True)
        _ground_strip(canvas, cam, far, side.x(side.outer), side.x(400.0))
        if side.verge:
            grass = canvas.part(TREE, _jitter(rng, grass_rgb, 6), 0.15, 0.12, ground=True)
            _ground_strip(canvas, cam, grass, side.x(side.curb + side.walk), side.x(side.outer))
        if side.walk:
            _draw_sidewalk(canvas, cam, rng, side, walk_rgb, walk_tex, confusable)
    road = canvas.part(ROAD, road_rgb, *road_tex, ground=True)
    _ground_strip(canvas, cam, road, sides[0].x(sides[0].curb), sides[1].x(sides[1].curb))
    _draw_road_details(canvas, cam, rng, sides, road_rgb, road_tex)


def _draw_sidewalk(canvas, cam, rng, side: _Side, rgb, tex, confusable: bool) -> None:
    walk = canvas.part(PAVEMENT, _jitter(rng, rgb, 4), *tex, ground=True)
    _ground_strip(canvas, cam, walk, side.x(side.curb), side.x(side.curb + side.walk))
    if not confusable:
        curb = canvas.part(PAVEMENT, _shade(rgb, rng.uniform(1.05, 1.3)), 0.05, 0.05, ground=True)
        _ground_strip(canvas, cam, curb, side.x(side.curb), side.x(side.curb + 0.25))
    if not confusable and rng.random() < 0.5:  # paving-slab joints, up to 25 m away
        joint = canvas.part(PAVEMENT, _shade(rgb, 0.75), 0.05, 0.05, ground=True)
        step = rng.uniform(0.6, 1.5)
        for z in np.arange(rng.uniform(0.5, 1.5), 25.0, step):
            if cam.depth(z) >= NEAR:
                canvas.line(
                    joint,
                    [
                        cam.uv(side.x(side.curb + 0.25), 0, z),
                        cam.uv(side.x(side.curb + side.walk), 0, z),
                    ],
                )


def _draw_road_details(canvas, cam, rng, sides, road_rgb, road_tex) -> None:
    """Repair patches, lane markings and sometimes a crossing (all labelled road)."""
    left, right = sides[0].x(sides[0].curb), sides[1].x(sides[1].curb)
    for _ in range(int(rng.integers(0, 4))):
        patch = canvas.part(ROAD, _shade(road_rgb, rng.uniform(0.75, 1.2)), *road_tex, ground=True)
        x0 = rng.uniform(left, right - 1)
        z0 = rng.uniform(2, 60)
        _ground_strip(canvas, cam, patch, x0, x0 + rng.uniform(0.5, 4), z0, z0 + rng.uniform(1, 8))
    paint = canvas.part(ROAD, _jitter(rng, [215, 215, 205], 15), 0.08, 0.1, ground=True)
    lanes = max(1, int(round((right - left) / 3.3)))
    for k in range(1, lanes):
        x = left + k * (right - left) / lanes
        period, dash = rng.uniform(6, 12), rng.uniform(2, 4)
        for z in np.arange(rng.uniform(0.5, period), 200.0, period):
            _ground_strip(canvas, cam, paint, x - 0.07, x + 0.07, z, z + dash)
    if rng.random() < 0.5:
        for x in (left + 0.3, right - 0.45):
            _ground_strip(canvas, cam, paint, x, x + 0.15, 0.5, 400.0)
    if rng.random() < 0.15:
        z0 = rng.uniform(5, 30)
        for x in np.arange(left + 0.5, right - 0.5, 1.0):
            _ground_strip(canvas, cam, paint, x, x + 0.5, z0, z0 + 3.0)


def _shadow_mask(cam: Camera, rng: np.random.Generator, sides, h: int, w: int) -> np.ndarray:
    """Soft shadows cast across the ground [H, W] in 0..1 (applied to ground pixels only)."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    left, right = sides[0].x(sides[0].outer + 50), sides[1].x(sides[1].outer + 50)
    shadows: list[list[Vec3]] = []
    if rng.random() < 0.5:  # a facade's shadow reaching into the road
        side = sides[int(rng.integers(2))]
        near, far = side.x(rng.uniform(0, 8)), side.x(rng.uniform(0, 8))
        edge = side.x(side.outer + 50)
        shadows.append([(edge, 0, 0.3), (near, 0, 0.3), (far, 0, 300), (edge, 0, 300)])
    for _ in range(int(rng.integers(0, 5))):  # bands from trees, poles and buildings
        z0, depth, skew = rng.uniform(1.5, 50), rng.uniform(0.4, 5), rng.uniform(-3, 3)
        shadows.append(
            [
                (left, 0, z0),
                (right, 0, max(0.3, z0 + skew)),
                (right, 0, max(0.4, z0 + skew + depth)),
                (left, 0, z0 + depth),
            ]
        )
    for corners in shadows:
        points = cam.outline(corners)
        if len(points) >= 3:
            draw.polygon(points, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(radius=1.0 * cam.scale))
    return np.asarray(mask, dtype=np.float32) / 255.0


# ---------------------------------------------------------------- facades, fences, hedges


FACADE_COLOURS = (
    [170, 150, 125],
    [140, 80, 60],
    [200, 195, 180],
    [120, 120, 125],
    [180, 170, 150],
    [150, 130, 100],
    [95, 90, 90],
    [210, 200, 170],
    [130, 140, 150],
)


def _draw_facades(canvas: _Canvas, cam: Camera, rng: np.random.Generator, side: _Side) -> None:
    """Row of buildings on the plane x = side.outer, from the camera to the end of the street."""
    x, z, end = side.x(side.outer), rng.uniform(0.3, 1.0), rng.uniform(25, 150)
    while z < end:
        length = rng.uniform(6, 25)
        if rng.random() < 0.12:  # alley: sky and the backdrop show through
            z += rng.uniform(2, 6)
            continue
        _draw_building(canvas, cam, rng, x, z, min(z + length, end))
        z += length


def _draw_building(canvas, cam, rng, x: float, z0: float, z1: float) -> None:
    height = rng.uniform(5, 30) if rng.random() < 0.7 else rng.uniform(3, 9)
    depth = (z0 + z1) / 2
    wall_rgb = _jitter(rng, _pick(rng, FACADE_COLOURS), 18)
    wall = canvas.part(BUILDING, wall_rgb, rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.1), depth)
    canvas.quad(cam, wall, [(x, 0, z0), (x, height, z0), (x, height, z1), (x, 0, z1)])
    if rng.random() < 0.5:  # cornice
        trim = canvas.part(BUILDING, _shade(wall_rgb, rng.uniform(0.6, 1.3)), 0.05, 0.05, depth)
        top = height - rng.uniform(0.3, 0.8)
        canvas.quad(cam, trim, [(x, top, z0), (x, height, z0), (x, height, z1), (x, top, z1)])
    _draw_windows(canvas, cam, rng, x, z0, z1, height, depth)


def _draw_windows(canvas, cam, rng, x, z0, z1, height, depth) -> None:
    glass = canvas.part(BUILDING, _jitter(rng, [55, 65, 80], 15), 0.15, 0.05, depth)
    shine = canvas.part(BUILDING, _jitter(rng, [150, 170, 190], 20), 0.1, 0.05, depth, glow=True)
    floor, spacing = rng.uniform(2.8, 3.8), rng.uniform(1.8, 4.0)
    win_w, win_h = spacing * rng.uniform(0.35, 0.7), floor * rng.uniform(0.4, 0.65)
    if rng.random() < 0.4:  # shop front
        canvas.quad(
            cam,
            glass,
            [(x, 0.4, z0 + 0.3), (x, 2.6, z0 + 0.3), (x, 2.6, z1 - 0.3), (x, 0.4, z1 - 0.3)],
        )
    columns = np.arange(z0 + rng.uniform(0.3, spacing), z1 - win_w, spacing)
    rows = np.arange(floor + 0.8, height - win_h - 0.3, floor)
    lit = rng.random((columns.size, rows.size)) < 0.15  # drawn whole, whatever the camera sees
    for zc, lit_column in zip(columns, lit, strict=True):
        if 0 < cam.px(win_h, zc) < 1.0:  # this column and the farther ones are under a pixel
            break
        for y, shines in zip(rows, lit_column, strict=True):
            pid = shine if shines else glass
            canvas.quad(
                cam,
                pid,
                [(x, y, zc), (x, y + win_h, zc), (x, y + win_h, zc + win_w), (x, y, zc + win_w)],
            )


def _draw_fence(canvas: _Canvas, cam: Camera, rng: np.random.Generator, side: _Side) -> None:
    """Slatted fence or railing along the outer edge: thin, and partly see-through."""
    x = side.x(side.outer - 0.2)
    z0 = rng.uniform(0.8, 20)
    z1, top = z0 + rng.uniform(5, 60), rng.uniform(0.9, 2.2)
    rgb = _jitter(rng, _pick(rng, ([90, 90, 95], [120, 95, 70], [60, 80, 60], [170, 170, 165])))
    pid = canvas.part(FENCE, rgb, 0.08, 0.08, depth=z0)
    if rng.random() < 0.5:  # slats
        step, slat = rng.uniform(0.12, 0.35), rng.uniform(0.04, 0.1)
        rails = (top - 0.15, 0.15)
    else:  # railing: posts and horizontal rails
        step, slat = rng.uniform(1.2, 3.0), rng.uniform(0.05, 0.1)
        rails = tuple(np.linspace(0.25, top, int(rng.integers(2, 4))))
    for z in np.arange(z0, z1, step):
        canvas.quad(cam, pid, [(x, 0, z), (x, top, z), (x, top, z + slat), (x, 0, z + slat)])
    for y in rails:
        canvas.quad(cam, pid, [(x, y, z0), (x, y + 0.07, z0), (x, y + 0.07, z1), (x, y, z1)])


def _draw_hedge(canvas: _Canvas, cam: Camera, rng: np.random.Generator, side: _Side) -> None:
    x = side.x(side.outer - 0.3)
    z0, z1 = rng.uniform(0.8, 15), rng.uniform(20, 80)
    pid = canvas.part(TREE, _jitter(rng, [60, 95, 45], 15), 0.2, 0.25, depth=z0)
    zs = np.linspace(z0, z1, 24)
    tops = rng.uniform(0.8, 1.6) + rng.normal(0, 0.12, zs.size)
    top = [(x, t, z) for z, t in zip(zs, tops, strict=True)]
    canvas.quad(cam, pid, [(x, 0, z0), *top, (x, 0, z1)])


# ---------------------------------------------------------------- street objects


def _draw_tree(canvas: _Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float):
    """Trunk and an irregular crown of leaf clusters (gaps show what is behind)."""
    if cam.depth(z) < NEAR_OBJECT:
        return
    trunk_h, trunk_w, crown = rng.uniform(1.5, 3.5), rng.uniform(0.15, 0.4), rng.uniform(1.4, 4.0)
    trunk = canvas.part(TREE, _jitter(rng, [75, 60, 45], 12), 0.1, 0.1, depth=z)
    half = trunk_w / 2
    canvas.quad(
        cam,
        trunk,
        [
            (x - half, 0, z),
            (x - half, trunk_h + crown * 0.5, z),
            (x + half, trunk_h + crown * 0.5, z),
            (x + half, 0, z),
        ],
    )
    green = _jitter(rng, _pick(rng, ([55, 90, 40], [70, 105, 45], [90, 110, 50], [120, 95, 45])))
    shades = [canvas.part(TREE, _shade(green, k), 0.2, 0.3, depth=z) for k in (0.6, 0.8, 1.0, 1.2)]
    centre_y, stretch, n = trunk_h + crown, rng.uniform(0.8, 1.4), int(rng.integers(18, 40))
    angle, radius = rng.uniform(0, 2 * np.pi, n), crown * np.sqrt(rng.random(n))
    dx, dy = radius * np.cos(angle), radius * np.sin(angle) * stretch
    ru = cam.px(crown * rng.uniform(0.2, 0.45, n), z)  # cluster radii in pixels
    rv = ru * rng.uniform(0.7, 1.0, n)
    shade = np.clip((dy / crown + 1) * 1.5 + rng.normal(0, 0.6, n), 0, 3).astype(int)
    u, v = cam.uv(x + dx, centre_y + dy, z)  # top clusters are lit, low ones in shadow
    for k in range(n):
        canvas.ellipse(shades[shade[k]], u[k], v[k], ru[k], rv[k])


def _pole_column(canvas, cam, pid, x, z, top: float, metres: float) -> tuple[float, float]:
    """Vertical pole 1..3 px wide (at 180 px height) from the ground up to `top` metres."""
    limit = max(1, int(round(POLE_MAX_PX * cam.scale)))
    width = int(np.clip(round(cam.px(metres, z)), 1, limit))
    u, v_ground = cam.uv(x, 0, z)
    _, v_top = cam.uv(x, top, z)
    left = int(round(u - width / 2))
    canvas.draw.rectangle([left, v_top, left + width - 1, v_ground], fill=pid)
    return u, v_top


def _draw_sign(
    canvas: _Canvas, rng: np.random.Generator, u: float, v: float, size: float, z: float
) -> None:
    """A small sign or traffic light centred at (u, v), `size` px tall, at world depth z."""
    r = size / 2
    kind = int(rng.integers(5))
    rim_rgb = _pick(
        rng, ([200, 30, 30], [30, 70, 170], [230, 200, 30], [30, 120, 60], [225, 225, 225])
    )
    rim = canvas.part(SIGN, rim_rgb, 0.05, 0.05, z)
    if kind == 0:
        canvas.ellipse(rim, u, v, r, r)
    elif kind == 1:
        canvas.poly(rim, [(u - r, v + r * 0.8), (u + r, v + r * 0.8), (u, v - r)])
    elif kind == 2:
        canvas.poly(rim, [(u, v - r), (u + r, v), (u, v + r), (u - r, v)])
    elif kind == 3:
        canvas.draw.rectangle([u - r, v - r * 0.55, u + r, v + r * 0.55], fill=rim)
    else:  # traffic light: dark box, one lit lamp
        box = canvas.part(SIGN, _jitter(rng, [35, 35, 35], 8), 0.05, 0.05, z)
        canvas.draw.rectangle([u - r * 0.4, v - r, u + r * 0.4, v + r], fill=box)
        lamp_rgb = _pick(rng, ([240, 40, 30], [250, 190, 40], [60, 230, 120]))
        lamp = canvas.part(SIGN, lamp_rgb, depth=z, glow=True)
        ly = v + r * (float(rng.integers(3)) - 1) * 0.6
        canvas.ellipse(lamp, u, ly, r * 0.3, r * 0.3)
        return
    face_rgb = _jitter(rng, [235, 235, 230], 8)
    if size >= 5:  # white face inside the coloured rim
        canvas.ellipse(canvas.part(SIGN, face_rgb, 0.05, 0.05, z), u, v, r * 0.55, r * 0.55)


def _draw_pole(
    canvas: _Canvas, cam: Camera, rng: np.random.Generator, side: _Side, x: float, z: float
) -> None:
    """Lamp post, sign pole, traffic-light pole or utility pole."""
    if cam.depth(z) < NEAR_OBJECT:
        return
    kind = _pick(rng, ("lamp", "sign", "sign", "light", "utility"))
    top = {"lamp": (5, 9), "sign": (2.2, 3.5), "light": (3, 4.5), "utility": (7, 10)}[kind]
    top = rng.uniform(*top)
    metal = _pick(rng, ([110, 110, 110], [60, 65, 60], [150, 150, 140]))
    pid = canvas.part(POLE, _jitter(rng, metal, 15), 0.05, 0.08, z)
    u, v_top = _pole_column(canvas, cam, pid, x, z, top, rng.uniform(0.08, 0.3))
    sign_cap = SIGN_MAX_PX * cam.scale
    if kind == "lamp":  # arm reaching over the road, 1 px thick
        reach = x - side.sign * rng.uniform(0.8, 2.5)
        end = cam.uv(reach, top + 0.2, z)
        canvas.line(pid, [(u, v_top), end])
        canvas.ellipse(pid, end[0], end[1] + 1, min(cam.px(0.3, z), sign_cap / 3), 1)
    elif kind in ("sign", "light"):
        size = float(np.clip(cam.px(rng.uniform(0.5, 1.0), z), 2, sign_cap))
        _draw_sign(canvas, rng, u, v_top, size, z)
        if kind == "sign" and rng.random() < 0.3:
            _draw_sign(canvas, rng, u, v_top + size * 1.5, size * 0.8, z)


def _box(
    canvas: _Canvas,
    cam: Camera,
    ids: tuple[int, int, int],
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    z0: float,
    z1: float,
) -> None:
    """Visible faces of an axis-aligned box (ids: near face, side face, top face)."""
    front, side, top = ids
    if y1 < cam.height:
        canvas.quad(cam, top, [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)])
    if x0 > 0 or x1 < 0:  # the side facing the camera
        xs = x0 if x0 > 0 else x1
        canvas.quad(cam, side, [(xs, y0, z0), (xs, y1, z0), (xs, y1, z1), (xs, y0, z1)])
    canvas.quad(cam, front, [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)])


CAR_COLOURS = (
    [230, 230, 230],
    [30, 30, 35],
    [160, 165, 170],
    [110, 110, 115],
    [170, 30, 30],
    [40, 60, 140],
    [40, 80, 60],
    [220, 190, 60],
    [120, 90, 60],
)


@dataclass(frozen=True)
class _CarShape:
    width: float
    height: float
    length: float
    bus: bool = False


def _random_car_shape(rng: np.random.Generator) -> _CarShape:
    if rng.random() < 0.08:  # bus, truck or van (CamVid labels them Car)
        return _CarShape(2.5, rng.uniform(2.6, 3.5), rng.uniform(6, 12), bus=True)
    return _CarShape(rng.uniform(1.6, 1.95), rng.uniform(1.35, 1.8), rng.uniform(3.8, 4.9))


def _draw_car(
    canvas: _Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, shape: _CarShape
) -> None:
    """Car, van or bus seen from behind or in front: body, cabin, glass, tyres, lights."""
    x0, x1, length, h = x - shape.width / 2, x + shape.width / 2, shape.length, shape.height
    paint = _jitter(rng, _pick(rng, CAR_COLOURS), 10)
    body = tuple(canvas.part(CAR, _shade(paint, k), 0.05, 0.04, z) for k in (0.9, 0.72, 1.12))
    glass = canvas.part(CAR, _jitter(rng, [45, 52, 62], 12), 0.15, 0.05, z)
    tyre = canvas.part(CAR, _jitter(rng, [25, 25, 25], 5), 0.05, 0.05, z)
    for wx in (x0 + 0.05, x1 - 0.35):  # tyres under the bumper
        canvas.quad(
            cam,
            tyre,
            [
                (wx, 0, z + 0.6),
                (wx + 0.3, 0, z + 0.6),
                (wx + 0.3, 0.4, z + 0.6),
                (wx, 0.4, z + 0.6),
            ],
        )
    belt = h * 0.88 if shape.bus else h * rng.uniform(0.5, 0.6)
    _box(canvas, cam, body, x0, x1, 0.25, belt, z, z + length)
    if shape.bus:
        band = (x0, h * 0.55, z), (x1, h * 0.55, z), (x1, h * 0.82, z), (x0, h * 0.82, z)
        canvas.quad(cam, glass, list(band))
    else:
        inset = 0.12
        _box(
            canvas,
            cam,
            (glass, glass, body[2]),
            x0 + inset,
            x1 - inset,
            belt,
            h,
            z + 0.22 * length,
            z + 0.75 * length,
        )
    _draw_car_wheels(canvas, cam, tyre, x0, x1, z, length)
    lamp = canvas.part(CAR, _pick(rng, ([200, 30, 30], [235, 230, 200])), 0.05, 0.05, z, glow=True)
    for lx in (x0 + 0.1, x1 - 0.4):
        ly = belt - 0.25
        canvas.quad(
            cam,
            lamp,
            [(lx, ly, z), (lx + 0.3, ly, z), (lx + 0.3, ly + 0.12, z), (lx, ly + 0.12, z)],
        )


def _draw_car_wheels(canvas, cam, tyre, x0, x1, z, length) -> None:
    """Wheels on the side of the car that faces the camera."""
    if not (x0 > 0 or x1 < 0):
        return
    xs = x0 if x0 > 0 else x1
    for zc in (z + 0.8, z + length - 0.8):
        if cam.depth(zc) < NEAR_OBJECT:
            continue
        u, v = cam.uv(xs, 0.33, zc)
        ru = max(0.6, cam.f * abs(xs) * 0.33 / cam.depth(zc) ** 2)  # foreshortened
        canvas.ellipse(tyre, u, v, ru, cam.px(0.33, zc))


SKIN = ([230, 190, 160], [200, 150, 110], [150, 100, 70], [100, 65, 45], [240, 205, 180])
TROUSERS = ([40, 45, 70], [30, 30, 32], [110, 110, 115], [180, 165, 130], [70, 60, 50])


@dataclass(frozen=True)
class _Pose:
    """Where a figure's joints are, in metres (x across, y up) at depth z."""

    hip: tuple[float, float]
    shoulder: tuple[float, float]
    feet: tuple[tuple[float, float], ...]
    hands: tuple[tuple[float, float], ...]
    half_width: float  # of the shoulders; hips are a bit narrower


def _draw_figure(
    canvas: _Canvas,
    cam: Camera,
    rng: np.random.Generator,
    cls: int,
    z: float,
    pose: _Pose,
    height: float,
) -> None:
    """A person (pedestrian, or the rider of a bicycle): legs, torso, arms, head."""
    shirt = canvas.part(cls, rng.uniform(15, 235, 3), 0.1, 0.08, z)
    legs = canvas.part(cls, _jitter(rng, _pick(rng, TROUSERS), 15), 0.1, 0.08, z)
    skin = canvas.part(cls, _jitter(rng, _pick(rng, SKIN), 10), 0.05, 0.05, z)
    hair = canvas.part(cls, _jitter(rng, [45, 35, 25], 20), 0.05, 0.05, z)
    (hx, hy), (sx, sy), w = pose.hip, pose.shoulder, pose.half_width
    for foot, side in zip(pose.feet, (-1, 1), strict=True):
        hip_point = cam.uv(hx + side * w * 0.4, hy, z)
        canvas.line(legs, [hip_point, cam.uv(*foot, z)], round(cam.px(0.14, z)))
    canvas.quad(
        cam, shirt, [(hx - w * 0.8, hy, z), (hx + w * 0.8, hy, z), (sx + w, sy, z), (sx - w, sy, z)]
    )
    for hand, side in zip(pose.hands, (-1, 1), strict=True):
        canvas.line(
            shirt,
            [cam.uv(sx + side * w * 0.9, sy - 0.04, z), cam.uv(*hand, z)],
            round(cam.px(0.08, z)),
        )
    u, v = cam.uv(sx, sy + 0.1 * height, z)
    canvas.ellipse(hair, u, v - cam.px(0.02, z), cam.px(0.1, z), cam.px(0.12, z))
    canvas.ellipse(skin, u, v + cam.px(0.02, z), cam.px(0.09, z), cam.px(0.1, z))


def _draw_pedestrian(canvas, cam, rng, x: float, z: float, crossing: bool) -> None:
    if cam.depth(z) < NEAR_OBJECT:
        return
    height = rng.uniform(1.45, 1.95) if rng.random() < 0.9 else rng.uniform(1.0, 1.4)
    hip, shoulder = 0.5 * height, 0.81 * height
    if crossing:  # walking across the view: legs and arms swing in x
        stride = rng.uniform(-0.3, 0.3)
        feet = ((x - stride, 0.0), (x + stride, 0.0))
        hands = ((x + 0.8 * stride, 0.45 * height), (x - 0.8 * stride, 0.45 * height))
        width = 0.13
    else:
        feet = ((x - 0.1, 0.0), (x + 0.1, 0.0))
        hands = ((x - 0.24, 0.46 * height), (x + 0.24, 0.46 * height))
        width = rng.uniform(0.17, 0.23)
    pose = _Pose((x, hip), (x, shoulder), feet, hands, width)
    _draw_figure(canvas, cam, rng, PEDESTRIAN, z, pose, height)


def _draw_bicyclist(canvas, cam, rng, x: float, z: float, crossing: bool) -> None:
    """Bicycle and rider, one class (like CamVid); riders dress like pedestrians."""
    if cam.depth(z) < NEAR_OBJECT:
        return
    height = rng.uniform(1.55, 1.9)
    frame = canvas.part(BICYCLIST, rng.uniform(20, 220, 3), 0.05, 0.05, z)
    tyre = canvas.part(BICYCLIST, _jitter(rng, [30, 30, 30], 6), 0.05, 0.05, z)
    thin = max(1, round(cam.px(0.05, z)))
    if crossing:  # side view: two wheels and a frame
        d = 1 if rng.random() < 0.5 else -1
        rear, front = (x - 0.55 * d, 0.34), (x + 0.55 * d, 0.34)
        seat, bar, crank = (x - 0.15 * d, 0.95), (x + 0.42 * d, 1.05), (x, 0.32)
        for cx_, cy_ in (rear, front):
            u, v = cam.uv(cx_, cy_, z)
            r = cam.px(0.34, z)
            canvas.draw.ellipse([u - r, v - r, u + r, v + r], outline=tyre, width=thin)
        chain = [rear, seat, crank, rear, crank, bar, front, bar, seat]
        canvas.line(frame, [cam.uv(px, py, z) for px, py in chain], thin)
        pose = _Pose(
            seat,
            (x + 0.2 * d, 0.95 + 0.3 * height),
            ((x + 0.12, 0.2), (x - 0.1, 0.48)),
            (bar, bar),
            0.12,
        )
    else:  # seen from behind or in front: wheels are thin vertical strips
        for zz in (z + 1.1, z):
            canvas.quad(
                cam,
                tyre,
                [(x - 0.03, 0, zz), (x + 0.03, 0, zz), (x + 0.03, 0.68, zz), (x - 0.03, 0.68, zz)],
            )
        canvas.line(frame, [cam.uv(x - 0.3, 1.05, z + 0.9), cam.uv(x + 0.3, 1.05, z + 0.9)], thin)
        pose = _Pose(
            (x, 0.95),
            (x, 0.95 + 0.3 * height),
            ((x - 0.15, 0.3), (x + 0.15, 0.55)),
            ((x - 0.28, 1.05), (x + 0.28, 1.05)),
            rng.uniform(0.17, 0.22),
        )
    _draw_figure(canvas, cam, rng, BICYCLIST, z, pose, height)


def _draw_bin(canvas, cam, rng, x: float, z: float) -> None:
    """Unlabelled clutter (bins, boxes): void in the label, like CamVid's unlabelled objects."""
    rgb = _jitter(rng, _pick(rng, ([40, 70, 45], [90, 90, 90], [140, 110, 60])), 15)
    ids = tuple(canvas.part(VOID, _shade(rgb, k), 0.05, 0.05, z) for k in (1.0, 0.8, 1.15))
    w, h = rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.2)
    _box(canvas, cam, ids, x - w / 2, x + w / 2, 0, h, z, z + w)


# ---------------------------------------------------------------- placing objects


Draw = tuple[float, Callable[[], None]]  # (depth, draw it)


class _Footprints:
    """Ground rectangles already taken, so cars and people do not overlap in 3-D."""

    def __init__(self) -> None:
        self.rects: list[tuple[float, float, float, float]] = []

    def take(self, x0: float, x1: float, z0: float, z1: float) -> bool:
        for a0, a1, b0, b1 in self.rects:
            if x0 < a1 and a0 < x1 and z0 < b1 and b0 < z1:
                return False
        self.rects.append((x0, x1, z0, z1))
        return True


def _place_side(canvas, cam, rng, side: _Side, taken: _Footprints) -> tuple[list, list]:
    """Trees, poles, parked cars, pedestrians and clutter along one side of the street."""
    beyond: list[Draw] = []
    street: list[Draw] = []
    if side.kind == "park":
        for _ in range(int(rng.integers(3, 11))):
            x, z = side.x(side.outer + rng.uniform(1, 15)), rng.uniform(3, 150)
            beyond.append((z, partial(_draw_tree, canvas, cam, _child(rng), x, z)))
    walk_mid = side.curb + max(side.walk, side.verge) * rng.uniform(0.3, 0.8)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 8))):
            x, z = side.x(walk_mid), rng.uniform(3, 120)
            street.append((z, partial(_draw_tree, canvas, cam, _child(rng), x, z)))
    for _ in range(int(rng.integers(1, 6))):
        x, z = side.x(side.curb + rng.uniform(0.2, 0.6)), rng.uniform(2.5, 100)
        street.append((z, partial(_draw_pole, canvas, cam, _child(rng), side, x, z)))
    if rng.random() < 0.5:
        street += _park_cars(canvas, cam, rng, side, taken)
    if side.walk:
        street += _place_people(canvas, cam, rng, side, taken)
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        reach = max(0.5, side.walk + side.verge)
        x, z = side.x(side.curb + rng.uniform(0.4, reach)), rng.uniform(6, 40)
        street.append((z, partial(_draw_bin, canvas, cam, _child(rng), x, z)))
    return beyond, street


def _park_cars(canvas, cam, rng, side: _Side, taken: _Footprints) -> list[Draw]:
    cars = []
    z, end = rng.uniform(-2, 8), rng.uniform(25, 80)
    while z < end:
        shape = _random_car_shape(rng)
        x = side.x(side.curb - shape.width / 2 - rng.uniform(0.1, 0.4))
        if z > 1.0 and taken.take(x - shape.width / 2, x + shape.width / 2, z, z + shape.length):
            cars.append((z, partial(_draw_car, canvas, cam, _child(rng), x, z, shape)))
        z += shape.length + rng.uniform(0.5, 10)
    return cars


def _place_people(canvas, cam, rng, side: _Side, taken: _Footprints) -> list[Draw]:
    people = []
    count = int(rng.choice([0, 1, 1, 2, 2, 3, 4, 6, 8]))
    for _ in range(count):
        x = side.x(side.curb + rng.uniform(0.3, side.walk))
        z = rng.uniform(2.5, 50)
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):  # sometimes a group
            xi, zi = x + rng.normal(0, 0.4), z + rng.uniform(0, 1.5)
            if taken.take(xi - 0.25, xi + 0.25, zi, zi + 0.3):
                draw = partial(
                    _draw_pedestrian, canvas, cam, _child(rng), xi, zi, rng.random() < 0.4
                )
                people.append((zi, draw))
    return people


def _place_road_users(canvas, cam, rng, sides, taken: _Footprints, drive: _Drive) -> list[Draw]:
    """Moving cars, people crossing and the rare bicyclist."""
    left, right = sides[0].x(sides[0].curb), sides[1].x(sides[1].curb)
    users = []
    traffic = drive.speed * rng.uniform(0.7, 1.3)  # metres per frame, all cars alike
    for _ in range(int(rng.integers(0, 5))):
        shape, z = _random_car_shape(rng), rng.uniform(5, 120)
        x = rng.uniform(left + shape.width / 2 + 0.3, right - shape.width / 2 - 0.3)
        swept = z + shape.length + traffic * (drive.frames - 1)  # its road over the drive
        if taken.take(x - shape.width / 2 - 0.3, x + shape.width / 2 + 0.3, z, swept):
            now = z + traffic * drive.frame
            users.append((now, partial(_draw_car, canvas, cam, _child(rng), x, now, shape)))
    for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):
        x, z = rng.uniform(left, right), rng.uniform(4, 40)
        if taken.take(x - 0.3, x + 0.3, z, z + 0.3):
            users.append((z, partial(_draw_pedestrian, canvas, cam, _child(rng), x, z, True)))
    if rng.random() < BICYCLIST_RATE:
        for _ in range(1 if rng.random() < 0.8 else 2):
            side = sides[int(rng.integers(2))]
            x, z = side.x(side.curb - rng.uniform(0.6, 2.0)), rng.uniform(3.0, 22)
            crossing = rng.random() < 0.3
            reach = 0.7 if crossing else 0.35
            if taken.take(x - reach, x + reach, z, z + 1.2):
                users.append(
                    (z, partial(_draw_bicyclist, canvas, cam, _child(rng), x, z, crossing))
                )
    return users


def _draw_in_depth_order(draws: list[Draw]) -> None:
    for _, draw in sorted(draws, key=lambda item: -item[0]):
        draw()


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


# ---------------------------------------------------------------- conditions


CLEAR = "clear"


class Condition:
    """Clear day, the common condition. A rare one changes the camera or the composed frame."""

    rate = 0.0  # share of drives (so about that share of frames) filmed in this condition
    sunny = True  # hard shadows fall on the ground

    def camera(self, cam: Camera, rng: np.random.Generator) -> Camera:
        return cam

    def apply(
        self, layers: _Layers, cam: Camera, rng: np.random.Generator, frame_rng: np.random.Generator
    ) -> _Layers:
        """Change the frame's colours, or warp every layer alike, so labels stay exact. `rng`
        is the drive's (the same draws in every frame), `frame_rng` the frame's own."""
        return layers


class Night(Condition):
    """Dark blue ambient light, headlights on the near street; lamps and lit windows glow."""

    rate = 0.03
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
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

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
        veil = rng.uniform(170, 215) * np.float32([1.0, 1.01, 1.03])
        return replace(layers, rgb=_haze(layers, rng.uniform(10, 35), veil))


class Rain(Condition):
    """Dull grey light, a dark wet road with puddles that mirror the sky, rain streaks."""

    rate = 0.04
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
        h, w = layers.label.shape
        grey = rng.uniform(120, 160)
        rgb = _haze(layers, rng.uniform(60, 150), grey)
        rgb = _desaturate(rgb, 0.5) * rng.uniform(0.6, 0.8)
        rgb[layers.ground] *= 0.7
        puddles = _smooth_noise(rng, h, w, 8 * cam.scale) > rng.uniform(0.8, 1.3)
        puddles &= layers.ground
        rgb[puddles] = 0.6 * rgb[puddles] + 0.4 * grey
        slant = rng.uniform(-0.4, 0.4)
        streaks = _speckle(frame_rng, h, w, int(0.004 * h * w), cam.scale, slant)
        return replace(layers, rgb=_over(rgb, streaks * 0.35, 210.0))


class Snow(Condition):
    """Snow on the ground, a pale sky, low contrast and flakes in the air."""

    rate = 0.02
    sunny = False

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
        h, w = layers.label.shape
        white = np.float32([228, 232, 238])
        rgb = _haze(layers, rng.uniform(40, 120), 0.9 * white)
        patches = _smooth_noise(rng, h, w, 6 * cam.scale)
        cover = np.clip(rng.uniform(0.6, 0.9) + 0.2 * patches, 0, 1) * layers.ground
        rgb = _over(rgb, cover, white)
        flakes = _speckle(frame_rng, h, w, int(0.005 * h * w), cam.scale, slant=None)
        return replace(layers, rgb=_over(rgb, flakes, white))


class Fisheye(Condition):
    """Another camera: wide angle, mounted low, rolled, with fisheye-like barrel distortion."""

    rate = 0.03

    def camera(self, cam: Camera, rng: np.random.Generator) -> Camera:
        return replace(cam, f=cam.f * rng.uniform(0.45, 0.65), height=rng.uniform(0.45, 0.9))

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
        roll = rng.choice([-1, 1]) * rng.uniform(0.08, 0.2)  # radians
        return layers.gather(*_fisheye_source(*layers.label.shape, roll, rng.uniform(0.2, 0.45)))


class Glare(Condition):
    """Overexposed through a dirty lens: washed-out highlights, a veil of stray light and
    smudges that stay put for the whole drive."""

    rate = 0.02

    def apply(self, layers, cam, rng, frame_rng) -> _Layers:
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


def _haze(layers: _Layers, visibility: float, colour) -> np.ndarray:
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


@dataclass(frozen=True)
class _Drive:
    """The camera's run down the street."""

    speed: float  # metres per frame
    frame: int
    frames: int

    @property
    def reach(self) -> float:
        """Metres from the first frame's camera to the last's."""
        return self.speed * (self.frames - 1)


def _frame_camera(cam: Camera, frame_rng: np.random.Generator, z0: float) -> Camera:
    """The drive's camera `z0` metres on, with a little yaw and pitch jitter (a few pixels)."""
    yaw, pitch = frame_rng.normal(0, 0.012, 2)  # radians; shifts the principal point
    return replace(cam, z0=z0, cx=cam.cx + cam.f * yaw, cy=cam.cy + cam.f * pitch)


def _draw_street(
    canvas: _Canvas, cam: Camera, rng: np.random.Generator, drive: _Drive
) -> np.ndarray:
    """Draw the whole street back to front; return its shadows on the ground [H, W] 0..1."""
    sides = _random_sides(rng)
    _draw_ground(canvas, cam, rng, sides)
    shadow = _shadow_mask(cam, rng, sides, canvas.h, canvas.w)
    _draw_backdrop(canvas, cam, rng)
    for side in sides:
        if side.kind == "buildings":
            _draw_facades(canvas, cam, rng, side)
    taken = _Footprints()
    taken.take(-1.2, 1.2, -10.0, 6.0 + drive.reach)  # the ego lane ahead stays clear
    beyond, street = [], _place_road_users(canvas, cam, rng, sides, taken, drive)
    for side in sides:
        side_beyond, side_street = _place_side(canvas, cam, rng, side, taken)
        beyond, street = beyond + side_beyond, street + side_street
    _draw_in_depth_order(beyond)
    for side in sides:
        if rng.random() < (0.7 if side.kind == "park" else 0.45):
            (_draw_hedge if side.kind == "park" and rng.random() < 0.4 else _draw_fence)(
                canvas, cam, rng, side
            )
    _draw_in_depth_order(street)
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
    drive = _Drive(rng.uniform(0.5, 3.0), shot.frame, shot.frames)
    cam = condition.camera(_random_camera(rng, h, w), rng)
    cam = _frame_camera(cam, frame_rng, drive.speed * drive.frame)
    canvas = _Canvas(h, w)
    sky, horizon_rgb = _sky_field(rng, h, w, cam.cy, cam.scale)
    canvas.part(SKY, horizon_rgb)  # id 0, the background; coloured from the sky field
    shadow = _draw_street(canvas, cam, rng, drive)
    noise = (
        _smooth_noise(rng, h, w, 14 * cam.scale),
        0.6 * _smooth_noise(rng, h, w, 2.5 * cam.scale)
        + 0.5 * rng.standard_normal((h, w), dtype=np.float32),
    )
    layers = canvas.compose(cam, sky, horizon_rgb, rng.uniform(150, 900), noise)
    darken = rng.uniform(0.3, 0.6) * condition.sunny * shadow * layers.ground
    layers = replace(layers, rgb=layers.rgb * (1 - darken.astype(np.float32))[..., None])
    layers = condition.apply(layers, cam, rng, frame_rng)
    return _photometric(rng, frame_rng, layers.rgb, cam.scale), layers.label


# ---------------------------------------------------------------- writing a dataset


SPLITS = ("train", "val", "test")


def condition_rates(rare_scale: float = 1.0) -> dict[str, float]:
    """Share of drives filmed in each condition: rare ones at rate x rare_scale, clear the rest."""
    rare = {name: c.rate * rare_scale for name, c in CONDITIONS.items() if name != CLEAR}
    if rare_scale < 0 or sum(rare.values()) > 1:
        limit = 1 / sum(c.rate for c in CONDITIONS.values())
        raise ValueError(
            f"rare_scale must be in 0..{limit:.2f} (at {limit:.2f} no drive is "
            f"clear), got {rare_scale}"
        )
    return {CLEAR: 1 - sum(rare.values()), **rare}


def _assign_conditions(count: int, rates: dict[str, float], rng: np.random.Generator) -> list[str]:
    """A condition per drive, each on count x rate drives (rounded down or up), in random order."""
    rare = [name for name in rates if name != CLEAR]
    edges = np.cumsum([rates[name] for name in rare])
    spots = (np.arange(count) + rng.random()) / count  # evenly spaced quantiles, shifted at random
    names = [*rare, CLEAR]
    return [names[k] for k in rng.permutation(np.searchsorted(edges, spots, side="right"))]


def _split_counts(n: int, split: tuple[float, float, float]) -> dict[str, int]:
    total = float(sum(split))
    if len(split) != 3 or total <= 0 or min(split) < 0:
        raise ValueError(f"split must be three fractions (train, val, test) >= 0, got {split}")
    n_train, n_val = int(round(n * split[0] / total)), int(round(n * split[1] / total))
    n_val = min(n_val, n - n_train)
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def plan_streets(
    n: int,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    sequence_length: int = 5,
    seed: int = 0,
    rare_scale: float = 1.0,
) -> list[FrameTag]:
    """Tags of the `n` frames of a street set: each split is cut into drives of `sequence_length`
    frames (a split's last drive may be shorter), and each drive gets one condition."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
    counts = _split_counts(n, split)
    drives = [
        (name, min(sequence_length, counts[name] - start))
        for name in SPLITS
        for start in range(0, counts[name], sequence_length)
    ]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))  # not a drive's
    conditions = _assign_conditions(len(drives), condition_rates(rare_scale), rng)
    s_digits, f_digits = max(4, len(str(len(drives) - 1))), max(2, len(str(sequence_length - 1)))
    tags = []
    for sequence, ((name, length), condition) in enumerate(zip(drives, conditions, strict=True)):
        for frame in range(length):
            stem = f"s{sequence:0{s_digits}d}_f{frame:0{f_digits}d}"
            tags.append(
                FrameTag(
                    f"{name}/{stem}.png", name, stem, sequence, frame, condition, condition != CLEAR
                )
            )
    return tags


def _write_one(job: tuple[Path, int, tuple[int, int], FrameTag, int]) -> np.ndarray:
    """Render one frame of a drive (`frames` long), save it; return its label histogram [12]."""
    out_dir, seed, size, tag, frames = job
    shot = Shot(tag.frame, frames, tag.condition)
    image, label = render_scene(np.random.default_rng([seed, tag.sequence]), size, shot)
    Image.fromarray(image).save(out_dir / tag.image)
    Image.fromarray(label).save(out_dir / f"{tag.split}annot" / f"{tag.stem}.png")
    return np.bincount(label.ravel(), minlength=NUM_LABELS)


def write_streets(
    out_dir: Path,
    n: int,
    size: tuple[int, int] = (180, 240),
    seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    workers: int = 1,
    sequence_length: int = 5,
    rare_scale: float = 1.0,
) -> dict:
    """Write `n` frames of street drives in SegNet's CamVid layout, with `tags.jsonl` and
    `summary.json`; same arguments -> byte-identical files, whatever the number of workers.

    Returns the summary: images per split, drives, per-class pixel share, images containing each
    class, and per condition its configured rate and the frames it got.
    """
    tags = plan_streets(n, split, sequence_length, seed, rare_scale)
    out_dir = Path(out_dir)
    for name in SPLITS:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}annot").mkdir(parents=True, exist_ok=True)
    frames = Counter(tag.sequence for tag in tags)
    jobs = [(out_dir, seed, tuple(size), tag, frames[tag.sequence]) for tag in tags]
    if workers > 1:
        # spawn, not fork: a fork of a process whose torch/ONNX Runtime thread pools already run
        # can deadlock in the child (seen in the test suite).
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            hists = pool.map(_write_one, jobs, chunksize=max(1, n // (workers * 8)))
    else:
        hists = [_write_one(job) for job in jobs]
    for name in SPLITS:
        lines = [f"{t.image} {name}annot/{t.stem}.png\n" for t in tags if t.split == name]
        (out_dir / f"{name}.txt").write_text("".join(lines))
    write_tags(out_dir, tags)
    values = tuple(range(len(CAMVID_CLASSES)))
    classes = ClassTable(CAMVID_CLASSES, CAMVID_PALETTE, values, (VOID, IGNORE_INDEX))
    (out_dir / "classes.json").write_text(json.dumps(classes.to_dict(), indent=2) + "\n")
    summary = _summary(np.stack(hists), tags, size, seed, condition_rates(rare_scale))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(
    hists: np.ndarray, tags: list[FrameTag], size, seed: int, rates: dict[str, float]
) -> dict:
    """hists: [N, 12] pixel counts per image, in the order of `tags`."""
    total = hists.sum(0)
    share = total / total.sum()
    present = (hists > 0).sum(0)
    per_split = Counter(tag.split for tag in tags)
    per_condition = Counter(tag.condition for tag in tags)
    return {
        "n": len(tags),
        "size": list(size),
        "seed": seed,
        "splits": {name: per_split[name] for name in SPLITS},
        "sequences": len({tag.sequence for tag in tags}),
        "conditions": {
            name: {
                "rate": rate,
                "frames": per_condition[name],
                "share": per_condition[name] / len(tags),
            }
            for name, rate in rates.items()
        },
        "class_share": {name: float(share[k]) for k, name in enumerate(CAMVID_CLASSES)},
        "void_share": float(share[VOID]),
        "images_with": {name: int(present[k]) for k, name in enumerate(CAMVID_CLASSES)},
    }
