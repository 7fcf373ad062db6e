"""The street itself: its two sides, the sky and background, the ground (road, sidewalks,
markings, shadows), facades with windows, fences and hedges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .canvas import (
    BUILDING,
    FENCE,
    NEAR,
    PAVEMENT,
    REF_HEIGHT,
    ROAD,
    TREE,
    Z_FAR,
    Camera,
    Canvas,
    Vec3,
    jitter,
    pick,
    shaded,
    smooth_noise,
)

# ---------------------------------------------------------------- the street


@dataclass(frozen=True)
class Side:
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


def random_camera(rng: np.random.Generator, h: int, w: int) -> Camera:
    return Camera(
        f=w * rng.uniform(0.5, 0.8),
        cx=w * rng.uniform(0.3, 0.7),
        cy=h * rng.uniform(0.4, 0.58),
        height=rng.uniform(1.2, 1.8),
        scale=h / REF_HEIGHT,
    )


def random_sides(rng: np.random.Generator) -> tuple[Side, Side]:
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
        sides.append(Side(sign, width / 2 - sign * offset, walk, verge, kind))
    return sides[0], sides[1]


# ---------------------------------------------------------------- sky and background


def sky_field(rng: np.random.Generator, h: int, w: int, horizon: float, s: float) -> tuple:
    """Sky colour [H, W, 3] (gradient + clouds) and the colour at the horizon (for haze)."""
    if rng.random() < 0.3:  # overcast: pale grey, close to light facades
        zenith = jitter(rng, [175, 180, 190], 15)
        low = shaded(zenith, rng.uniform(1.0, 1.15))
    else:
        zenith = jitter(rng, [75, 125, 205], 18)
        low = jitter(rng, [195, 210, 232], 12)
    t = np.clip(np.arange(h, dtype=np.float32) / max(horizon, 1.0), 0, 1) ** rng.uniform(0.5, 1.2)
    sky = zenith[None, None] * (1 - t[:, None, None]) + low[None, None] * t[:, None, None]
    sky = np.broadcast_to(sky.astype(np.float32), (h, w, 3))
    clouds = smooth_noise(rng, h, w, 22 * s) + 0.5 * smooth_noise(rng, h, w, 6 * s)
    alpha = np.clip((clouds - rng.uniform(-0.5, 1.8)) * rng.uniform(0.4, 1.0), 0, 1)
    cloud_rgb = jitter(rng, [235, 235, 238], 10).astype(np.float32)
    cloud_rgb = cloud_rgb * (1 - 0.15 * np.clip(clouds, 0, 1))[..., None]
    sky = sky * (1 - alpha[..., None]) + cloud_rgb * alpha[..., None]
    return sky, low


def draw_backdrop(canvas: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    """Distant skyline or tree line across the end of the street (sometimes open sky)."""
    if rng.random() < 0.2:
        return
    z = rng.uniform(60.0, 250.0)
    trees = rng.random() < 0.3
    x = -1.6 * z
    while x < 1.6 * z:
        width = rng.uniform(0.05, 0.25) * z
        top = rng.uniform(4, 12) if trees else rng.uniform(5, 40)
        rgb = jitter(rng, [70, 95, 60] if trees else [150, 140, 130], 25)
        pid = canvas.part(TREE if trees else BUILDING, rgb, coarse=0.1, fine=0.06, depth=z)
        canvas.quad(cam, pid, [(x, 0, z), (x + width, 0, z), (x + width, top, z), (x, top, z)])
        x += width


# ---------------------------------------------------------------- ground


ROAD_COLOURS = ([92, 92, 96], [70, 70, 74], [110, 106, 100], [82, 84, 92])
WALK_COLOURS = ([160, 158, 152], [150, 100, 85], [178, 168, 140], [120, 120, 124], [190, 190, 185])
GRASS_COLOURS = ([80, 120, 50], [110, 125, 60], [95, 105, 70])


def _ground_strip(
    canvas: Canvas, cam: Camera, pid: int, x0: float, x1: float, z0: float = 0.3, z1: float = Z_FAR
) -> None:
    canvas.quad(cam, pid, [(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)])


def draw_ground(canvas: Canvas, cam: Camera, rng: np.random.Generator, sides) -> None:
    """Road, curbs, sidewalks, verges and whatever lies beyond, all on the plane y = 0."""
    road_rgb = jitter(rng, pick(rng, ROAD_COLOURS), 8)
    road_tex = (rng.uniform(0.02, 0.08), rng.uniform(0.04, 0.12))
    confusable = rng.random() < 0.3  # sidewalk paved like the road
    if confusable:
        walk_rgb, walk_tex = shaded(road_rgb, rng.uniform(0.95, 1.12)), road_tex
    else:
        walk_rgb = jitter(rng, pick(rng, WALK_COLOURS), 10)
        walk_tex = (rng.uniform(0.03, 0.12), rng.uniform(0.03, 0.1))
    grass_rgb = jitter(rng, pick(rng, GRASS_COLOURS), 12)
    for side in sides:
        beyond = TREE if side.kind == "park" else PAVEMENT
        far = canvas.part(beyond, grass_rgb if beyond == TREE else walk_rgb, 0.15, 0.1, ground=True)
        _ground_strip(canvas, cam, far, side.x(side.outer), side.x(400.0))
        if side.verge:
            grass = canvas.part(TREE, jitter(rng, grass_rgb, 6), 0.15, 0.12, ground=True)
            _ground_strip(canvas, cam, grass, side.x(side.curb + side.walk), side.x(side.outer))
        if side.walk:
            _draw_sidewalk(canvas, cam, rng, side, walk_rgb, walk_tex, confusable)
    road = canvas.part(ROAD, road_rgb, *road_tex, ground=True)
    _ground_strip(canvas, cam, road, sides[0].x(sides[0].curb), sides[1].x(sides[1].curb))
    _draw_road_details(canvas, cam, rng, sides, road_rgb, road_tex)


def _draw_sidewalk(canvas, cam, rng, side: Side, rgb, tex, confusable: bool) -> None:
    walk = canvas.part(PAVEMENT, jitter(rng, rgb, 4), *tex, ground=True)
    _ground_strip(canvas, cam, walk, side.x(side.curb), side.x(side.curb + side.walk))
    if not confusable:
        curb = canvas.part(PAVEMENT, shaded(rgb, rng.uniform(1.05, 1.3)), 0.05, 0.05, ground=True)
        _ground_strip(canvas, cam, curb, side.x(side.curb), side.x(side.curb + 0.25))
    if not confusable and rng.random() < 0.5:  # paving-slab joints, up to 25 m away
        joint = canvas.part(PAVEMENT, shaded(rgb, 0.75), 0.05, 0.05, ground=True)
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
        patch = canvas.part(ROAD, shaded(road_rgb, rng.uniform(0.75, 1.2)), *road_tex, ground=True)
        x0 = rng.uniform(left, right - 1)
        z0 = rng.uniform(2, 60)
        _ground_strip(canvas, cam, patch, x0, x0 + rng.uniform(0.5, 4), z0, z0 + rng.uniform(1, 8))
    paint = canvas.part(ROAD, jitter(rng, [215, 215, 205], 15), 0.08, 0.1, ground=True)
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


def shadow_mask(cam: Camera, rng: np.random.Generator, sides, h: int, w: int) -> np.ndarray:
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


def draw_facades(canvas: Canvas, cam: Camera, rng: np.random.Generator, side: Side) -> None:
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
    wall_rgb = jitter(rng, pick(rng, FACADE_COLOURS), 18)
    wall = canvas.part(BUILDING, wall_rgb, rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.1), depth)
    canvas.quad(cam, wall, [(x, 0, z0), (x, height, z0), (x, height, z1), (x, 0, z1)])
    if rng.random() < 0.5:  # cornice
        trim = canvas.part(BUILDING, shaded(wall_rgb, rng.uniform(0.6, 1.3)), 0.05, 0.05, depth)
        top = height - rng.uniform(0.3, 0.8)
        canvas.quad(cam, trim, [(x, top, z0), (x, height, z0), (x, height, z1), (x, top, z1)])
    _draw_windows(canvas, cam, rng, x, z0, z1, height, depth)


def _draw_windows(canvas, cam, rng, x, z0, z1, height, depth) -> None:
    glass = canvas.part(BUILDING, jitter(rng, [55, 65, 80], 15), 0.15, 0.05, depth)
    shine = canvas.part(BUILDING, jitter(rng, [150, 170, 190], 20), 0.1, 0.05, depth, glow=True)
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


def draw_fence(canvas: Canvas, cam: Camera, rng: np.random.Generator, side: Side) -> None:
    """Slatted fence or railing along the outer edge: thin, and partly see-through."""
    x = side.x(side.outer - 0.2)
    z0 = rng.uniform(0.8, 20)
    z1, top = z0 + rng.uniform(5, 60), rng.uniform(0.9, 2.2)
    rgb = jitter(rng, pick(rng, ([90, 90, 95], [120, 95, 70], [60, 80, 60], [170, 170, 165])))
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


def draw_hedge(canvas: Canvas, cam: Camera, rng: np.random.Generator, side: Side) -> None:
    x = side.x(side.outer - 0.3)
    z0, z1 = rng.uniform(0.8, 15), rng.uniform(20, 80)
    pid = canvas.part(TREE, jitter(rng, [60, 95, 45], 15), 0.2, 0.25, depth=z0)
    zs = np.linspace(z0, z1, 24)
    tops = rng.uniform(0.8, 1.6) + rng.normal(0, 0.12, zs.size)
    top = [(x, t, z) for z, t in zip(zs, tops, strict=True)]
    canvas.quad(cam, pid, [(x, 0, z0), *top, (x, 0, z1)])
