"""Decoding every kind of image file, and listing pools (folders, lists, stdin, shards)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dealseg.core.decode import DecodeError, decode_image
from dealseg.core.pool import (
    PoolError,
    parse_shard,
    read_pool,
    shard_of,
    take_shard,
    walk_folder,
)

SIZE = (48, 64)  # (H, W) of the model input in these tests


def rgb_image(h: int = 60, w: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def sideways_jpeg(path: Path) -> None:
    """Stored 80x40: left half red, right half blue; EXIF orientation 6 (rotate 90 CW)."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, quality=95, exif=exif)


def make_odd_pool(folder: Path, big_pixels: int = 300 * 300) -> tuple[set[str], dict[str, str]]:
    """Every bad or unusual input of issue 5 in `folder`.

    Returns (names that must score OK, name -> expected words of the error reason).
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = rgb_image()
    good.save(folder / "good.jpg", quality=90)
    good.save(folder / "good.png")
    ramp = (np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) * 13).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "gray16.png")
    good.convert("CMYK").save(folder / "cmyk.jpg")
    good.convert("P").save(folder / "palette.png")
    good.convert("RGBA").save(folder / "rgba.png")
    good.convert("L").save(folder / "gray.png")
    good.convert("LA").save(folder / "gray_alpha.png")
    good.convert("1").save(folder / "bilevel.png")
    sideways_jpeg(folder / "exif_rotated.jpg")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "one_pixel.png")
    good.save(os.path.join(os.fsencode(folder), b"caf\xe9_latin1.png"))  # not valid UTF-8
    ok = {
        "good.jpg",
        "good.png",
        "gray16.png",
        "cmyk.jpg",
        "palette.png",
        "rgba.png",
        "gray.png",
        "gray_alpha.png",
        "bilevel.png",
        "exif_rotated.jpg",
        "one_pixel.png",
        os.fsdecode(b"caf\xe9_latin1.png"),
    }

    (folder / "zero.jpg").write_bytes(b"")
    data = jpeg_bytes(good)
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is a text file, not a JPEG\n")
    side = int(big_pixels**0.5) + 1
    Image.new("L", (side, side), 128).save(folder / "huge.png")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "fifo.jpg")
    bad = {
        "zero.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "huge.png": "too many pixels",
        "dangling.jpg": "dangling symlink",
        "loop.jpg": "symlink loop",
        "fifo.jpg": "not a regular file",
    }
    if os.geteuid() != 0:  # root reads anything: chmod 000 only blocks other users
        good.save(folder / "no_permission.jpg")
        (folder / "no_permission.jpg").chmod(0)
        bad["no_permission.jpg"] = "permission denied"
    return ok, bad


# ----------------------------------------------------------------------------------- decode
def test_every_odd_input_decodes_or_fails_with_its_reason(tmp_path: Path) -> None:
    ok, bad = make_odd_pool(tmp_path, big_pixels=50_000)
    for name in ok:
        arr = decode_image(str(tmp_path / name), SIZE, max_pixels=50_000)
        assert arr.dtype == np.uint8 and arr.shape == (*SIZE, 3), name
    for name, words in bad.items():
        with pytest.raises(DecodeError) as info:
            decode_image(str(tmp_path / name), SIZE, max_pixels=50_000)
        assert words in info.value.reason, (name, info.value.reason)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(DecodeError, match="directory"):
        decode_image(str(tmp_path / "folder.jpg"), SIZE)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    sideways_jpeg(tmp_path / "r.jpg")
    arr = decode_image(str(tmp_path / "r.jpg"), (80, 40)).astype(int)
    top, bottom = arr[:30].mean(axis=(0, 1)), arr[50:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, top  # red on top: rotated upright
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    arr = decode_image(str(tmp_path / "g16.png"), SIZE)
    assert abs(arr.mean() - 127.5) < 3 and arr.max() >= 250 and (arr == 255).mean() < 0.05


def test_colour_modes_keep_their_colours(tmp_path: Path) -> None:
    im = Image.new("RGB", (64, 48), (200, 40, 90))
    for mode in ("P", "RGBA", "CMYK"):
        im.convert(mode).save(tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    for f in tmp_path.iterdir():
        arr = decode_image(str(f), SIZE).reshape(-1, 3).mean(axis=0)
        assert np.abs(arr - (200, 40, 90)).max() < 12, (f.name, arr)


def test_jpeg_draft_mode_decodes_near_the_target_size(tmp_path: Path) -> None:
    big = Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((480, 640), np.uint8)))
    big.convert("RGB").save(tmp_path / "big.jpg", quality=90)
    arr = decode_image(str(tmp_path / "big.jpg"), SIZE)
    assert arr.shape == (*SIZE, 3)
    assert arr[: SIZE[0] // 2 - 2, : SIZE[1] // 2 - 2].min() > 200  # bright top-left block kept
    assert arr[: SIZE[0] // 2 - 2, SIZE[1] // 2 + 2 :].max() < 60


# ------------------------------------------------------------------------------------- pool
def test_folder_walk_is_recursive_sorted_and_survives_symlink_loops(tmp_path: Path) -> None:
    for rel in [
        "b.jpg",
        "a/z.PNG",
        "a.jpg",
        "a/b/c.webp",
        ".hidden.jpg",
        "notes.txt",
        ".git/x.jpg",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path)  # a folder loop
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")  # a file loop: listed, fails later
    problems: list[str] = []
    found = walk_folder(str(tmp_path), problems.append)
    rel = [os.path.relpath(p, tmp_path) for p in found]
    assert rel == ["a.jpg", "a/b/c.webp", "a/z.PNG", "b.jpg", "self.jpg"]
    assert any("already visited" in p for p in problems)


def test_non_utf8_names_survive_listing(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.jpg")
    Path(os.fsdecode(raw)).write_bytes(b"x")
    (found,) = read_pool(str(tmp_path))
    assert os.fsencode(found) == raw


def test_list_file_paths_are_relative_to_the_list(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    listing = tmp_path / "imgs" / "pool.txt"
    listing.write_bytes(b"# labelled later\na.jpg\n\n/abs/b.png\na.jpg\r\n  c.jpg  \n")
    assert read_pool(str(listing)) == [
        str(tmp_path / "imgs" / "a.jpg"),
        "/abs/b.png",
        str(tmp_path / "imgs" / "c.jpg"),
    ]


def test_stdin_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"x/a.jpg\nx/\xff.jpg\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert [os.fsencode(p) for p in read_pool("-")] == [b"x/a.jpg", b"x/\xff.jpg"]


def test_a_missing_pool_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="not a folder"):
        read_pool(str(tmp_path / "nothing"))


def test_shards_partition_the_pool_deterministically() -> None:
    paths = [f"/pool/{i:04d}.jpg" for i in range(1000)]
    shards = [take_shard(paths, i, 4) for i in range(4)]
    assert sorted(p for s in shards for p in s) == paths
    assert all(150 < len(s) < 350 for s in shards)
    reordered = paths[::-1]
    assert set(take_shard(reordered, 2, 4)) == set(shards[2])
    assert np.array_equal(shard_of(paths[:10], 4), shard_of(paths[:10] + ["/y" * 99], 4)[:10])


@pytest.mark.parametrize("text", ["2/2", "-1/3", "1", "a/b", "0/0"])
def test_bad_shards_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


# ------------------------------------------------------------------------------ end to end
def test_odd_pool_scores_the_good_and_records_each_bad_one(tiny_onnx: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dealseg.client.cli import main
    from dealseg.client.records import record_path

    pool, out = tmp_path / "pool", tmp_path / "out"
    ok, bad = make_odd_pool(pool, big_pixels=50_000)
    result = CliRunner().invoke(
        main,
        [
            "score",
            str(pool),
            "-k",
            "3",
            "--model",
            str(tiny_onnx),
            "--out",
            str(out),
            "--max-pixels",
            "50000",
        ],
    )
    assert result.exit_code == 3, result.stderr
    raw = (out / "scores.jsonl").read_bytes()
    raw.decode("utf-8", "strict")  # every name, even one that is not UTF-8, as strict UTF-8
    recs = [json.loads(x) for x in raw.splitlines()]
    assert b"\\udc" not in raw  # no lone surrogates, which strict JSON parsers reject
    for r in recs:
        r["path"] = record_path(r)
    by_name = {os.path.basename(r["path"]): r for r in recs}
    assert len(recs) == len(by_name) == len(ok) + len(bad)
    for name in ok:
        assert by_name[name]["status"] == "ok", (name, by_name[name]["error"])
    for name, words in bad.items():
        assert by_name[name]["status"] == "error" and words in by_name[name]["error"], name
        assert f"failed: {pool / name}: " in result.stderr
    odd = next(r["path"] for r in recs if "latin1" in r["path"])
    assert os.path.exists(os.fsencode(odd))  # the record's path gives the original bytes back
    assert f"{len(ok)} scored" in result.stderr and f"{len(bad)} failed" in result.stderr
    assert len((out / "selection.txt").read_bytes().splitlines()) == 3


def test_non_utf8_name_in_a_jsonl_out_dir_is_one_file_everywhere(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    """selection.txt holds the name's bytes, the maps are drawn from the file, and a resume
    does not score it again."""
    from click.testing import CliRunner

    from dealseg.client.cli import main

    pool, out = tmp_path / "pool", tmp_path / "out"
    pool.mkdir()
    odd = os.path.join(os.fsencode(pool), b"caf\xe9_odd.png")  # not valid UTF-8
    rgb_image(seed=1).save(odd)
    rgb_image(seed=2).save(pool / "plain.png")
    args = ["score", str(pool), "-k", "2", "--model", str(tiny_onnx), "--out", str(out)]
    first = CliRunner().invoke(main, [*args, "--maps"])
    assert first.exit_code == 0, first.stderr
    picked = (out / "selection.txt").read_bytes().splitlines()
    assert odd in picked and all(os.path.exists(p) for p in picked)
    panels = [p for p in (out / "maps").iterdir() if not p.name.endswith((".dif.png", ".seg.png"))]
    assert len(panels) == 2 and "no map" not in first.stderr, first.stderr
    lines = (out / "scores.jsonl").read_bytes()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.stderr
    assert (out / "scores.jsonl").read_bytes() == lines  # nothing scored again
    assert (out / "selection.txt").read_bytes().splitlines() == picked
