"""The active-learning loop: selection on hand-made inputs, acquisition, a tiny 2-stage run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dealseg.core.contract import ModelSpec
from dealseg.training.acquisition import (
    STRATEGIES,
    StageContext,
    acquire,
    embedding_batch,
    image_paths,
    infer,
    needs_model,
    pool_subset,
    vote_entropy,
)
from dealseg.training.al import Protocol, initial_labeled, run_al, stage_sizes
from dealseg.training.cli import main, parse_overrides
from dealseg.training.config import resolve_config
from dealseg.training.data import SegmentationDataset
from dealseg.training.model import DEALNet, ModelConfig, normalise
from dealseg.training.scores import difficulty_entropy, difficulty_score, softmax_entropy

TINY_MODEL = ModelConfig(
    decoder_width=16, separable=True, attention_size=(8, 10), input_size=(64, 80)
)
TINY_OVERRIDES = [
    "decoder_width=16",
    "attention_size=[8,10]",
    "input_size=[64,80]",
    "epochs=1",
    "batch_size=4",
    "crop=[64,64]",
    "val_every=1",
    "scale=[1.0,1.0]",
    "threads=1",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit_circle(*degrees: float) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


@pytest.fixture(scope="module")
def tiny_model() -> DEALNet:
    torch.manual_seed(0)
    model = DEALNet(TINY_MODEL, pretrained=False)
    with torch.no_grad():
        model.difficulty_head.gamma.fill_(0.5)
        model.segmentation_head.bias.zero_()  # argmax driven by features, so dropout flips it
        model.segmentation_head.weight.mul_(10.0)
    return model.eval()


def test_empty_pool_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unlabelled pool is empty"):
        acquire("random", StageContext(Path("."), None), [], 3)


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="choose one of: coreset, de, de\\+coreset, ds, ds\\+co"):
        STRATEGIES["vaal"]


def test_only_random_runs_without_the_model() -> None:
    assert [n for n in sorted(STRATEGIES) if not needs_model(n)] == ["random"]


def test_pool_subset_is_seeded_sorted_and_at_least_k() -> None:
    pool = list(range(100, 140))
    a = pool_subset(pool, 0.5, 5, seed=0, stage=1)
    assert a == sorted(a) and len(a) == 20 and set(a) <= set(pool)
    assert a == pool_subset(pool, 0.5, 5, seed=0, stage=1)
    assert a != pool_subset(pool, 0.5, 5, seed=1, stage=1)
    assert len(pool_subset(pool, 0.1, 30, seed=0, stage=1)) == 30
    assert pool_subset(pool, None, 5, seed=0, stage=1) == pool


def test_stage_sizes_follow_the_paper() -> None:
    assert stage_sizes(700, 0.10, 0.05, 0.40) == [70, 105, 140, 175, 210, 245, 280]
    assert stage_sizes(367, 0.10, 0.05, 0.40)[:2] == [37, 55]
    with pytest.raises(ValueError, match="adds no image"):
        stage_sizes(10, 0.1, 0.01, 0.2)


# ------------------------------------------------------------------------ torch acquisition
def test_vote_entropy_by_hand() -> None:
    votes = torch.tensor([[[[0, 1]]], [[[0, 1]]], [[[0, 2]]], [[[0, 2]]]])  # [T=4, B=1, 1, 2]
    assert vote_entropy(votes, 3).item() == pytest.approx(math.log(2) / 2)


def test_qbc_scores_are_positive_and_seeded(streets: Path, tiny_model: DEALNet) -> None:
    candidates = list(range(8))
    ctx = StageContext(streets, tiny_model, seed=3, stage=1, passes=10)
    state = torch.random.get_rng_state()
    a = acquire("qbc", ctx, candidates, 8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert min(a.scores) > 0
    assert a == acquire("qbc", ctx, candidates, 8)
    assert (
        a.scores != acquire("qbc", StageContext(streets, tiny_model, seed=4), candidates, 8).scores
    )
    assert not tiny_model.training


def test_ds_de_entropy_are_the_graph_functions(streets: Path, tiny_model: DEALNet) -> None:
    indices = [3, 1, 7, 0, 12, 5]
    data = SegmentationDataset(streets, "train", size=TINY_MODEL.input_size, indices=indices)
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        out = tiny_model(normalise(images, TINY_MODEL.mean, TINY_MODEL.std))
    expected = {
        "ds": difficulty_score(out.difficulty()),
        "de": difficulty_entropy(out.difficulty(), 5),
        "entropy": softmax_entropy(out.logits),
    }
    ctx = StageContext(streets, tiny_model, bins=5, batch_size=len(indices))
    for name, want in expected.items():
        got = infer(ctx, indices, STRATEGIES[name].batch_fn)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)
        picked = acquire(name, ctx, indices, 3)
        by_index = dict(zip(indices, want.tolist(), strict=True))
        order = sorted(sorted(indices), key=lambda i: -by_index[i])[:3]
        assert picked.indices == order


def test_coreset_picks_unlabelled_distinct_images(streets: Path, tiny_model: DEALNet) -> None:
    ctx = StageContext(streets, tiny_model, labeled=(0, 1, 2))
    picked = acquire("coreset", ctx, range(3, 12), 4)
    assert len(set(picked.indices)) == 4 and set(picked.indices) <= set(range(3, 12))
    assert picked.scores == sorted(picked.scores, reverse=True)


def test_the_loop_and_the_client_pick_the_same_frames_from_the_same_scores(
    streets: Path, tiny_model: DEALNet, tmp_path: Path
) -> None:
    """The loop's scores written as a client out dir, re-selected by `deal-client select`."""
    from dealseg.client.cli import main as client_main
    from dealseg.client.outdir import open_writer

    candidates, labeled = list(range(3, 21)), (0, 1, 2)
    ctx = StageContext(streets, tiny_model, labeled=labeled, bins=8, batch_size=6)
    paths = image_paths(ctx, candidates)
    scores = {n: infer(ctx, candidates, STRATEGIES[n].batch_fn) for n in ("ds", "de", "entropy")}
    emb = infer(ctx, candidates, embedding_batch)
    spec = ModelSpec(
        tuple("abc"),
        ((0, 0, 0),) * 3,
        (64, 80),
        (8, 10),
        (16, 20),
        emb.shape[1],
        8,
        (0.5,) * 3,
        (0.5,) * 3,
        "1",
        "0" * 64,
    )
    out = tmp_path / "out"
    with open_writer(out, spec) as writer:
        outputs = {**scores, "class_fraction": np.zeros((18, 3)), "embedding": emb}
        writer.append_batch(paths, outputs)
    np.save(tmp_path / "labeled.npy", infer(ctx, labeled, embedding_batch))
    for name in ("ds", "de", "entropy", "coreset", "ds+coreset", "entropy+coreset"):
        args = ["select", str(out), "-k", "6", "--strategy", name, "--json", "--force"]
        if name.endswith("coreset"):
            args += ["--labeled", str(tmp_path / "labeled.npy")]
        result = CliRunner().invoke(client_main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        client = [row["path"] for row in json.loads(result.stdout)["rows"]]
        loop = [paths[candidates.index(i)] for i in acquire(name, ctx, candidates, 6).indices]
        assert client == loop, name


# ----------------------------------------------------------------------- the loop, end to end
def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_stage_loop_end_to_end_and_resume(streets: Path, tmp_path: Path) -> None:
    out = tmp_path / "al"
    args = [
        "al",
        "--data",
        str(streets),
        "--out",
        str(out),
        "--strategies",
        "ds,random",
        "--init",
        "0.2",
        "--step",
        "0.2",
        "--max",
        "0.4",
        "--full",
        *TINY_OVERRIDES,
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Test mIoU")  # only the table on stdout
    assert "| DEAL (DS) |" in result.stdout and "| Random |" in result.stdout
    assert "95% of full" in result.stdout
    assert result.stderr.count("al ds seed 0 stage") == 2

    states = {s: _read(out / s / "seed0" / "state.json") for s in ("ds", "random")}
    first = initial_labeled(21, 0.2, 0)
    for state in states.values():
        stages = state["stages"]
        assert [len(s["labeled"]) for s in stages] == [4, 8]
        assert state["settings"]["train"]["samples_per_epoch"] == 21  # the pool, every stage
        assert stages[0]["labeled"] == first  # the same initial set for every strategy
        picked = stages[0]["selection"]["indices"]
        assert len(picked) == 4 and not set(picked) & set(first)
        assert stages[1]["labeled"] == sorted(first + picked)
        assert len(set(stages[1]["labeled"])) == 8 and "selection" not in stages[1]
        assert all(0 <= s["test_miou"] <= 1 for s in stages)
        assert (out / stages[1]["run_dir"] / "best.pt").is_file()
    assert states["ds"]["stages"][0]["run_dir"] == states["random"]["stages"][0]["run_dir"]

    results = _read(out / "results.json")
    assert results["strategies"] == ["ds", "random"] and results["seeds"] == [0]
    assert results["config"]["model"]["decoder_width"] == 16
    assert results["summary"]["ds"]["mean"] == [s["test_miou"] for s in states["ds"]["stages"]]
    assert results["full"]["test_miou"] > 0
    assert results["area"]["ds"]["n"] == 1 and 0 < results["area"]["ds"]["mean"] < 1
    picks = results["picks"]
    assert 0 <= picks["pool"]["rare_class"] < 1 and picks["pool"]["rare_condition"] is not None
    assert set(picks["strategies"]) == {"ds", "random"}
    assert "rare-condition frames" in result.stdout
    assert (out / "results.md").read_text().strip() in result.stdout
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # interrupt: forget ds's last stage; the rerun redoes that stage only
    state_path = out / "ds" / "seed0" / "state.json"
    before = _read(state_path)
    best = out / before["stages"][0]["run_dir"] / "best.pt"
    stamp = best.stat().st_mtime_ns
    state_path.write_text(json.dumps({**before, "stages": before["stages"][:1]}))
    cfg = resolve_config("streets-cpu", None, parse_overrides(tuple(TINY_OVERRIDES)))
    run_al(streets, out, cfg, ["ds", "random"], [0], Protocol(init=0.2, step=0.2), quiet=True)
    after = _read(state_path)
    assert after["stages"][0] == before["stages"][0]
    assert after["stages"][1]["labeled"] == before["stages"][1]["labeled"]
    assert after["stages"][1]["test_miou"] == before["stages"][1]["test_miou"]
    assert best.stat().st_mtime_ns == stamp  # stage 0 was not retrained
    assert _read(out / "random" / "seed0" / "state.json") == states["random"]

    # another seed with --full: its own full-data reference; seed 0's is reused, not retrained
    full0 = out / "full" / "seed0" / "best.pt"
    stamp = full0.stat().st_mtime_ns
    two = run_al(
        streets, out, cfg, ["random"], [0, 1], Protocol(init=0.2, step=0.2), full=True, quiet=True
    )
    assert [r["seed"] for r in two["full"]["runs"]] == [0, 1]
    assert full0.stat().st_mtime_ns == stamp
    assert two["summary"]["random"]["n"] == [2, 2]

    with pytest.raises(ValueError, match=r"other settings \(changed: sizes, step\)"):
        run_al(streets, out, cfg, ["ds"], [0], Protocol(init=0.2, step=0.1))

    # --report-only: the table of what the state.json files record; nothing is trained
    state_path.write_text(json.dumps({**before, "stages": before["stages"][:1]}))
    (out / "results.json").unlink()
    report = CliRunner().invoke(main, [*args, "--report-only"], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    partial = _read(out / "results.json")
    assert partial["summary"]["ds"]["mean"] == [before["stages"][0]["test_miou"], None]
    assert partial["summary"]["random"] == results["summary"]["random"]
    assert _read(state_path)["stages"] == before["stages"][:1]
    assert "al ds seed 0 stage" not in report.stderr


def test_area_under_the_curve_is_the_mean_miou_over_the_range() -> None:
    from dealseg.training.report import area_under_curve

    def run(*mious: float) -> dict:
        return {"stages": [{"test_miou": m} for m in mious]}

    area = area_under_curve([run(0.2, 0.4, 0.4), run(0.3, 0.3, 0.3), run(0.1)], [0.1, 0.2, 0.3])
    # trapezoids: (0.3 + 0.4) / 2 = 0.35 and 0.3; the unfinished run does not count
    assert area["n"] == 2 and area["mean"] == pytest.approx(0.325)
    assert area["std"] == pytest.approx(np.std([0.35, 0.3], ddof=1))


def test_a_config_field_added_later_at_its_default_is_no_change() -> None:
    from dealseg.training.al import _with_new_defaults
    from dealseg.training.config import TrainConfig

    configs = {"model": asdict(TINY_MODEL), "train": asdict(TrainConfig()), "init": 0.1}
    current = json.loads(json.dumps(configs))
    recorded = {**current, "model": dict(current["model"]), "train": dict(current["train"])}
    del recorded["model"]["difficulty_hidden"]  # written before the fields existed
    del recorded["train"]["refit_l2"]
    assert _with_new_defaults(recorded) == current
    recorded["model"]["difficulty_hidden"] = 4  # a recorded value is never overridden
    assert _with_new_defaults(recorded)["model"]["difficulty_hidden"] == 4


def test_cli_rejects_unknown_strategy(streets: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["al", "--data", str(streets), "--out", str(tmp_path), "--strategies", "ds,vaal"]
    )
    assert result.exit_code == 2 and "vaal" in result.output
