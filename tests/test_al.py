"""The active-learning loop: selection on hand-made inputs, acquisition, a tiny 2-stage run."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dealseg.training.acquisition import (
    STRATEGIES,
    Context,
    infer,
    k_center,
    pool_subset,
    select,
    top_k,
    vote_entropy,
)
from dealseg.training.al import initial_labeled, run_al, stage_sizes
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


def unit_circle(*degrees: float) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads that
    spin-wait for a core make them 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 tiny street scenes: 21 train, 3 val, 6 test."""
    from dealseg.training.synth import write_streets

    root = tmp_path_factory.mktemp("streets")
    write_streets(root, n=30, size=(64, 80), seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_model() -> DEALNet:
    torch.manual_seed(0)
    model = DEALNet(TINY_MODEL, pretrained=False)
    with torch.no_grad():
        model.difficulty_head.gamma.fill_(0.5)
        model.segmentation_head.bias.zero_()  # argmax driven by features, so dropout flips it
        model.segmentation_head.weight.mul_(10.0)
    return model.eval()


# --------------------------------------------------------------------- exact rankings: top-k
def test_top_k_higher_first_ties_by_index() -> None:
    scores = [0.5, 0.9, 0.5, 0.1]
    assert top_k(scores, 3).tolist() == [1, 0, 2]
    assert top_k(scores, 2).tolist() == [1, 0]  # the tie at the boundary goes to index 0
    assert top_k(scores, 10).tolist() == [1, 0, 2, 3]  # k > pool: the whole pool
    assert top_k([float("nan"), 0.2, 0.2], 3).tolist() == [1, 2, 0]  # NaN ranks last
    assert top_k(scores, 0).tolist() == []


def test_empty_pool_and_negative_k_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="pool is empty"):
        top_k([], 3)
    with pytest.raises(ValueError, match="pool is empty"):
        k_center(np.zeros((0, 2)), None, 3)
    with pytest.raises(ValueError, match="k must be"):
        top_k([1.0], -1)
    with pytest.raises(ValueError, match="unlabelled pool is empty"):
        select("random", Context(Path("."), None), [], 3)


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="choose one of: coreset, de, ds, entropy, qbc, random"):
        STRATEGIES["vaal"]


# ------------------------------------------------------------------ exact rankings: k-center
def test_k_center_on_the_unit_circle_from_a_labelled_centre() -> None:
    pool = unit_circle(10, 90, 180, 170, 270)
    picks, dist = k_center(pool, unit_circle(0), 5)
    # 180 is opposite the centre (d = 2); then 90 and 270 tie at d = 1 -> the lower index first;
    # then 10 and 170 tie at 1 - cos 10 (next to 0 and 180) -> index 0 first
    assert picks.tolist() == [2, 1, 4, 0, 3]
    near = 1 - math.cos(math.radians(10))
    np.testing.assert_allclose(dist, [2, 1, 1, near, near], atol=1e-12)


def test_k_center_respects_labelled_centres() -> None:
    pool = unit_circle(10, 90, 185)
    assert k_center(pool, unit_circle(0, 180), 1)[0].tolist() == [1]  # 10 and 185 are covered
    assert k_center(pool, unit_circle(0), 1)[0].tolist() == [2]  # only 0 is a centre


def test_k_center_without_centres_starts_farthest_from_the_mean() -> None:
    # mean direction is 10 degrees: 180 is farthest from it, then 0 (opposite 180), then 10
    picks, _ = k_center(unit_circle(0, 10, 180), None, 3)
    assert picks.tolist() == [2, 0, 1]


# ------------------------------------------------------------------------------- invariants
tied_scores = st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, float("nan")]), min_size=1)


@settings(max_examples=60, deadline=None)
@given(scores=tied_scores, k=st.integers(0, 12))
def test_top_k_is_the_stable_descending_order(scores: list[float], k: int) -> None:
    keyed = [-math.inf if math.isnan(s) else s for s in scores]
    expected = sorted(range(len(scores)), key=lambda i: (-keyed[i], i))[:k]
    assert top_k(scores, k).tolist() == expected
    assert len(expected) == min(k, len(scores))


