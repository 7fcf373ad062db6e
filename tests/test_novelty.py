"""The novelty score: its definition on hand-made numbers, its statistics fitted at export and
carried by re-export, the selection rules that cap or exclude off-domain frames, and the score
served by the shipped model through ONNX Runtime and the real Triton server into every format.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import OFF_DOMAIN, deal_client, records, selection, write_streets_and_off_domain

import dealseg
from dealseg.core.ranking import Options, Pool, choose
from dealseg.training.novelty import NOVELTY_KEY, distances, fit_novelty
from dealseg.training.scores import novelty_score

OFF = OFF_DOMAIN  # the off-domain frames of the mixed pool


def test_novelty_is_the_share_of_reference_frames_nearer_then_grows_beyond_them() -> None:
    mean, precision = torch.zeros(2), torch.eye(2)
    reference = torch.tensor([1.0, 4.0, 9.0])  # squared distances, sorted
    embedding = torch.tensor([[0.5, 0.0], [1.5, 0.0], [0.0, 2.5], [4.0, 0.0], [30.0, 0.0]])
    got = novelty_score(embedding, mean, precision, reference)
    expected = [0.0, 1 / 4, 2 / 4, (3 + 1 - 9 / 16) / 4, (3 + 1 - 9 / 900) / 4]
    assert got.tolist() == pytest.approx(expected)
    assert bool(torch.all(got[1:] > got[:-1])) and float(got.max()) < 1.0


def test_a_threshold_means_the_share_of_held_out_frames_further() -> None:
    """Fitted on one sample and calibrated on another of the same distribution, a third
    sample's novelty is near uniform: a tenth above 0.9, a hundredth above 0.99; frames of
    another distribution are above 0.99."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, 8)
    train, val, test = (rng.normal(0, 1, (n, 8)) * scale for n in (2000, 1000, 4000))
    stats = fit_novelty(train, val)
    assert np.all(np.diff(stats.reference) >= 0) and len(stats.reference) == 1000

    def novelty(x: np.ndarray) -> np.ndarray:
        args = (stats.mean, stats.precision, stats.reference)
        tensors = (torch.from_numpy(a) for a in args)
        return novelty_score(torch.from_numpy(x.astype(np.float32)), *tensors).numpy()

    inside = novelty(test)
    assert np.mean(inside > 0.9) == pytest.approx(0.1, abs=0.02)
    assert np.mean(inside > 0.99) == pytest.approx(0.01, abs=0.006)
    assert np.all(novelty(test[:100] * 3 + 4) > 0.99)
    assert sorted(distances(stats, val).tolist()) == pytest.approx(stats.reference.tolist())


