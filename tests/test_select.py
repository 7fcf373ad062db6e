"""Pool-level selection: exact rankings on hand-made pools, and invariants with hypothesis."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dealseg.core.ranking import (
    STRATEGIES,
    Options,
    Pool,
    choose,
    groups_of,
    path_hash,
    pick_ranked,
    top_k,
)

SCORE_STRATEGIES = ("ds", "de", "entropy", "random")


def pool_of(paths, ds, embeddings=None) -> Pool:
    ds = np.asarray(ds, dtype=np.float64)
    return Pool(list(paths), {"ds": ds, "de": -ds, "entropy": ds * 2}, embeddings)


def picked(pool: Pool, strategy: str, k: int, **options) -> list[tuple[str, float]]:
    picks = pick_ranked(pool, strategy, k, Options(**options))
    return [(pool.paths[p.index], round(p.score, 4)) for p in picks]


# ------------------------------------------------------------------------ exact rankings
def test_higher_score_first_ties_broken_by_path() -> None:
    pool = pool_of(["c", "a", "b", "d"], [0.5, 0.9, 0.5, 0.1])
    assert picked(pool, "ds", 3) == [("a", 0.9), ("b", 0.5), ("c", 0.5)]
    # the tie straddles the k boundary: "b" wins by path although "c" comes first in the pool
    assert picked(pool, "ds", 2) == [("a", 0.9), ("b", 0.5)]
    assert picked(pool, "de", 2) == [("d", -0.1), ("b", -0.5)]


def test_k_larger_than_pool_returns_the_whole_pool_in_order() -> None:
    pool = pool_of(["c", "a", "b", "d"], [0.5, 0.9, 0.5, 0.1])
    assert [p for p, _ in picked(pool, "ds", 100)] == ["a", "b", "c", "d"]


def test_empty_pool_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        pick_ranked(pool_of([], []), "ds", 3)


def test_score_then_coreset_spreads_the_picks_over_near_duplicate_clusters() -> None:
    # a drive of 6 near-duplicate hard frames (a*), two other drives (b*, c*) less hard, one easy
    emb = np.array([[1, 0, 0]] * 6 + [[0, 1, 0]] * 2 + [[0, 0, 1]] * 2 + [[1, 1, 1]], np.float32)
    emb[:6, 1] = np.linspace(0, 0.01, 6)  # not quite identical
    paths = [f"a{i}" for i in range(6)] + ["b0", "b1", "c0", "c1", "z"]
    ds = [0.9, 0.89, 0.88, 0.87, 0.86, 0.85, 0.5, 0.49, 0.4, 0.39, 0.1]
    pool = pool_of(paths, ds, emb)
    assert [p for p, _ in picked(pool, "ds", 3)] == ["a0", "a1", "a2"]
    # among the 12 best by ds (everything), k-center from the hardest: one frame per drive
    assert picked(pool, "ds+coreset", 3) == [("a0", 0.9), ("b0", 0.5), ("c0", 0.4)]
    # the labelled set covers drive a already: the picks go elsewhere
    got = picked(pool, "ds+coreset", 3, labeled=emb[:1])
    assert [p for p, _ in got] == ["b0", "c0", "z"]
    assert picked(pool, "entropy+coreset", 0) == []


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="coreset, de, de\\+coreset, ds, ds\\+coreset, entropy"):
        pick_ranked(pool_of(["a"], [1.0]), "dss", 1)
    with pytest.raises(KeyError, match="choose one of"):
        STRATEGIES["nope"]


def test_nan_scores_rank_last() -> None:
    pool = pool_of(["a", "b", "c"], [np.nan, 0.1, 0.2])
    assert [p for p, _ in picked(pool, "ds", 3)] == ["c", "b", "a"]


def test_paths_compare_as_file_system_bytes() -> None:
    odd = "caf\udce9.jpg"  # a Latin-1 name that is not valid UTF-8
    pool = pool_of(["b.jpg", odd, "a.jpg"], [1.0, 1.0, 1.0])
    assert [p for p, _ in picked(pool, "ds", 3)] == ["a.jpg", "b.jpg", odd]


def test_random_is_seeded_and_depends_only_on_the_path() -> None:
    paths = [f"img{i:03d}.jpg" for i in range(50)]
    a = path_hash(paths, seed=1)
    assert np.array_equal(a, path_hash(paths, seed=1))
    assert not np.array_equal(a, path_hash(paths, seed=2))
    assert np.array_equal(path_hash(paths[::-1] + ["x" * 300], seed=1)[:50], a[::-1])
    assert ((a >= 0) & (a < 1)).all()
    pool = pool_of(paths, np.zeros(50))
    assert picked(pool, "random", 5, seed=3) == picked(pool, "random", 5, seed=3)
    assert picked(pool, "random", 5, seed=3) != picked(pool, "random", 5, seed=4)


def test_coreset_with_labeled_centres_picks_farthest_first() -> None:
    deg = np.deg2rad([90, 180, 170, 20])
    emb = np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)
    pool = pool_of(["p90", "p180", "p170", "p20"], np.zeros(4), emb)
    labeled = np.array([[1.0, 0.0]], dtype=np.float32)  # a labelled image at 0 degrees
    got = picked(pool, "coreset", 3, labeled=labeled)
    assert got == [("p180", 2.0), ("p90", 1.0), ("p20", round(1 - np.cos(np.deg2rad(20)), 4))]


def test_coreset_without_labeled_starts_farthest_from_the_mean_tie_by_path() -> None:
    emb = np.array([[1, 0], [-1, 0], [0, 1]], dtype=np.float32)
    pool = pool_of(["z", "m", "a"], np.zeros(3), emb)
    # z and m are equally far (cosine 0) from the mean direction (0, 1): m wins by path
    assert picked(pool, "coreset", 3) == [("m", 1.0), ("z", 2.0), ("a", 1.0)]


def test_coreset_normalises_embeddings() -> None:
    emb = np.array([[10, 0], [-0.1, 0], [0, 3]], dtype=np.float32)
    pool = pool_of(["z", "m", "a"], np.zeros(3), emb)
    assert picked(pool, "coreset", 3) == [("m", 1.0), ("z", 2.0), ("a", 1.0)]


def test_diverse_skips_near_duplicates_of_picked_images() -> None:
    emb = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)  # b ~ a (cosine 0.99)
    pool = pool_of(["a", "b", "c"], [0.9, 0.8, 0.7], emb)
    assert picked(pool, "ds", 2, diverse=0.95) == [("a", 0.9), ("c", 0.7)]
    assert picked(pool, "ds", 3, diverse=0.95) == [("a", 0.9), ("c", 0.7)]  # b never comes
    assert picked(pool, "ds", 3, diverse=0.999) == [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    assert [p for p, _ in picked(pool, "coreset", 3, diverse=0.95)] == ["c", "a"]


def test_diverse_looks_beyond_the_first_block() -> None:
    n = 40  # 39 near-duplicates of the best image, then one different image ranked last
    emb = np.tile(np.array([[1.0, 0.0]], np.float32), (n, 1))
    emb[-1] = [0.0, 1.0]
    pool = pool_of([f"{i:02d}" for i in range(n)], np.linspace(1, 0, n), emb)
    assert [p for p, _ in picked(pool, "ds", 2, diverse=0.9)] == ["00", "39"]


def test_excluded_images_are_never_picked() -> None:
    emb = np.eye(4, dtype=np.float32)
    pool = pool_of(["a", "b", "c", "d"], [4, 3, 2, 1], emb)
    exclude = np.array([True, False, True, False])
    for strategy in STRATEGIES:
        got = [p for p, _ in picked(pool, strategy, 4, exclude=exclude)]
        assert sorted(got) == ["b", "d"], strategy
    assert picked(pool, "ds", 4, exclude=np.ones(4, bool)) == []


def test_strategies_needing_embeddings_say_so() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        pick_ranked(pool_of(["a"], [1.0]), "coreset", 1)
    with pytest.raises(ValueError, match="embeddings"):
        pick_ranked(pool_of(["a"], [1.0]), "ds", 1, Options(diverse=0.9))


def test_top_k_of_a_large_pool_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    scores = rng.integers(0, 50, n).astype(np.float32)  # heavy ties at every boundary
    paths = [f"p{v:07d}" for v in rng.permutation(n)]
    got = top_k(paths, scores, 1000)
    want = sorted(range(n), key=lambda i: (-scores[i], paths[i]))[:1000]
    assert got.tolist() == want


def test_coreset_distances_within_the_tolerance_tie_and_break_by_path() -> None:
    # "c" is farther from the labelled centre than "a" by 1e-8: computed noise, not a difference
    emb = np.array([[1.0, 0.0], [1.0, 1e-8], [-1.0, 0.0]])
    pool = pool_of(["c", "a", "z"], np.zeros(3), emb)
    labeled = np.array([[0.0, 1.0]])
    assert [p for p, _ in picked(pool, "coreset", 2, labeled=labeled)] == ["a", "z"]


# Found by hypothesis on an AVX-512 CPU: "a" and "aaaa" hold the same embedding, and which of the
# two BLAS put farther away depended on their rows' positions.
REGRESSION_EMB = np.array(
    [
        [0.12573022, -0.13210486, 0.64042264],
        [0.12573022, -0.13210486, 0.64042264],
        [1.304, 0.94708097, -0.70373523],
        [-1.2654215, -0.62327445, 0.04132598],
        [-2.3250308, -0.21879166, -1.245911],
        [-0.7322674, -0.544259, -0.31630015],
        [0.41163054, 1.0425134, -0.12853466],
    ],
    dtype=np.float32,
)
REGRESSION_PATHS = ["aaaa", "a", "b", "c", "x", "aa", "aaa"]


def test_coreset_on_duplicate_embeddings_is_the_same_in_every_pool_order() -> None:
    pool = pool_of(REGRESSION_PATHS, np.zeros(7), REGRESSION_EMB)
    want = picked(pool, "coreset", 3)
    assert [p for p, _ in want] == ["b", "c", "a"]
    for order in itertools.permutations(range(7)):
        assert picked(permuted(pool, np.array(order)), "coreset", 3) == want, order


# ---------------------------------------------------------------------------- invariants
@st.composite
def pools(draw):
    n = draw(st.integers(1, 25))
    names = draw(
        st.lists(st.text("abcxyz", min_size=1, max_size=4), min_size=n, max_size=n, unique=True)
    )
    values = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    emb = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    emb[draw(st.integers(0, n - 1))] = emb[0]  # an exact duplicate embedding
    return pool_of(names, values, emb)


def permuted(pool: Pool, order: np.ndarray) -> Pool:
    return Pool(
        [pool.paths[i] for i in order],
        {k: v[order] for k, v in pool.scores.items()},
        pool.embeddings[order],
    )


@settings(max_examples=60, deadline=None)
@given(pools(), st.integers(1, 30), st.sampled_from(sorted(STRATEGIES)), st.randoms())
def test_selection_does_not_depend_on_pool_order(pool, k, strategy, rnd) -> None:
    order = np.arange(len(pool))
    rnd.shuffle(order)
    for diverse in (None, 0.9):
        a = picked(pool, strategy, k, diverse=diverse)
        assert a == picked(permuted(pool, order), strategy, k, diverse=diverse)


@settings(max_examples=60, deadline=None)
@given(pools(), st.integers(1, 25), st.sampled_from(SCORE_STRATEGIES), st.sampled_from([None, 0.5]))
def test_top_k_is_a_prefix_of_top_k_plus_one(pool, k, strategy, diverse) -> None:
    shorter = picked(pool, strategy, k, diverse=diverse)
    longer = picked(pool, strategy, k + 1, diverse=diverse)
    assert longer[: len(shorter)] == shorter
    if diverse is None:
        assert len(shorter) == min(k, len(pool))


@settings(max_examples=60, deadline=None)
@given(pools(), st.integers(1, 30))
def test_coreset_picks_distinct_images(pool, k) -> None:
    picks = pick_ranked(pool, "coreset", k)
    assert len({p.index for p in picks}) == len(picks) == min(k, len(pool))
    assert all(p.score >= -1e-6 for p in picks)


# ------------------------------------- rankings keyed by position (the active-learning loop's)
def by_index(n: int) -> list[str]:
    """Paths that sort like positions: "ties by path" reads as "ties by index"."""
    return [f"{i:06d}" for i in range(n)]


def top_k_by_index(scores, k: int) -> np.ndarray:
    picks = pick_ranked(pool_of(by_index(len(scores)), scores), "ds", k)
    return np.array([p.index for p in picks], dtype=np.int64)


def k_center(emb: np.ndarray, centres: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Core-set picks (positions) and their distances, as the loop's k-center sees them."""
    pool = Pool(by_index(len(emb)), {}, np.asarray(emb))
    picks = pick_ranked(pool, "coreset", k, Options(labeled=centres))
    return np.array([p.index for p in picks], dtype=np.int64), np.array([p.score for p in picks])


