"""An out dir remembers what made it, and what is made from its selection lives and dies with
it: the settings that change a score are in meta.json, a resume with others is refused, select
draws maps as the run framed its pictures; a new selection removes the report and the exports
of the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from helpers import deal_client, selection, write_wide_pool

K = 2


@pytest.fixture(scope="module")
def wide_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wide_pool(tmp_path_factory.mktemp("wide") / "pool", count=4)


@pytest.fixture(scope="module")
def letterboxed(wide_pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --resize letterbox run of the 16:9 pool, with its maps."""
    out = tmp_path_factory.mktemp("letterboxed")
    r = score(wide_pool, tiny_onnx, out, K, "--resize", "letterbox", "--maps")
    assert r.exit_code == 0, r.stderr
    return out


def score(pool: Path, model: Path, out: Path, k: int, *args: object) -> Result:
    """`deal-client score POOL -k K --model MODEL --out OUT ARGS`, no progress bar."""
    return deal_client(
        "score", pool, "-k", k, "--model", model, "--out", out, "--no-progress", *args
    )


def maps_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "maps").glob("*.png"))}


def test_meta_records_the_settings_that_change_a_score(letterboxed: Path) -> None:
    meta = json.loads((letterboxed / "meta.json").read_text())
    assert meta["settings"] == {"resize": "letterbox", "regions": None}


def test_a_resume_with_another_resize_is_refused(
    letterboxed: Path, wide_pool: Path, tiny_onnx: Path
) -> None:
    before = (letterboxed / "scores.jsonl").read_bytes()
    for resize in ("stretch", "crop"):
        r = score(wide_pool, tiny_onnx, letterboxed, K, "--resize", resize)
        assert r.exit_code == 1, r.stderr
        assert f"made with --resize letterbox, but this run uses --resize {resize}" in r.stderr
    assert (letterboxed / "scores.jsonl").read_bytes() == before
    again = score(wide_pool, tiny_onnx, letterboxed, K, "--resize", "letterbox", "--maps")
    assert again.exit_code == 0 and "4 already done" in again.stderr, again.stderr


def test_select_draws_the_maps_as_the_run_framed_its_pictures(
    letterboxed: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    r = deal_client("select", letterboxed, "-k", K, "--out", out, "--maps", "--model", tiny_onnx)
    assert r.exit_code == 0, r.stderr
    assert selection(out)["rows"] == selection(letterboxed)["rows"]
    assert maps_of(out) and maps_of(out) == maps_of(letterboxed)


def test_a_merge_of_runs_with_other_settings_is_refused(
    letterboxed: Path, wide_pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    stretched = tmp_path / "stretched"
    r = score(wide_pool, tiny_onnx, stretched, K)
    assert r.exit_code == 0, r.stderr
    r = deal_client("merge", letterboxed, stretched, "-k", K, "--out", tmp_path / "merged")
    assert r.exit_code == 1 and "different settings" in r.stderr, r.stderr


def test_a_new_selection_removes_the_report_and_exports_of_the_old(
    wide_pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = score(wide_pool, tiny_onnx, out, K, "--report")
    assert first.exit_code == 0, first.stderr
    assert deal_client("export", out, "--format", "csv").exit_code == 0
    assert (out / "report.html").is_file() and (out / "export" / "csv").is_dir()
    same = score(wide_pool, tiny_onnx, out, K)
    assert same.exit_code == 0, same.stderr
    assert (out / "export" / "csv").is_dir()  # the same list: its exports stay
    assert not (out / "report.html").exists()  # its maps are gone, so is the page showing them
    (out / "report_files").mkdir(exist_ok=True)
    refused = score(wide_pool, tiny_onnx, out, K + 1)
    assert refused.exit_code == 1 and "holds another selection" in refused.stderr
    assert selection(out)["k"] == K and (out / "export" / "csv").is_dir()
    other = score(wide_pool, tiny_onnx, out, K + 1, "--force")
    assert other.exit_code == 0, other.stderr
    assert selection(out)["k"] == K + 1
    assert not (out / "export").exists() and not (out / "report_files").exists()
    assert not list((out / "maps").glob("*.png"))


def test_every_writer_of_an_out_dir_takes_its_lock(letterboxed: Path, tiny_onnx: Path) -> None:
    """With another writer holding OUT's lock, select, report and export write nothing."""
    import fcntl

    before = {p.name: p.read_bytes() for p in letterboxed.iterdir() if p.is_file()}
    with open(letterboxed / ".lock", "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another deal-client does
        runs = [
            ("select", letterboxed, "-k", K + 1, "--force", "--no-maps"),
            ("report", letterboxed),
            ("export", letterboxed, "--format", "csv"),
        ]
        for args in runs:
            r = deal_client(*args)
            assert r.exit_code == 1, (args, r.stderr)
            assert r.stderr.count("another deal-client is writing to") == 1, r.stderr
    after = {p.name: p.read_bytes() for p in letterboxed.iterdir() if p.is_file()}
    assert after == before and not (letterboxed / "export").exists()
    assert not (letterboxed / "report.html").exists()
