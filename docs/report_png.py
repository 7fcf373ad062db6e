"""Regenerate docs/report.png, the README's picture of the report, from the shipped model.

    .venv/bin/python docs/report_png.py                   # the committed picture
    .venv/bin/python docs/report_png.py --streets 8 --photos 1 --out /tmp/report.png --work /tmp/w

It builds `make demo`'s pool (street scenes of a seed the shipped model never saw, plus photos
from scikit-image), scores it with the shipped model as `make demo` does (`--top-k 8 --diverse
0.95 --report`), opens the report in headless Chromium at 1366 x 1501 and keeps that view scaled
to 910 x 1000 in 256 colours. A test runs it on a tiny pool, so the picture always comes from
the shipped model and the current report.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VIEW = (1366, 1501)  # the browser window, W x H
PICTURE = (910, 1000)  # the PNG, W x H
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")


def build_pool(pool: Path, streets: int, photos: int) -> None:
    """`make demo`'s pool: the train split of `streets` scenes (seed 7) and `photos` photos."""
    import skimage

    from dealseg.training.streets.dataset import write_streets

    write_streets(pool.parent / "streets", n=streets, size=(360, 480), seed=7)
    shutil.copytree(pool.parent / "streets" / "train", pool / "streets")
    (pool / "photos").mkdir()
    for name in PHOTOS[:photos]:
        shutil.copy(Path(skimage.__file__).parent / "data" / name, pool / "photos")


def score(pool: Path, out: Path, k: int) -> Path:
    """`deal-client score` with the shipped model and the report; the page's path. Fewer than
    k picks (exit 3: a tiny pool's streets are one drive, its photos off-domain) still make one."""
    client = Path(sys.executable).parent / "deal-client"
    args = ["score", str(pool), "--top-k", str(k), "--diverse", "0.95", "--report"]
    done = subprocess.run([str(client), *args, "--out", str(out), "--no-progress"], check=False)
    if done.returncode not in (0, 3):
        raise SystemExit(f"deal-client score failed with exit code {done.returncode}")
    return out / "report.html"


def screenshot(page: Path, png: Path, profile: Path) -> None:
    """The top of `page` in headless Chromium, scaled to PICTURE, as a 256-colour PNG."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: `apt-get install chromium`")
    shot = profile / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--window-size={VIEW[0]},{VIEW[1]}", "--virtual-time-budget=10000"]
    flags += [f"--user-data-dir={profile}", f"--screenshot={shot}"]
    subprocess.run([chromium, *flags, page.as_uri()], check=True, capture_output=True)
    with Image.open(shot) as im:
        picture = im.convert("RGB").resize(PICTURE, Image.Resampling.LANCZOS)
    png.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(256).save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "report.png")
    parser.add_argument("--streets", type=int, default=60, help="street scenes generated")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="photos added")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--work", type=Path, help="keep the pool and out dir here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        build_pool(work / "pool", args.streets, args.photos)
        page = score(work / "pool", work / "out", args.top_k)
        (work / "chromium").mkdir()
        screenshot(page, args.out, work / "chromium")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