def unit_circle(*degrees: float) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_top_k_by_index_higher_first_ties_by_index() -> None:
    scores = [0.5, 0.9, 0.5, 0.1]
    assert top_k_by_index(scores, 3).tolist() == [1, 0, 2]
    assert top_k_by_index(scores, 2).tolist() == [1, 0]  # the tie at the boundary goes to index 0
    assert top_k_by_index(scores, 10).tolist() == [1, 0, 2, 3]  # k > pool: the whole pool
    assert top_k_by_index([float("nan"), 0.2, 0.2], 3).tolist() == [1, 2, 0]  # NaN ranks last
    assert top_k_by_index(scores, 0).tolist() == []


def test_by_index_empty_pool_and_negative_k_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="pool is empty"):
        top_k_by_index([], 3)
    with pytest.raises(ValueError, match="pool is empty"):
        k_center(np.zeros((0, 2)), None, 3)
    with pytest.raises(ValueError, match="k must be"):
        top_k_by_index([1.0], -1)


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
def test_top_k_by_index_is_the_stable_descending_order(scores: list[float], k: int) -> None:
    keyed = [-math.inf if math.isnan(s) else s for s in scores]
    expected = sorted(range(len(scores)), key=lambda i: (-keyed[i], i))[:k]
    assert top_k_by_index(scores, k).tolist() == expected
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