def test_selection_caps_or_excludes_the_off_domain_images() -> None:
    paths = [f"/p/{c}.png" for c in "abcdefg"]
    scores = {
        "entropy": np.array([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        "novelty": np.array([1.0, 0.995, 0.2, 0.3, 0.999, 0.1, np.nan]),  # NaN: unknown
    }
    pool = Pool(paths, scores)

    def picked(k: int, **options: object) -> list[str]:
        return [paths[p.index][3] for p in choose(pool, "entropy", k, Options(**options)).picks]

    assert picked(3) == ["a", "b", "c"]  # no rule: ranked like any other
    assert picked(3, novel_share=0.0) == ["c", "d", "f"]
    assert picked(3, novel_share=0.34) == ["a", "c", "d"]  # floor(0.34 * 3) = 1, the best
    assert picked(4, novel_share=0.0, novel_threshold=0.996) == ["b", "c", "d", "f"]
    assert picked(6, novel_share=0.0) == ["c", "d", "f", "g"]  # unknown is never off-domain
    chosen = choose(pool, "entropy", 6, Options(novel_share=0.0))
    assert chosen.novel_excluded == 3
    assert any("3 of them off-domain" in why for why in chosen.shortfall(6, Options()))
    with pytest.raises(ValueError, match="--max-novel-share"):
        choose(pool, "entropy", 3, Options(novel_share=1.5))


@pytest.mark.slow
def test_export_fits_the_statistics_and_reexport_keeps_them(
    tiny_checkpoint: Path, streets: Path, tmp_path: Path
) -> None:
    """`deal-export onnx --novelty-data`: fitted on the 21 train frames, calibrated on the 3
    val frames, whose own novelty is then their rank among themselves (0, 1/4, 2/4, each maybe
    one step up: a frame's distance meets its own reference value); the graph computes what the
    carried statistics say; `reexport` keeps them, and a graph without them says NaN."""
    import onnx
    import onnxruntime as ort
    from click.testing import CliRunner

    from dealseg.core import contract
    from dealseg.export.cli import main as export_cli
    from dealseg.export.novelty import carried_novelty
    from dealseg.training.novelty import split_frames

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model, again = tmp_path / "m.onnx", tmp_path / "again.onnx"
    args = ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(model)]  # compared too
    done = CliRunner().invoke(export_cli, [*args, "--novelty-data", str(streets)])
    assert done.exit_code == 0, done.output
    assert "fitted on 21 train frames, calibrated on 3 val frames" in done.output
    assert "| novelty |" in done.output and "parity: OK" in done.output
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(meta[NOVELTY_KEY])["fitted"] == 21
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = contract.session_spec(session)
    val = np.concatenate(list(split_frames(streets, "val", spec.input_size)))
    novelty, emb = session.run(["novelty", "embedding"], contract.model_inputs(spec, val))
    stats = carried_novelty(model)
    assert stats is not None and stats.fitted == 21 and len(stats.reference) == 3
    step = 1 / 4  # 1 / (R + 1): a frame's own reference distance, computed by torch, may count
    ranks = np.sort(novelty) / step  # (float noise between ORT and torch) on either side of it
    assert np.all((np.abs(ranks - [0, 1, 2]) < 1e-6) | (np.abs(ranks - [1, 2, 3]) < 1e-6))
    constants = (torch.from_numpy(a) for a in (stats.mean, stats.precision, stats.reference))
    recomputed = novelty_score(torch.from_numpy(emb), *constants).numpy()
    assert np.abs(recomputed - novelty).max() <= step + 1e-6
    done = CliRunner().invoke(export_cli, ["reexport", "--model", str(model), "--out", str(again)])
    assert done.exit_code == 0, done.output
    kept = carried_novelty(again)
    assert kept is not None
    for name in ("mean", "precision", "reference"):
        assert np.array_equal(getattr(kept, name), getattr(stats, name))
    plain = tmp_path / "plain.onnx"
    done = CliRunner().invoke(
        export_cli, ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(plain)]
    )
    assert done.exit_code == 0 and "novelty: none" in done.output, done.output
    bare = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    assert np.isnan(bare.run(["novelty"], contract.model_inputs(spec, val))[0]).all()


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six in-domain street frames and one frame of each of three off-domain kinds."""
    return write_streets_and_off_domain(tmp_path_factory.mktemp("mixed"))


def off_domain(paths: list[str]) -> list[str]:
    return sorted(Path(p).stem for p in paths if Path(p).stem in OFF)


def picked(out: Path) -> list[str]:
    return [row["path"] for row in selection(out)["rows"]]


def test_the_shipped_model_names_off_domain_frames_and_selection_leaves_them(
    mixed_pool: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    r = deal_client("score", mixed_pool, "-k", 5, "--out", out, "--report")
    assert r.exit_code == 0, r.stderr
    assert "left out 3 off-domain images (novelty above 0.99; 3 in the pool)" in r.stderr
    novelty = {Path(x["path"]).stem: x["novelty"] for x in records(out)}
    assert all(novelty[name] > 0.99 for name in OFF)
    assert all(v < 0.99 for name, v in novelty.items() if name not in OFF)
    chosen = selection(out)
    assert off_domain(picked(out)) == []
    assert chosen["off_domain"] == {
        "threshold": 0.99,
        "known": True,
        "pool": 3,
        "excluded": 3,
        "picked": 0,
    }
    page = (out / "report.html").read_text()
    assert "<b id=off-domain>3</b> of 9 images are off-domain" in page
    assert "never picked" in page and page.count("<tr><td title=") == 3
    kept = tmp_path / "kept"
    r = deal_client("select", out, "-k", 9, "--keep-novel", "--out", kept, "--report")
    assert r.exit_code == 0, r.stderr
    assert off_domain(picked(kept)) == sorted(OFF)
    assert (kept / "report.html").read_text().count("class='card novel'") == 3
    capped = tmp_path / "capped"
    r = deal_client("select", out, "-k", 4, "--max-novel-share", 0.5, "--out", capped)
    assert r.exit_code == 0, r.stderr
    assert len(off_domain(picked(capped))) == 2
    r = deal_client("select", out, "-k", 9, "--out", tmp_path / "short")
    assert r.exit_code == 3 and "3 of them off-domain (novelty above 0.99" in r.stderr
    r = deal_client("export", kept, "--format", "csv", "--dest", tmp_path / "csv")
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "csv" / "selection.csv", newline="") as f:
        rows = {Path(row["local_path"]).stem: float(row["novelty"]) for row in csv.DictReader(f)}
    assert rows == pytest.approx({name: novelty[name] for name in rows})


def test_parquet_and_regions_carry_novelty(mixed_pool: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    r = deal_client("score", mixed_pool, "--regions", "20%", "--format", "parquet", "--out", out)
    assert r.exit_code == 0, r.stderr
    table = pq.read_table(out / "scores.parquet")
    paths, values = table.column("path").to_pylist(), table.column("novelty").to_pylist()
    novelty = dict(zip(paths, values, strict=True))
    assert off_domain([p for p, v in novelty.items() if v > 0.99]) == sorted(OFF)
    bought = [json.loads(line)["path"] for line in (out / "regions.jsonl").open()]
    assert bought and off_domain(bought) == []
    assert selection(out)["off_domain"]["excluded"] == 3


def readme_commands() -> list[list[str]]:
    """The deal-client commands of the README's "Off-domain frames" first code block."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Off-domain frames") :]
    start = section.index("```\n") + 4
    block = section[start : section.index("```", start)]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readme_commands_run_as_it_says(
    mixed_pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(mixed_pool, tmp_path / "pool")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["deal-client", "score"]] + [
        ["deal-client", "select"]
    ] * 3 + [["deal-client", "score"]]
    for command in commands:
        r = deal_client(*command[1:])
        assert r.exit_code in (0, 3), r.stderr  # 3: fewer than k = 100 in a pool of 9
    assert off_domain(picked(tmp_path / "deal-out")) == []
    assert (tmp_path / "deal-out" / "report.html").is_file()
    assert off_domain(picked(tmp_path / "kept")) == sorted(OFF)
    assert off_domain(picked(tmp_path / "capped")) == sorted(OFF)  # 3 of at most 10
    assert selection(tmp_path / "strict")["off_domain"]["threshold"] == 0.95
    bought = [json.loads(line)["path"] for line in (tmp_path / "regions" / "regions.jsonl").open()]
    assert off_domain(bought) == []


