"""Objects on the street, drawn into the canvas: trees, poles with signs, cars, pedestrians,
bicyclists, bins; and where they stand (footprints, depth order)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from .canvas import (
    BICYCLIST,
    BICYCLIST_RATE,
    CAR,
    NEAR_OBJECT,
    PEDESTRIAN,
    POLE,
    POLE_MAX_PX,
    SIGN,
    SIGN_MAX_PX,
    TREE,
    VOID,
    Camera,
    Canvas,
    Drive,
    child,
    jitter,
    pick,
    shaded,
)
from .scenery import Side

# ---------------------------------------------------------------- street objects


def _draw_tree(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float):
    """Trunk and an irregular crown of leaf clusters (gaps show what is behind)."""
    if cam.depth(z) < NEAR_OBJECT:
        return
    trunk_h, trunk_w, crown = rng.uniform(1.5, 3.5), rng.uniform(0.15, 0.4), rng.uniform(1.4, 4.0)
    trunk = canvas.part(TREE, jitter(rng, [75, 60, 45], 12), 0.1, 0.1, depth=z)
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
    green = jitter(rng, pick(rng, ([55, 90, 40], [70, 105, 45], [90, 110, 50], [120, 95, 45])))
    shades = [canvas.part(TREE, shaded(green, k), 0.2, 0.3, depth=z) for k in (0.6, 0.8, 1.0, 1.2)]
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
    canvas: Canvas, rng: np.random.Generator, u: float, v: float, size: float, z: float
) -> None:
    """A small sign or traffic light centred at (u, v), `size` px tall, at world depth z."""
    r = size / 2
    kind = int(rng.integers(5))
    rim_rgb = pick(
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
        box = canvas.part(SIGN, jitter(rng, [35, 35, 35], 8), 0.05, 0.05, z)
        canvas.draw.rectangle([u - r * 0.4, v - r, u + r * 0.4, v + r], fill=box)
        lamp_rgb = pick(rng, ([240, 40, 30], [250, 190, 40], [60, 230, 120]))
        lamp = canvas.part(SIGN, lamp_rgb, depth=z, glow=True)
        ly = v + r * (float(rng.integers(3)) - 1) * 0.6
        canvas.ellipse(lamp, u, ly, r * 0.3, r * 0.3)
        return
    face_rgb = jitter(rng, [235, 235, 230], 8)
    if size >= 5:  # white face inside the coloured rim
        canvas.ellipse(canvas.part(SIGN, face_rgb, 0.05, 0.05, z), u, v, r * 0.55, r * 0.55)


def _draw_pole(
    canvas: Canvas, cam: Camera, rng: np.random.Generator, side: Side, x: float, z: float
) -> None:
    """Lamp post, sign pole, traffic-light pole or utility pole."""
    if cam.depth(z) < NEAR_OBJECT:
        return
    kind = pick(rng, ("lamp", "sign", "sign", "light", "utility"))
    top = {"lamp": (5, 9), "sign": (2.2, 3.5), "light": (3, 4.5), "utility": (7, 10)}[kind]
    top = rng.uniform(*top)
    metal = pick(rng, ([110, 110, 110], [60, 65, 60], [150, 150, 140]))
    pid = canvas.part(POLE, jitter(rng, metal, 15), 0.05, 0.08, z)
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
    canvas: Canvas,
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
    canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float, shape: _CarShape
) -> None:
    """Car, van or bus seen from behind or in front: body, cabin, glass, tyres, lights."""
    x0, x1, length, h = x - shape.width / 2, x + shape.width / 2, shape.length, shape.height
    paint = jitter(rng, pick(rng, CAR_COLOURS), 10)
    body = tuple(canvas.part(CAR, shaded(paint, k), 0.05, 0.04, z) for k in (0.9, 0.72, 1.12))
    glass = canvas.part(CAR, jitter(rng, [45, 52, 62], 12), 0.15, 0.05, z)
    tyre = canvas.part(CAR, jitter(rng, [25, 25, 25], 5), 0.05, 0.05, z)
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
    lamp = canvas.part(CAR, pick(rng, ([200, 30, 30], [235, 230, 200])), 0.05, 0.05, z, glow=True)
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
    canvas: Canvas,
    cam: Camera,
    rng: np.random.Generator,
    cls: int,
    z: float,
    pose: _Pose,
    height: float,
) -> None:
    """A person (pedestrian, or the rider of a bicycle): legs, torso, arms, head."""
    shirt = canvas.part(cls, rng.uniform(15, 235, 3), 0.1, 0.08, z)
    legs = canvas.part(cls, jitter(rng, pick(rng, TROUSERS), 15), 0.1, 0.08, z)
    skin = canvas.part(cls, jitter(rng, pick(rng, SKIN), 10), 0.05, 0.05, z)
    hair = canvas.part(cls, jitter(rng, [45, 35, 25], 20), 0.05, 0.05, z)
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
    tyre = canvas.part(BICYCLIST, jitter(rng, [30, 30, 30], 6), 0.05, 0.05, z)
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
    rgb = jitter(rng, pick(rng, ([40, 70, 45], [90, 90, 90], [140, 110, 60])), 15)
    ids = tuple(canvas.part(VOID, shaded(rgb, k), 0.05, 0.05, z) for k in (1.0, 0.8, 1.15))
    w, h = rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.2)
    _box(canvas, cam, ids, x - w / 2, x + w / 2, 0, h, z, z + w)


# ---------------------------------------------------------------- placing objects


Draw = tuple[float, Callable[[], None]]  # (depth, draw it)


class Footprints:
    """Ground rectangles already taken, so cars and people do not overlap in 3-D."""

    def __init__(self) -> None:
        self.rects: list[tuple[float, float, float, float]] = []

    def take(self, x0: float, x1: float, z0: float, z1: float) -> bool:
        for a0, a1, b0, b1 in self.rects:
            if x0 < a1 and a0 < x1 and z0 < b1 and b0 < z1:
                return False
        self.rects.append((x0, x1, z0, z1))
        return True


def place_side(canvas, cam, rng, side: Side, taken: Footprints) -> tuple[list, list]:
    """Trees, poles, parked cars, pedestrians and clutter along one side of the street."""
    beyond: list[Draw] = []
    street: list[Draw] = []
    if side.kind == "park":
        for _ in range(int(rng.integers(3, 11))):
            x, z = side.x(side.outer + rng.uniform(1, 15)), rng.uniform(3, 150)
            beyond.append((z, partial(_draw_tree, canvas, cam, child(rng), x, z)))
    walk_mid = side.curb + max(side.walk, side.verge) * rng.uniform(0.3, 0.8)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 8))):
            x, z = side.x(walk_mid), rng.uniform(3, 120)
            street.append((z, partial(_draw_tree, canvas, cam, child(rng), x, z)))
    for _ in range(int(rng.integers(1, 6))):
        x, z = side.x(side.curb + rng.uniform(0.2, 0.6)), rng.uniform(2.5, 100)
        street.append((z, partial(_draw_pole, canvas, cam, child(rng), side, x, z)))
    if rng.random() < 0.5:
        street += _park_cars(canvas, cam, rng, side, taken)
    if side.walk:
        street += _place_people(canvas, cam, rng, side, taken)
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        reach = max(0.5, side.walk + side.verge)
        x, z = side.x(side.curb + rng.uniform(0.4, reach)), rng.uniform(6, 40)
        street.append((z, partial(_draw_bin, canvas, cam, child(rng), x, z)))
    return beyond, street


def _park_cars(canvas, cam, rng, side: Side, taken: Footprints) -> list[Draw]:
    cars = []
    z, end = rng.uniform(-2, 8), rng.uniform(25, 80)
    while z < end:
        shape = _random_car_shape(rng)
        x = side.x(side.curb - shape.width / 2 - rng.uniform(0.1, 0.4))
        if z > 1.0 and taken.take(x - shape.width / 2, x + shape.width / 2, z, z + shape.length):
            cars.append((z, partial(_draw_car, canvas, cam, child(rng), x, z, shape)))
        z += shape.length + rng.uniform(0.5, 10)
    return cars


def _place_people(canvas, cam, rng, side: Side, taken: Footprints) -> list[Draw]:
    people = []
    count = int(rng.choice([0, 1, 1, 2, 2, 3, 4, 6, 8]))
    for _ in range(count):
        x = side.x(side.curb + rng.uniform(0.3, side.walk))
        z = rng.uniform(2.5, 50)
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):  # sometimes a group
            xi, zi = x + rng.normal(0, 0.4), z + rng.uniform(0, 1.5)
            if taken.take(xi - 0.25, xi + 0.25, zi, zi + 0.3):
                draw = partial(
                    _draw_pedestrian, canvas, cam, child(rng), xi, zi, rng.random() < 0.4
                )
                people.append((zi, draw))
    return people


def place_road_users(canvas, cam, rng, sides, taken: Footprints, drive: Drive) -> list[Draw]:
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
            users.append((now, partial(_draw_car, canvas, cam, child(rng), x, now, shape)))
    for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):
        x, z = rng.uniform(left, right), rng.uniform(4, 40)
        if taken.take(x - 0.3, x + 0.3, z, z + 0.3):
            users.append((z, partial(_draw_pedestrian, canvas, cam, child(rng), x, z, True)))
    if rng.random() < BICYCLIST_RATE:
        for _ in range(1 if rng.random() < 0.8 else 2):
            side = sides[int(rng.integers(2))]
            x, z = side.x(side.curb - rng.uniform(0.6, 2.0)), rng.uniform(3.0, 22)
            crossing = rng.random() < 0.3
            reach = 0.7 if crossing else 0.35
            if taken.take(x - reach, x + reach, z, z + 1.2):
                users.append((z, partial(_draw_bicyclist, canvas, cam, child(rng), x, z, crossing)))
    return users


def draw_in_depth_order(draws: list[Draw]) -> None:
    for _, draw in sorted(draws, key=lambda item: -item[0]):
        draw()