# ---------------------------------------------- balance, per-group quotas, what was skipped
def with_extras(pool: Pool, fractions: np.ndarray | None = None, groups=None) -> Pool:
    return Pool(pool.paths, pool.scores, pool.embeddings, fractions, groups)


def test_balance_takes_the_candidates_that_even_out_the_class_mix() -> None:
    # a, b, c: all class 0, the best by ds; d, e: class 1, lower; f: class 0, lowest
    fractions = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], np.float64)
    pool = with_extras(pool_of("abcdef", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), fractions)
    assert [p for p, _ in picked(pool, "ds", 2)] == ["a", "b"]
    even = picked(pool, "ds", 2, balance=np.ones(2))
    assert even == [("a", 0.9), ("d", 0.6)]  # one of each class; ties go to the better ranked
    assert [p for p, _ in picked(pool, "ds", 4, balance=np.ones(2))] == ["a", "d", "b", "e"]
    skewed = picked(pool, "ds", 4, balance=np.array([3.0, 1.0]))  # target 3:1
    assert [p for p, _ in skewed] == ["a", "b", "d", "c"]
    # the candidates are the 4k best: with k = 2 all six are, and a mixed image comes first
    mixed = with_extras(pool, np.vstack([fractions[:5], [[0.5, 0.5]]]))
    assert picked(mixed, "ds", 2, balance=np.ones(2)) == [("f", 0.4), ("a", 0.9)]
    assert picked(mixed, "ds", 1, balance=np.ones(2)) == [("a", 0.9)]  # f is no candidate


