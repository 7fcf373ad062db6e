"""Regions inside frames: partitions, region scores, the region strategies and their budgets."""

from __future__ import annotations

import numpy as np
import pytest

from dealseg.core.regions import (
    REGION_STRATEGIES,
    Budget,
    RegionOptions,
    RegionPool,
    choose_regions,
    class_counts,
    class_weights,
    frame_region_vectors,
    majority,
    parse_budget,
    parse_regions,
    partition,
    region_means,
    upsample,
)


def test_cells_are_numbered_row_major_and_padding_is_no_region() -> None:
    ids = partition(parse_regions("cell:4"), (8, 10))
    assert ids.shape == (8, 10)
    assert ids[0, 0] == 0 and ids[0, 4] == 1 and ids[0, 9] == 2 and ids[4, 0] == 3
    boxed = partition(parse_regions("cell:4"), (8, 10), box=(2, 1, 8, 9))
    assert (boxed[:2] == -1).all() and (boxed[:, 0] == -1).all() and (boxed[:, 9] == -1).all()
    assert (boxed[2:, 1:9] == ids[2:, 1:9]).all()  # a cell's id does not depend on the box


def test_frame_and_superpixel_partitions() -> None:
    whole = partition(parse_regions("frame"), (6, 8), box=(0, 2, 6, 6))
    assert set(np.unique(whole)) == {-1, 0} and (whole[:, 2:6] == 0).all()
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200
    image += rng.integers(0, 10, image.shape, dtype=np.uint8)
    ids = partition(parse_regions("slic:6"), (40, 60), box=(0, 0, 40, 60), image=image)
    assert ids.min() == 0 and 2 <= len(np.unique(ids)) <= 12
    assert not np.intersect1d(ids[:, :25], ids[:, 35:]).size  # the edge splits superpixels


@pytest.mark.parametrize("bad", ["cell", "cell:0", "grid:4", "slic:-3", ""])
def test_bad_region_specs_say_the_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="cell:N"):
        parse_regions(bad)


def test_budgets_parse_as_a_pixel_share_or_a_count() -> None:
    assert parse_budget("5%", 1000) == Budget(pixels=50)
    assert parse_budget("0.5%", 999) == Budget(pixels=4)
    assert parse_budget("300", 1000) == Budget(regions=300)
    for bad in ("0%", "150%", "-2", "abc", "2.5"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad, 1000)


def test_region_means_on_a_controlled_map() -> None:
    ids = partition(parse_regions("cell:2"), (4, 4), box=(0, 0, 4, 3))
    values = np.arange(16, dtype=np.float64).reshape(4, 4)
    rid, pixels, means = region_means(ids, {"ds": values})
    assert rid.tolist() == [0, 1, 2, 3]
    assert pixels.tolist() == [4, 2, 4, 2]  # column 3 is padding
    assert means["ds"].tolist() == [2.5, 4.0, 10.5, 12.0]  # padding pixels count for nothing


def test_upsample_keeps_a_constant_map_and_the_shape() -> None:
    up = upsample(np.full((3, 4), 0.25, np.float32), (12, 16))
    assert up.shape == (12, 16) and np.allclose(up, 0.25)


def pool_of(
    scores: list[list[float]], pixels: int = 10, classes: list[int] | None = None
) -> RegionPool:
    """Frames f0..fn, each with its list of region scores (ds; entropy reversed); predicted
    classes `classes` (flat, in region order; default: region id % 3)."""
    frame = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    region = np.concatenate([np.arange(len(s)) for s in scores])
    ds = np.concatenate([np.asarray(s, float) for s in scores])
    return RegionPool(
        [f"/pool/f{i:03d}.png" for i in range(len(scores))],
        frame,
        region.astype(np.int32),
        np.full(len(frame), pixels, np.int64),
        {"ds": ds, "entropy": 1 - ds},
        np.asarray(region % 3 if classes is None else classes, np.int64),
    )


def picked_pairs(pool: RegionPool, indices: np.ndarray) -> list[tuple[str, int]]:
    return [(pool.paths[pool.frame[i]], int(pool.region[i])) for i in indices]


