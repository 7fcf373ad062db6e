"""Helpers shared by the test modules: driving `deal-client`, writing pools, reading out
dirs. Test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from dealseg.client.cli import main
from dealseg.client.options import STRATEGY_NAMES
from dealseg.core.contract import TOL_DS, ModelSpec

K = 5


def deal_client(*args: object, input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def write_streets_pool(folder: Path, n: int, seed: int = 0) -> Path:
    """n frames of the street generator at the shipped model's 180x240, clear daylight: the
    frames it was trained on, in-domain (the crude pictures of `write_pool` are off-domain to
    it, and a selection leaves them out)."""
    from dealseg.training.streets.render import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _ = render_scene(np.random.default_rng([seed, i]), (180, 240))
        Image.fromarray(image).save(folder / f"street_{i:04d}.png")
    return folder


OFF_DOMAIN = ("flat", "checkerboard", "covered-lens")  # the off-domain kinds of a mixed pool


def write_streets_and_off_domain(folder: Path, streets: int = 6) -> Path:
    """`streets` frames of the street generator and one frame of each of `OFF_DOMAIN`'s kinds
    (training/offdomain.py), named after its kind."""
    from dealseg.training import offdomain

    write_streets_pool(folder, streets)
    street = np.asarray(Image.open(folder / "street_0000.png"))
    kinds = {name: {**offdomain.TUNE, **offdomain.JUDGE}[name] for name in OFF_DOMAIN}
    for name, frame in offdomain.make_frames(kinds, 1, [street], seed=5):
        Image.fromarray(frame).save(folder / f"{name}.png")
    return folder


def write_pool(folder: Path, n: int, size: tuple[int, int] = (60, 80), seed: int = 0) -> Path:
    """n small street-like images: sky, buildings, road, a few objects, noise; JPEG and PNG."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        horizon = int(rng.integers(h // 4, h // 2))
        img[:horizon] = rng.integers(120, 230, 3)
        img[horizon:] = rng.integers(40, 120, 3)
        for _ in range(int(rng.integers(1, 6))):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            img[y : y + int(rng.integers(3, h // 2)), x : x + int(rng.integers(2, w // 3))] = (
                rng.integers(0, 256, 3)
            )
        img = np.clip(img + rng.normal(0, rng.uniform(0, 30), img.shape), 0, 255).astype(np.uint8)
        sub = folder / f"cam{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if i % 2 else "png"
        Image.fromarray(img).save(sub / f"frame_{i:04d}.{ext}")
    return folder


def add_photos(folder: Path) -> None:
    """A few real photos shipped with scikit-image, shrunk."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg"):
        im = Image.open(data / name).convert("RGB")
        im.thumbnail((160, 120))
        im.save(folder / f"photo_{Path(name).stem}.jpg", quality=90)


def spec_of_out(out: Path) -> ModelSpec:
    return ModelSpec.from_metadata(json.loads((out / "meta.json").read_text())["metadata"])


def embeddings(out: Path) -> np.ndarray:
    """[rows, D] of an out dir's embeddings file."""
    d = spec_of_out(out).embedding_dim
    return np.fromfile(out / "embeddings.f32", dtype="<f4").reshape(-1, d)


def selection(out: Path) -> dict:
    return json.loads((out / "selection.json").read_text())


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_bytes().splitlines()]


def assert_same_selection(a: dict, b: dict) -> None:
    assert [r["path"] for r in a["rows"]] == [r["path"] for r in b["rows"]]
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        for key in ("score", "ds", "entropy"):
            assert ra[key] == pytest.approx(rb[key], abs=TOL_DS), key


GATED_CLIENT = Path(__file__).parent / "gated_client.py"


def start_gated(pool: Path, gate_at: int, release: Path, *args: object) -> subprocess.Popen:
    """`deal-client score POOL ARGS` in a subprocess whose decode of the pool's image number
    `gate_at` (0-based, pool order) waits until `release` exists (see gated_client.py)."""
    from dealseg.client.scoring import list_paths

    gate = os.path.basename(list_paths(str(pool))[gate_at])
    cmd = [sys.executable, str(GATED_CLIENT), gate, str(release), "score", str(pool)]
    cmd += [str(a) for a in args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_records(out: Path, n: int, proc: subprocess.Popen) -> None:
    """Until scores.jsonl holds n lines; the process must still be running (it is gated)."""
    scores = out / "scores.jsonl"
    deadline = time.monotonic() + 120  # a failure guard: the condition is met in seconds
    while not (scores.exists() and scores.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the gated run never wrote its first records"
        time.sleep(0.02)


WIDE = (90, 160)  # H, W of the pool's 16:9 frames


def write_wide_pool(folder: Path, count: int = 4) -> Path:
    """16:9 PNGs of smooth colour fields with some noise (the model sees varied content)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0 : WIDE[0], 0 : WIDE[1]]
    for i in range(count):
        field = np.stack([x * (i + 1), y * 3, (x + y) * (4 - i)], -1) % 256
        noise = rng.integers(0, 40, (*WIDE, 3))
        Image.fromarray((field + noise).clip(0, 255).astype(np.uint8)).save(folder / f"f{i}.png")
    return folder


SELECTIONS = [(s, []) for s in STRATEGY_NAMES] + [
    ("de", ["--diverse", "0.99"]),
    ("ds", ["--balance"]),
    ("entropy", ["--per-group", "2"]),
]


def add_bad_files(folder: Path) -> None:
    """Two files that cannot be scored: an empty PNG and a JPEG of text."""
    (folder / "bad").mkdir(exist_ok=True)
    (folder / "bad" / "empty.png").write_bytes(b"")
    (folder / "bad" / "garbage.jpg").write_bytes(b"this is not a JPEG at all")


def mixed_pool(folder: Path, n: int) -> Path:
    """`n` street frames, the photos and the bad files in `folder`."""
    write_pool(folder, n)
    add_photos(folder)
    add_bad_files(folder)
    return folder


def selections(out: Path, tmp: Path) -> dict[str, bytes]:
    """selection.txt of every strategy (and a few options) selected from `out`."""
    found = {}
    for strategy, extra in SELECTIONS:
        where = tmp / f"{strategy}{'_'.join(extra)}"
        r = deal_client("select", out, "-s", strategy, "-k", 6, "-o", where, *extra)
        assert r.exit_code == 0, r.stderr
        found[f"{strategy} {' '.join(extra)}"] = (where / "selection.txt").read_bytes()
    return found


BUCKET = "frames"


def upload(s3_server: object, pool: Path, prefix: str) -> list[str]:
    """Every file under `pool` as s3://frames/<prefix>/<relative path>; the URIs, sorted."""
    client = s3_server.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    uris = []
    for f in sorted(p for p in pool.rglob("*") if p.is_file()):
        key = f"{prefix}/{f.relative_to(pool).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=f.read_bytes())
        uris.append(f"s3://{BUCKET}/{key}")
    return uris