def test_balance_needs_class_fractions_and_valid_weights() -> None:
    pool = with_extras(pool_of("ab", [1.0, 0.5]), np.eye(2))
    with pytest.raises(ValueError, match="class fractions"):
        pick_ranked(pool_of("ab", [1.0, 0.5]), "ds", 1, Options(balance=np.ones(2)))
    with pytest.raises(ValueError, match="not all 0"):
        pick_ranked(pool, "ds", 1, Options(balance=np.zeros(2)))
    with pytest.raises(ValueError, match="class fractions"):
        pick_ranked(pool, "ds", 1, Options(balance=np.ones(3)))  # 3 weights, 2 classes


def test_per_group_caps_the_picks_of_every_strategy() -> None:
    rng = np.random.default_rng(1)
    paths = [f"cam{i % 3}/f{i:02d}" for i in range(12)]
    groups = np.arange(12) % 3
    pool = with_extras(pool_of(paths, rng.random(12), rng.normal(size=(12, 4))), groups=groups)
    for strategy in STRATEGIES:
        picks = pick_ranked(pool, strategy, 5, Options(per_group=1))
        assert sorted(groups[p.index] for p in picks) == [0, 1, 2], strategy
        two = pick_ranked(pool, strategy, 5, Options(per_group=2))
        assert len(two) == 5 and np.bincount(groups[[p.index for p in two]]).max() == 2