def test_top_k_takes_the_highest_scoring_regions_ties_by_path_then_id() -> None:
    pool = pool_of([[0.1, 0.9, 0.5], [0.9, 0.2], [0.7]])
    picks = choose_regions(pool, "region-ds", Budget(regions=3))
    assert picked_pairs(pool, picks.indices) == [
        ("/pool/f000.png", 1),
        ("/pool/f001.png", 0),
        ("/pool/f002.png", 0),
    ]
    low = choose_regions(pool, "region-entropy", Budget(regions=1))
    assert picked_pairs(pool, low.indices) == [("/pool/f000.png", 0)]


def test_pixel_budgets_are_never_exceeded_and_nothing_left_fits() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 40))
        pool = RegionPool(
            [f"/p/{i}.png" for i in range(n)],
            np.arange(n),
            np.zeros(n, np.int32),
            rng.integers(1, 50, n),
            {"ds": rng.random(n)},
            rng.integers(-1, 4, n),
        )
        budget = int(rng.integers(1, 400))
        for name in REGION_STRATEGIES:
            if name.startswith("region-entropy"):
                continue
            picks = choose_regions(pool, name, Budget(pixels=budget), RegionOptions(seed=trial))
            assert picks.pixels == pool.pixels[picks.indices].sum() <= budget
            rest = np.setdiff1d(np.arange(n), picks.indices)
            assert (pool.pixels[rest] > budget - picks.pixels).all()  # nothing left fits


def test_region_counts_per_frame_caps_and_frame_costs() -> None:
    pool = pool_of([[0.9, 0.8, 0.7], [0.6, 0.5]])
    assert len(choose_regions(pool, "region-ds", Budget(regions=4)).indices) == 4
    capped = choose_regions(pool, "region-ds", Budget(regions=4), RegionOptions(max_per_frame=1))
    assert picked_pairs(pool, capped.indices) == [("/pool/f000.png", 0), ("/pool/f001.png", 0)]
    # opening a frame costs 15 pixels: 10 + 15 for the first region of f000, 10 + 10 more
    costly = choose_regions(pool, "region-ds", Budget(pixels=45), RegionOptions(frame_cost=15))
    assert costly.cost == 45 and costly.pixels == 30 and costly.frames == 1