vectors = st.lists(
    st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=9
)


@settings(max_examples=60, deadline=None)
@given(
    pool=vectors,
    labeled=st.lists(st.tuples(*[st.integers(-3, 3)] * 3), max_size=3),
    k=st.integers(0, 12),
)
def test_k_center_picks_distinct_and_never_farther_later(
    pool: list[tuple[int, ...]], labeled: list[tuple[int, ...]], k: int
) -> None:
    centres = np.array(labeled, dtype=float).reshape(-1, 3)
    picks, dist = k_center(np.array(pool, dtype=float), centres, k)
    assert len(picks) == min(k, len(pool))
    assert len(set(picks.tolist())) == len(picks)
    if len(centres):  # greedy k-center: each pick is no farther than the one before
        assert np.all(np.diff(dist) <= 1e-9)


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
    ctx = Context(streets, tiny_model, seed=3, stage=1, passes=10)
    state = torch.random.get_rng_state()
    a = select("qbc", ctx, candidates, 8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert min(a.scores) > 0
    assert a == select("qbc", ctx, candidates, 8)
    assert a.scores != select("qbc", Context(streets, tiny_model, seed=4), candidates, 8).scores
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
    ctx = Context(streets, tiny_model, bins=5, batch_size=len(indices))
    for name, want in expected.items():
        got = infer(ctx, indices, STRATEGIES[name].batch_fn)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)
        picked = select(name, ctx, indices, 3)
        by_index = dict(zip(indices, want.tolist(), strict=True))
        order = sorted(sorted(indices), key=lambda i: -by_index[i])[:3]
        assert picked.indices == order


def test_coreset_picks_unlabelled_distinct_images(streets: Path, tiny_model: DEALNet) -> None:
    ctx = Context(streets, tiny_model, labeled=(0, 1, 2))
    picked = select("coreset", ctx, range(3, 12), 4)
    assert len(set(picked.indices)) == 4 and set(picked.indices) <= set(range(3, 12))
    assert picked.scores == sorted(picked.scores, reverse=True)


# ----------------------------------------------------------------------- the loop, end to end
def _read(path: Path) -> dict:
    return json.loads(path.read_text())


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
    assert (out / "results.md").read_text().strip() in result.stdout
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # interrupt: forget ds's last stage; the rerun redoes that stage only
    state_path = out / "ds" / "seed0" / "state.json"
    before = _read(state_path)
    best = out / before["stages"][0]["run_dir"] / "best.pt"
    stamp = best.stat().st_mtime_ns
    state_path.write_text(json.dumps({**before, "stages": before["stages"][:1]}))
    cfg = resolve_config("streets-cpu", None, parse_overrides(tuple(TINY_OVERRIDES)))
    run_al(
        streets, out, cfg, ["ds", "random"], [0], init=0.2, step=0.2, max_fraction=0.4, quiet=True
    )
    after = _read(state_path)
    assert after["stages"][0] == before["stages"][0]
    assert after["stages"][1]["labeled"] == before["stages"][1]["labeled"]
    assert after["stages"][1]["test_miou"] == before["stages"][1]["test_miou"]
    assert best.stat().st_mtime_ns == stamp  # stage 0 was not retrained
    assert _read(out / "random" / "seed0" / "state.json") == states["random"]

    with pytest.raises(ValueError, match=r"other settings \(changed: sizes, step\)"):
        run_al(streets, out, cfg, ["ds"], [0], init=0.2, step=0.1, max_fraction=0.4)


def test_cli_rejects_unknown_strategy(streets: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["al", "--data", str(streets), "--out", str(tmp_path), "--strategies", "ds,vaal"]
    )
    assert result.exit_code == 2 and "vaal" in result.output
