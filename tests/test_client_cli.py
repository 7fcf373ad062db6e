"""`deal-client` end to end with the embedded engine on the tiny exported model (`tiny_onnx`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    K,
    add_photos,
    assert_same_selection,
    deal_client,
    embeddings,
    records,
    selection,
    spec_of_out,
    start_gated,
    wait_for_records,
    write_pool,
    write_streets_pool,
)
from PIL import Image

from dealseg.client.maps import map_name
from dealseg.client.options import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_STRATEGY,
    RESIZE_MODES,
    STRATEGY_NAMES,
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_pool(tmp_path_factory.mktemp("pool"), 24)
    add_photos(folder)
    return folder


@pytest.fixture(scope="module")
def reference(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted, unsharded run: what every other way of scoring must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


# ------------------------------------------------------------------------------- outputs
def test_score_writes_one_record_per_image_and_a_selection(pool: Path, reference: Path) -> None:
    recs = records(reference)
    n = len(list(pool.rglob("*.jpg"))) + len(list(pool.rglob("*.png")))
    assert len(recs) == len({r["path"] for r in recs}) == n
    spec = spec_of_out(reference)
    for r in recs:
        assert r["status"] == "ok" and r["error"] is None and r["model"] == spec.model_id
        assert list(r["class_fraction"]) == list(spec.class_names)  # keyed by class name
        assert abs(sum(r["class_fraction"].values()) - 1) < 1e-3
    rows = sorted(r["row"] for r in recs)
    assert rows == list(range(n))
    emb = embeddings(reference)
    assert emb.shape == (n, spec.embedding_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    doc = selection(reference)
    assert doc["strategy"] == DEFAULT_STRATEGY and doc["k"] == K and doc["selected"] == K
    ranked = [r[DEFAULT_STRATEGY] for r in doc["rows"]]
    assert ranked == sorted(ranked, reverse=True)
    assert max(r[DEFAULT_STRATEGY] for r in recs) == ranked[0]
    txt = (reference / "selection.txt").read_text().splitlines()
    assert txt == [r["path"] for r in doc["rows"]]


def test_stdout_json_and_table(
    reference: Path, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    result = deal_client(
        "score", pool, "-k", K, "--model", tiny_onnx, "--out", reference, "--json", "--no-progress"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc == selection(reference)
    assert "0 scored" in result.stderr and "already done" in result.stderr  # all resumed
    table = deal_client("select", reference, "-k", 3, "--out", tmp_path).stdout.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "path"] and len(table) == 5
    assert table[-1].startswith("score: entropy = mean per-pixel softmax entropy")


def test_select_reproduces_score_and_runs_every_strategy(reference: Path, tmp_path: Path) -> None:
    result = deal_client(
        "select",
        reference / "scores.jsonl",
        "--strategy",
        DEFAULT_STRATEGY,
        "-k",
        K,
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == selection(reference)["rows"]
    assert (tmp_path / "selection.txt").read_bytes() == (reference / "selection.txt").read_bytes()
    for strategy in STRATEGY_NAMES:
        for extra in ([], ["--diverse", "0.99"]):
            r = deal_client(
                "select",
                reference,
                "-s",
                strategy,
                "-k",
                7,
                "-o",
                tmp_path,
                "--json",
                "--force",
                *extra,
            )
            doc = json.loads(r.stdout)
            assert r.exit_code == (0 if doc["selected"] == 7 else 3) and doc["strategy"] == strategy
            assert 1 <= doc["selected"] <= 7
            assert len({row["path"] for row in doc["rows"]}) == doc["selected"]


def test_labeled_images_are_not_selected_again(reference: Path, tmp_path: Path) -> None:
    first = [r["path"] for r in selection(reference)["rows"]]
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("\n".join(first[:2]) + "\n")
    for strategy in ("de", "coreset"):
        r = deal_client(
            "select",
            reference,
            "-s",
            strategy,
            "-k",
            K,
            "--labeled",
            labeled,
            "--out",
            tmp_path,
            "--json",
            "--force",
        )
        got = [row["path"] for row in json.loads(r.stdout)["rows"]]
        assert not set(got) & set(first[:2]) and len(got) == K
    emb = embeddings(reference)[:3]
    np.save(tmp_path / "centres.npy", emb)
    r = deal_client(
        "select",
        reference,
        "-s",
        "coreset",
        "-k",
        2,
        "--labeled",
        tmp_path / "centres.npy",
        "--out",
        tmp_path,
        "--json",
        "--force",
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["selected"] == 2
    r = deal_client(
        "select",
        reference,
        "-k",
        2,
        "--labeled",
        reference / "scores.jsonl",
        "--out",
        tmp_path,
        "--json",
        "--force",
    )  # every image already labelled: fewer than k, said why, exit 3
    assert r.exit_code == 3 and json.loads(r.stdout)["selected"] == 0
    assert "selected 0 of the 2 asked: 0 images to pick from (29 of 29 excluded)" in r.stderr


# -------------------------------------------------------------------------------- resume
def test_resume_after_a_crash_mid_write(
    pool: Path, reference: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out)
    assert first.exit_code == 0
    lines = (out / "scores.jsonl").read_bytes().splitlines(keepends=True)
    keep = len(lines) // 2
    # as if killed while writing: half the records, a partial line, rows of an unwritten batch
    (out / "scores.jsonl").write_bytes(b"".join(lines[:keep]) + lines[keep][:17])
    rows_kept = max(json.loads(x)["row"] for x in lines[:keep]) + 1
    row_bytes = 4 * spec_of_out(out).embedding_dim
    emb = (out / "embeddings.f32").read_bytes()
    (out / "embeddings.f32").write_bytes(emb[: (rows_kept + 3) * row_bytes + 10])
    again = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out)
    assert again.exit_code == 0, again.stderr
    assert f"{keep} already done" in again.stderr
    recs = records(out)
    assert len(recs) == len({r["path"] for r in recs}) == len(lines)
    assert sorted(r["row"] for r in recs) == list(range(len(lines)))
    assert (out / "embeddings.f32").stat().st_size == len(lines) * row_bytes
    assert_same_selection(selection(out), selection(reference))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_leaves_valid_files_and_a_rerun_finishes(
    sig: signal.Signals, tiny_onnx: Path, tmp_path: Path
) -> None:
    pool = write_pool(tmp_path / "pool", 240, size=(40, 48), seed=1)
    out, release = tmp_path / "out", tmp_path / "release"
    # one image per request and one decode thread: images 0-6 are written (7 too, perhaps) and
    # the run waits at image 8 until the test releases it, which it never does
    proc = start_gated(
        pool,
        8,
        release,
        "-k",
        K,
        "--model",
        tiny_onnx,
        "--out",
        out,
        "--batch-size",
        1,
        "--concurrency",
        1,
        "--workers",
        1,
        "--no-progress",
    )
    wait_for_records(out, 7, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    assert (sig == signal.SIGTERM) == (b"interrupted (SIGTERM)" in err)
    done = records(out)  # every line parses
    assert 7 <= len(done) <= 8
    rerun = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out)
    assert rerun.exit_code == 0, rerun.stderr
    recs = records(out)
    assert len(recs) == len({r["path"] for r in recs}) == 240
    straight = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", tmp_path / "b")
    assert straight.exit_code == 0
    assert_same_selection(selection(out), selection(tmp_path / "b"))


def test_an_out_dir_of_another_model_is_refused(
    reference: Path, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out, "--shard", "0/4")
    meta = json.loads((out / "meta.json").read_text())
    meta["model"] = "deal:0:other"
    (out / "meta.json").write_text(json.dumps(meta))
    result = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out)
    assert result.exit_code == 1
    assert "holds scores of model deal:0:other" in result.stderr


def test_an_out_dir_of_format_1_is_read_but_not_resumed(
    reference: Path, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """Out dirs written before class_fraction was keyed by name: select reads them, score does
    not append name-keyed records to them."""
    old = Path(shutil.copytree(reference, tmp_path / "old"))
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    lines = [json.loads(line) for line in (old / "scores.jsonl").read_text().splitlines()]
    for r in lines:
        r["class_fraction"] = list(r["class_fraction"].values())
    (old / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    selected = deal_client("select", old, "-k", K, "--out", tmp_path / "sel")
    assert selected.exit_code == 0, selected.stderr
    assert_same_selection(selection(tmp_path / "sel"), selection(reference))
    result = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", old)
    assert result.exit_code == 1 and "written by an older deal-client (format 1" in result.stderr


def test_one_writer_per_out_dir(reference: Path, pool: Path, tiny_onnx: Path) -> None:
    from dealseg.client.outdir import open_writer, read_meta
    from dealseg.client.records import spec_of

    with open_writer(reference, spec_of(read_meta(reference))):
        result = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", reference)
    assert result.exit_code == 1 and "another deal-client is writing" in result.stderr


# ---------------------------------------------------------------------------- shard+merge
def test_shards_merged_equal_a_single_run(
    pool: Path, reference: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    outs = []
    for i in range(3):
        outs.append(tmp_path / f"shard{i}")
        r = deal_client(
            "score",
            pool,
            "-k",
            K,
            "--model",
            tiny_onnx,
            "--out",
            outs[-1],
            "--shard",
            f"{i}/3",
            "--batch-size",
            3,
        )
        # a shard's size depends on its paths' hash, and so on the temporary folder's name:
        # a shard of fewer than K images selects them all and says so (exit 3)
        assert r.exit_code == (0 if len(records(outs[-1])) >= K else 3), r.stderr
    sizes = [len(records(o)) for o in outs]
    assert sum(sizes) == len(records(reference)) and min(sizes) > 0
    merged = tmp_path / "merged"
    r = deal_client("merge", *outs, "--out", merged, "--json")
    assert r.exit_code == 0, r.stderr
    assert_same_selection(json.loads(r.stdout), selection(reference))
    assert_same_selection(selection(merged), selection(reference))
    assert len(records(merged)) == len(records(reference))
    r = deal_client("merge", *outs, "--out", merged, "-s", "coreset", "-k", 3)
    assert r.exit_code == 0 and selection(merged)["strategy"] == "coreset"


# ----------------------------------------------------------------------------------- maps
def test_map_names_stay_inside_and_unique() -> None:
    paths = [
        "/a/x.jpg",
        "/b/x.jpg",
        "/c/../../etc/passwd.jpg",
        "/d/.hidden.png",
        "/e/..jpg",
        "/f/" + "long" * 80 + ".jpg",
        "/g/caf\udce9 photo (1).jpg",
        "/h/\u00e9t\u00e9.png",
    ]
    names = [map_name(i, p) for i, p in enumerate(paths, 1)]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert name.endswith(".png") and len(name) < 80 and name.isascii()
    assert map_name(1, "/a/x.jpg") != map_name(1, "/b/x.jpg")


def test_maps_are_written_for_the_selection(tiny_onnx: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    for sub in ("left", "right"):  # equal basenames in two folders
        (pool / sub).mkdir(parents=True)
        Image.new("RGB", (80, 60), (200, 30, 30) if sub == "left" else (20, 30, 200)).save(
            pool / sub / "frame.png"
        )
    out = tmp_path / "out"
    r = deal_client("score", pool, "-k", 2, "--model", tiny_onnx, "--out", out, "--maps")
    assert r.exit_code == 0, r.stderr
    maps = sorted(p for p in (out / "maps").iterdir() if p.name.count(".") == 1)
    assert len(maps) == 2 and maps[0].name.startswith("0001_frame_")
    spec = spec_of_out(out)
    h, w = spec.input_size
    for m in maps:
        with Image.open(m) as im:  # caption above, colour bar and legend below the panels
            assert im.size[0] == 3 * w + 8 and im.size[1] > h and im.mode == "RGB"
        for layer, size in ((".dif", spec.difficulty_size), (".seg", spec.segmentation_size)):
            with Image.open(m.with_name(m.stem + layer + ".png")) as im:
                assert im.mode == "L" and im.size == size[::-1]


# ---------------------------------------------------------------------- errors and usage
def test_usage_errors_exit_2(pool: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    assert deal_client("score", pool, "--model", tiny_onnx).exit_code == 2  # no --top-k
    assert deal_client("score", pool, "-k", 1, "--shard", "3/3").exit_code == 2
    both = deal_client("score", pool, "-k", 1, "--model", tiny_onnx, "--url", "x:1")
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    assert deal_client("score", tmp_path / "missing", "-k", 1).exit_code == 2
    assert deal_client("score", pool, "-k", 1, "-s", "magic").exit_code == 2


def test_fatal_errors_exit_1_with_one_message(tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx

    empty = tmp_path / "empty"
    empty.mkdir()
    r = deal_client("score", empty, "-k", 1, "--model", tiny_onnx, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "holds no images" in r.stderr
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    write_pool(tmp_path / "pool", 2)
    r = deal_client("score", tmp_path / "pool", "-k", 1, "--model", bare, "--out", tmp_path / "o")
    assert r.exit_code == 1
    assert "lacks dealseg.contract_version" in r.stderr and len(r.stderr.splitlines()) == 1


def test_stdin_pool(pool: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in pool.rglob("*.png"))[:4]
    r = deal_client(
        "score",
        "-",
        "-k",
        2,
        "--model",
        tiny_onnx,
        "--out",
        tmp_path,
        input="\n".join(paths).encode(),
    )
    assert r.exit_code == 0 and sorted(x["path"] for x in records(tmp_path)) == paths


def test_the_shipped_model_is_the_default(tmp_path: Path) -> None:
    from dealseg.client.engines import default_model_path
    from dealseg.core.modelfile import read_onnx_spec

    write_streets_pool(tmp_path / "pool", 2)
    r = deal_client("score", tmp_path / "pool", "-k", 1, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert selection(tmp_path / "out")["model"] == read_onnx_spec(default_model_path()).model_id


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("127.0.0.1:99999", "port '99999' is not a number in 1..65535"),
        ("127.0.0.1", "needs a port, e.g. 127.0.0.1:8001"),
        ("http://127.0.0.1:8000", "is a Triton HTTP endpoint: add --protocol http"),
        ("ftp://127.0.0.1:8000", "unknown scheme 'ftp'"),
        ("127.0.0.1:8001/v2", "without a path"),
    ],
)
def test_a_url_that_is_no_endpoint_is_a_usage_error(
    url: str, words: str, pool: Path, tmp_path: Path
) -> None:
    r = deal_client("score", pool, "-k", 1, "--url", url, "--out", tmp_path / "out")
    assert r.exit_code == 2 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_names_with_control_characters_never_split_a_listing(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    pool, out = write_pool(tmp_path / "pool", 6, seed=7), tmp_path / "out"
    image = next(pool.rglob("*.png")).read_bytes()
    odd = pool / "odd"
    odd.mkdir()
    for name in ("line\nbreak.png", "carriage\rreturn.png", "tab\there.png", "esc\x1b[31m.png"):
        (odd / name).write_bytes(image)
    (pool / ".hidden.png").write_bytes(image)  # hidden: skipped, and counted
    (pool / "cam0" / "._junk.png").write_bytes(b"AppleDouble")
    (pool / ".thumbnails").mkdir()
    (pool / ".thumbnails" / "t.png").write_bytes(image)
    r = deal_client("score", pool, "-k", 4, "--model", tiny_onnx, "--out", out)
    assert r.exit_code == 3, r.stderr
    assert "skipped 2 hidden image file(s) and 1 hidden folder(s)" in r.stderr
    by_name = {os.path.basename(x["path"]): x for x in records(out)}
    assert len(by_name) == 10
    for name in ("line\nbreak.png", "carriage\rreturn.png"):
        assert "line break" in by_name[name]["error"]
    assert by_name["tab\there.png"]["status"] == by_name["esc\x1b[31m.png"]["status"] == "ok"
    listed = (out / "selection.txt").read_bytes().splitlines()
    assert len(listed) == 4 and all(os.path.isfile(p) for p in listed)
    assert "\x1b" not in r.stdout + r.stderr and "\t" not in r.stdout.replace("  ", "")
    # every image selected once: the labelled list removes exactly the first picks
    again = deal_client(
        "select", out, "-k", 20, "--labeled", out / "selection.txt", "--out", tmp_path / "again"
    )
    assert again.exit_code == 3, again.stderr  # fewer than k: said why
    assert "selected 4 of the 20 asked: 4 images to pick from (4 of 8 excluded)" in again.stderr
    second = (tmp_path / "again" / "selection.txt").read_bytes().splitlines()
    assert len(second) == 8 - 4 and not set(second) & set(listed)


def run_limited(limit: int, *args: object) -> subprocess.CompletedProcess:
    """`deal-client ARGS` in a process whose files may not grow past `limit` bytes (RLIMIT_FSIZE:
    writes fail with EFBIG, as they fail with ENOSPC on a full disk)."""
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "dealseg.client", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit_files)


def test_a_full_disk_ends_in_one_message_and_the_run_resumes(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    pool, out = write_pool(tmp_path / "pool", 120, size=(40, 48), seed=8), tmp_path / "out"
    args = ["score", pool, "-k", K, "--model", tiny_onnx, "--out", out, "--no-progress"]
    r = run_limited(200, *args)  # meta.json is larger than 200 bytes: its write fails
    assert r.returncode == 1, r.stderr
    assert f"cannot write {out / 'meta.json'}: File too large" in r.stderr
    assert "Traceback" not in r.stderr and not list(out.glob(".*tmp*"))
    r = run_limited(20_000, *args, "--batch-size", 4)  # room for some of the records only
    assert r.returncode == 1, r.stderr
    assert "File too large" in r.stderr and "run the same command again" in r.stderr
    assert "Traceback" not in r.stderr
    assert 0 < len((out / "scores.jsonl").read_bytes().splitlines()) < 120
    rerun = deal_client(*args)
    assert rerun.exit_code == 0, rerun.stderr
    assert len(records(out)) == len({x["path"] for x in records(out)}) == 120
    under_a_file = next(pool.rglob("*.png")) / "out"  # a folder that cannot be made
    r = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", under_a_file)
    assert r.exit_code == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ packaging
def test_client_imports_without_torch_or_heavy_modules_for_help() -> None:
    code = (
        "import sys, dealseg.client.cli as c\n"
        "heavy = [m for m in ('numpy', 'PIL', 'onnxruntime', 'tritonclient', 'tqdm', 'matplotlib')"
        " if m in sys.modules]\n"
        "import dealseg.client.scoring, dealseg.client.engines, dealseg.client.maps\n"
        "import dealseg.core.ranking, dealseg.client.outdir, dealseg.core.decode\n"
        "import dealseg.client.evaluation, dealseg.client.fleet, dealseg.client.parquet\n"
        "lazy = [m for m in ('ray', 'pyarrow') if m in sys.modules]\n"
        "print(heavy, 'torch' in sys.modules, lazy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "[]"], out.stdout
    helped = subprocess.run([sys.executable, "-m", "dealseg.client", "--help"], capture_output=True)
    assert helped.returncode == 0 and b"score" in helped.stdout


def test_cli_constants_match_the_library() -> None:
    from dealseg.core.decode import DEFAULT_MAX_PIXELS as decode_max
    from dealseg.core.decode import RESIZE_MODES as decode_modes
    from dealseg.core.ranking import STRATEGIES

    assert sorted(STRATEGY_NAMES) == sorted(STRATEGIES)
    assert decode_max == DEFAULT_MAX_PIXELS and decode_modes == RESIZE_MODES