def test_choose_records_what_it_skipped_and_says_why_fewer_than_k() -> None:
    emb = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)  # b ~ a (cosine 0.99)
    pool = with_extras(pool_of(["a", "b", "c"], [0.9, 0.8, 0.7], emb), groups=np.array([0, 0, 1]))
    opts = Options(diverse=0.95)
    chosen = choose(pool, "ds", 3, opts)
    assert [p.index for p in chosen.picks] == [0, 2]
    (skip,) = chosen.skipped
    assert (skip.index, skip.reason, skip.of) == (1, "duplicate", 0)
    assert skip.cosine == pytest.approx(0.99, abs=1e-3)
    assert chosen.shortfall(3, opts) == ["1 near-duplicates skipped (cosine above 0.95)"]
    quota = Options(per_group=1, exclude=np.array([False, False, True]))
    chosen = choose(pool, "ds", 3, quota)
    assert [p.index for p in chosen.picks] == [0] and chosen.skipped[0].reason == "group"
    assert chosen.shortfall(3, quota) == [
        "2 images to pick from (1 of 3 excluded)",
        "1 images of full groups skipped (at most 1 a group)",
    ]
    k_center = Options(diverse=0.95)
    assert choose(pool, "coreset", 3, k_center).shortfall(3, k_center) == [
        "every other image has cosine above 0.95 to a pick"
    ]
    assert choose(pool, "ds", 2).shortfall(2, Options()) == []


def test_groups_of_folders_regex_groups_and_unmatched_paths() -> None:
    paths = ["/d/cam1/a.png", "/d/cam1/b.png", "/d/cam2/a.png", "/other/x.png"]
    ids, unmatched = groups_of(paths)
    assert ids.tolist() == [0, 0, 1, 2] and unmatched == 0
    ids, unmatched = groups_of(paths, r"/(cam\d)/")
    assert ids.tolist() == [0, 0, 1, 2] and unmatched == 1
    ids, unmatched = groups_of(paths, r"\.png$")  # no group: the whole match, one group
    assert ids.tolist() == [0, 0, 0, 0] and unmatched == 0


@st.composite
def labelled_pools(draw):
    pool = draw(pools())
    n = len(pool)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    fractions = rng.dirichlet(np.ones(3), size=n)
    fractions[draw(st.integers(0, n - 1))] = fractions[0]  # an exact duplicate mix
    groups = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    return with_extras(pool, fractions, groups)


def permuted_all(pool: Pool, order: np.ndarray) -> Pool:
    return with_extras(permuted(pool, order), pool.class_fraction[order], pool.groups[order])


@settings(max_examples=40, deadline=None)
@given(labelled_pools(), st.integers(1, 12), st.sampled_from(sorted(STRATEGIES)), st.randoms())
def test_balance_and_quotas_do_not_depend_on_pool_order(pool, k, strategy, rnd) -> None:
    order = np.arange(len(pool))
    rnd.shuffle(order)
    for extra in (
        {"per_group": 1},
        {"balance": np.ones(3)},
        {"balance": np.ones(3), "per_group": 2},
    ):
        a = picked(pool, strategy, k, **extra)
        assert a == picked(permuted_all(pool, order), strategy, k, **extra), extra
        groups = [pool.groups[pool.paths.index(p)] for p, _ in a]
        if "per_group" in extra:
            assert max(np.bincount(groups)) <= extra["per_group"]