def test_the_bench_measures_each_kind_against_held_out_streets(streets: Path) -> None:
    """bench/novelty.py (the README's measurement) on the tiny street set, a frame a kind."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "novelty.py"
    model = dealseg.shipped_repository() / "deal" / "1" / "model.onnx"
    args = ["--data", str(streets), "--model", str(model), "--per-kind", "1", "--no-photos"]
    done = subprocess.run(
        [sys.executable, str(bench), *args, "--top-k", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "in-domain (test split): 6 frames" in done.stdout
    rows = re.findall(r"^\| (tune|judge) \| all \w+ \| (\d+) \| ([\d.]+) \|", done.stdout, re.M)
    assert [(family, int(n)) for family, n, _ in rows] == [("tune", 6), ("judge", 6)]
    assert all(0.0 <= float(value) <= 1.0 for _, _, value in rows)
    assert "| entropy | 2 | exclude | 0 |" in done.stdout


@pytest.mark.triton
@pytest.mark.slow
def test_triton_serves_the_shipped_novelty(mixed_pool: Path, tmp_path: Path) -> None:
    from dealseg.serving.server import TritonServer

    repo = shutil.copytree(dealseg.shipped_repository(), tmp_path / "repo")
    embedded = tmp_path / "embedded"
    assert deal_client("score", mixed_pool, "-k", 3, "--out", embedded).exit_code == 0
    with TritonServer(repo) as server:
        served = tmp_path / "served"
        r = deal_client("score", mixed_pool, "-k", 3, "--url", server.url_grpc, "--out", served)
    assert r.exit_code == 0, r.stderr
    ours = {x["path"]: x["novelty"] for x in records(served)}
    theirs = {x["path"]: x["novelty"] for x in records(embedded)}
    assert ours.keys() == theirs.keys()
    assert [ours[p] for p in sorted(ours)] == pytest.approx([theirs[p] for p in sorted(ours)])
    assert picked(served) == picked(embedded)