def test_sampling_is_seeded_and_proportional_to_the_score() -> None:
    scores = [0.1, 0.2, 0.3, 0.4]
    pool = pool_of([scores])
    first = np.zeros(4)
    for seed in range(4000):
        picks = choose_regions(pool, "region-ds-sample", Budget(regions=1), RegionOptions(seed))
        first[pool.region[picks.indices[0]]] += 1
    expected = np.asarray(scores) / sum(scores) * 4000
    chi2 = float(((first - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
    again = choose_regions(pool, "region-ds-sample", Budget(regions=2), RegionOptions(seed=7))
    same = choose_regions(pool, "region-ds-sample", Budget(regions=2), RegionOptions(seed=7))
    assert again.indices.tolist() == same.indices.tolist()


def test_class_balanced_sampling_gives_each_predicted_class_its_mean_score() -> None:
    # class 0: one region scored 0.2; class 1: nine regions scored 0.1. Sampling by score
    # alone draws class 1 first 90 / 110 of the time; balanced, a class's first-draw share is
    # proportional to its mean score: 2 / 3 for class 0.
    scores = [0.2] + [0.1] * 9
    pool = pool_of([scores], classes=[0] + [1] * 9)
    first = np.zeros(2)
    for seed in range(3000):
        picks = choose_regions(pool, "region-ds-balanced", Budget(regions=1), RegionOptions(seed))
        first[pool.classes[picks.indices[0]]] += 1
    expected = np.array([2 / 3, 1 / 3]) * 3000
    assert float(((first - expected) ** 2 / expected).sum()) < 10.8  # chi-square, 1 dof, p=0.001
    assert class_weights(pool).tolist() == [10.0] + [10 / 9] * 9
    # the temperature sharpens the scores, never the balance: equal scores, any T -> 1/2 each
    even = pool_of([[0.2] * 10], classes=[0] + [1] * 9)
    for temperature in (0.5, 2.0):
        first = np.zeros(2)
        for seed in range(2000):
            opts = RegionOptions(seed, temperature=temperature)
            picks = choose_regions(even, "region-ds-balanced", Budget(regions=1), opts)
            first[even.classes[picks.indices[0]]] += 1
        assert float(((first - 1000) ** 2 / 1000).sum()) < 10.8
    unknown = RegionPool(pool.paths, pool.frame, pool.region, pool.pixels, pool.scores)
    with pytest.raises(ValueError, match="predicted class"):
        choose_regions(unknown, "region-ds-balanced", Budget(regions=1))


def test_cells_take_the_class_predicted_on_most_of_their_picture_pixels() -> None:
    seg = np.zeros((1, 2, 4), np.uint8)  # stride 4 over an 8 x 16 frame
    seg[0, 0, 1] = 3  # frame pixels rows 0-3, columns 4-7
    seg[0, 1, :] = 200  # no class of 5: counted for nothing
    box = np.array([[0, 0, 8, 12]])  # the last 4 columns are padding
    pixels, means, classes = frame_region_vectors(
        parse_regions("cell:4"), (8, 16), {}, box, (seg, 5)
    )
    assert pixels.tolist() == [[16, 16, 16, 0, 16, 16, 16, 0]] and means == {}
    assert classes.tolist() == [[0, 3, 0, -1, -1, -1, -1, -1]]  # padding and unknown: -1
    assert frame_region_vectors(parse_regions("cell:4"), (8, 16), {}, box)[2] is None
    with pytest.raises(ValueError, match="uint8"):
        frame_region_vectors(parse_regions("cell:4"), (8, 16), {}, box, (seg.astype(int), 5))
    counts = class_counts(np.array([[0, 0, 1, -1]]), np.array([[2, 9, 1, 1]]), 3)
    assert counts.tolist() == [[0, 0, 1], [0, 1, 0]] and majority(counts).tolist() == [2, 1]


def test_a_subset_keeps_every_column_aligned() -> None:
    pool = pool_of([[0.1, 0.9, 0.5], [0.3]])
    sub = pool.subset(np.array([3, 1]))
    assert sub.paths == pool.paths and sub.frame.tolist() == [1, 0]
    assert sub.region.tolist() == [0, 1] and sub.scores["ds"].tolist() == [0.3, 0.9]
    assert sub.classes.tolist() == [0, 1] and sub.pixels.tolist() == [10, 10]


def test_a_low_temperature_samples_the_top() -> None:
    pool = pool_of([[0.1, 0.2, 0.3, 0.9]])
    for seed in range(50):
        opts = RegionOptions(seed=seed, temperature=0.01)
        picks = choose_regions(pool, "region-ds-sample", Budget(regions=1), opts)
        assert pool.region[picks.indices[0]] == 3


def test_picks_do_not_depend_on_pool_order() -> None:
    rng = np.random.default_rng(1)
    pool = pool_of([list(rng.random(6)) for _ in range(8)])
    perm = rng.permutation(len(pool))
    frames_perm = rng.permutation(len(pool.paths))
    where = np.argsort(frames_perm)  # old frame index -> new
    shuffled = RegionPool(
        [pool.paths[i] for i in frames_perm],
        where[pool.frame[perm]],
        pool.region[perm],
        pool.pixels[perm],
        {k: v[perm] for k, v in pool.scores.items()},
        pool.classes[perm],
    )
    for name in ("region-random", "region-ds", "region-ds-sample", "region-ds-balanced"):
        a = choose_regions(pool, name, Budget(pixels=150), RegionOptions(seed=5))
        b = choose_regions(shuffled, name, Budget(pixels=150), RegionOptions(seed=5))
        assert picked_pairs(pool, a.indices) == picked_pairs(shuffled, b.indices)


def test_unknown_region_strategy_lists_the_names() -> None:
    with pytest.raises(KeyError, match="region-ds-sample"):
        choose_regions(pool_of([[0.5]]), "region-nope", Budget(regions=1))
