"""Training on partial labels and the label-cost study (`deal-train al --unit region`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from dealseg.core.regions import parse_regions, partition
from dealseg.training.cli import main
from dealseg.training.config import resolve_config
from dealseg.training.data import IGNORE_INDEX, PartialLabels, SegmentationDataset
from dealseg.training.losses import PSEUDO_OFFSET, deal_loss
from dealseg.training.train import Trainer

TINY = [
    "decoder_width=16",
    "attention_size=[8,10]",
    "input_size=[64,80]",
    "epochs=1",
    "batch_size=4",
    "crop=[64,80]",
    "val_every=1",
    "scale=[1.0,1.0]",
    "threads=1",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pixels_outside_the_labelled_regions_change_nothing_in_the_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 16, 16), generator=gen)
    ids = torch.from_numpy(partition(parse_regions("cell:4"), (16, 16))).long()
    bought = torch.isin(ids, torch.tensor([0, 5, 10]))[None].expand(2, -1, -1)
    partial = torch.where(bought, labels, torch.full_like(labels, IGNORE_INDEX))
    logits = torch.randn(2, 4, 16, 16, generator=gen)
    difficulty = torch.rand(2, 16, 16, generator=gen)
    base, _ = deal_loss(logits, difficulty, partial, "wbce", labeled_only=True)
    # anything at the unlabelled pixels: other logits, other difficulty
    noise_logits = torch.where(bought[:, None], logits, torch.randn(2, 4, 16, 16, generator=gen))
    noise_dif = torch.where(bought, difficulty, torch.rand(2, 16, 16, generator=gen))
    other, _ = deal_loss(noise_logits, noise_dif, partial, "wbce", labeled_only=True)
    assert torch.allclose(base, other)
    # the paper's rule counts void pixels as right: there they would change the loss
    paper_a, _ = deal_loss(logits, difficulty, partial, "wbce")
    paper_b, _ = deal_loss(noise_logits, noise_dif, partial, "wbce")
    assert not torch.allclose(paper_a, paper_b)


def test_a_batch_without_a_labelled_pixel_costs_nothing_and_breaks_nothing() -> None:
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    difficulty = torch.rand(2, 8, 8, requires_grad=True)
    void = torch.full((2, 8, 8), IGNORE_INDEX)
    for labeled_only in (False, True):
        loss, parts = deal_loss(logits, difficulty, void, "wbce", labeled_only=labeled_only)
        loss.backward()
        assert loss.item() == 0.0 and parts == {"loss": 0.0, "seg": 0.0, "dif": 0.0}
        assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_guessed_pixels_train_the_segmenter_apart_and_never_the_difficulty_head() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 16, 16), generator=gen)
    bought = torch.zeros(2, 16, 16, dtype=torch.bool)
    bought[:, :4] = True
    guess = torch.randint(0, 4, (2, 16, 16), generator=gen)
    guessed = ~bought & (torch.rand(2, 16, 16, generator=gen) < 0.5)
    marked = torch.where(bought, labels, torch.where(guessed, guess + PSEUDO_OFFSET, IGNORE_INDEX))
    logits = torch.randn(2, 4, 16, 16, generator=gen)
    difficulty = torch.rand(2, 16, 16, generator=gen, requires_grad=True)
    loss, parts = deal_loss(logits, difficulty, marked, "wbce", labeled_only=True)
    void = torch.full_like(labels, IGNORE_INDEX)
    true = torch.where(bought, labels, void)
    expected_seg = F.cross_entropy(logits, true, ignore_index=IGNORE_INDEX) + F.cross_entropy(
        logits, torch.where(guessed, guess, void), ignore_index=IGNORE_INDEX
    )
    assert parts["seg"] == pytest.approx(expected_seg.item(), rel=1e-6)
    _, without = deal_loss(logits, difficulty, true, "wbce", labeled_only=True)
    assert parts["dif"] == pytest.approx(without["dif"], rel=1e-6)  # guesses are not its target
    loss.backward()
    assert (difficulty.grad[~bought] == 0).all() and (difficulty.grad[bought] != 0).any()
    # a batch of guesses only: the segmenter learns, the head costs nothing
    guesses_only = torch.where(bought, void, marked)
    only, parts = deal_loss(logits, difficulty, guesses_only, labeled_only=True)
    assert parts["dif"] == 0.0 and parts["seg"] > 0 and torch.isfinite(only)


def test_guesses_fill_only_what_was_not_bought(streets: Path, tmp_path: Path) -> None:
    guess = np.full((64, 80), IGNORE_INDEX, dtype=np.uint8)
    guess[:, 40:] = 3
    partial = PartialLabels(parse_regions("cell:16"), {0: [1, 7]}, pseudo={0: guess, 1: guess})
    full = SegmentationDataset(streets, "train", size=(64, 80), indices=[0, 1])
    part = SegmentationDataset(streets, "train", size=(64, 80), indices=[0, 1], partial=partial)
    (_, a), (_, b) = full[0], part[0]
    ids = torch.from_numpy(partition(parse_regions("cell:16"), (64, 80)))
    inside = (ids == 1) | (ids == 7)
    right = torch.zeros(64, 80, dtype=torch.bool)
    right[:, 40:] = True
    assert torch.equal(b[inside], a[inside])
    assert (b[~inside & right] == PSEUDO_OFFSET + 3).all()
    assert (b[~inside & ~right] == IGNORE_INDEX).all()
    assert (part[1][1][:, 40:] == PSEUDO_OFFSET + 3).all()  # a frame with nothing bought
    assert (
        partial.to_dict()["pseudo"] == ""
        and "pseudo" not in PartialLabels(parse_regions("cell:16"), {0: [1]}).to_dict()
    )
    # the frames with guesses train too, a frame with nothing bought on its guesses alone
    preset = resolve_config("cpu", None, {"samples_per_epoch": 8, **_overrides()})
    trainer = Trainer(streets, tmp_path / "fit", preset, None, quiet=True, partial=partial)
    assert trainer.train_set.indices == [0, 1]
    bought_only = PartialLabels(parse_regions("cell:16"), {0: [1, 7]})
    assert Trainer(
        streets, tmp_path / "b", preset, None, True, partial=bought_only
    ).train_set.indices == [0]
    wrong = PartialLabels(parse_regions("cell:16"), {}, pseudo={0: guess[:32]})
    with pytest.raises(ValueError, match="pseudo-labels of frame 0 are"):
        SegmentationDataset(streets, "train", size=(64, 80), indices=[0], partial=wrong)[0]


def test_pseudo_labels_are_the_confident_predictions(streets: Path) -> None:
    from dealseg.training.label_cost import pseudo_labels
    from dealseg.training.model import DEALNet, normalise

    preset = resolve_config("cpu", None, _overrides())
    torch.manual_seed(0)
    model = DEALNet(replace(preset.model, num_classes=11), pretrained=False).eval()
    image, _ = SegmentationDataset(streets, "train", size=(64, 80), indices=[5])[0]
    with torch.no_grad():
        prob = model(normalise(image[None], model.cfg.mean, model.cfg.std)).full_logits()
    confidence, cls = prob.softmax(1)[0].max(0)
    threshold = float(confidence.median())  # about half the pixels pass
    guesses = pseudo_labels(streets, "train", [2, 5], model, threshold, batch_size=1)
    assert sorted(guesses) == [2, 5]
    expected = torch.where(confidence >= threshold, cls, IGNORE_INDEX).numpy()
    assert guesses[5].shape == (64, 80) and guesses[5].dtype == np.uint8
    assert np.array_equal(guesses[5], expected)
    assert 0.3 < (guesses[5] != IGNORE_INDEX).mean() < 0.7  # the threshold cuts
    with pytest.raises(ValueError, match="probability"):
        pseudo_labels(streets, "train", [2], model, 1.5)


def test_partial_labels_void_every_pixel_outside_the_bought_regions(streets: Path) -> None:
    partial = PartialLabels(parse_regions("cell:16"), {0: [1, 7]})
    full = SegmentationDataset(streets, "train", size=(64, 80), indices=[0, 1])
    part = SegmentationDataset(streets, "train", size=(64, 80), indices=[0, 1], partial=partial)
    (_, a), (_, b) = full[0], part[0]
    ids = torch.from_numpy(partition(parse_regions("cell:16"), (64, 80)))
    inside = (ids == 1) | (ids == 7)
    assert torch.equal(b[inside], a[inside]) and (b[~inside] == IGNORE_INDEX).all()
    assert (part[1][1] == IGNORE_INDEX).all()  # a frame with no region bought


def test_samples_per_epoch_fixes_the_training_budget(streets: Path, tmp_path: Path) -> None:
    preset = resolve_config("cpu", None, {"samples_per_epoch": 24, **_overrides()})
    for labeled in ([0, 1], list(range(12))):  # fewer images than a batch is fine
        trainer = Trainer(streets, tmp_path / str(len(labeled)), preset, labeled, quiet=True)
        assert trainer.iters_per_epoch == 6
        seen = sum(len(b[0]) for b in _batches(trainer))
        assert seen == 24


def _overrides() -> dict:
    from dealseg.training.cli import parse_overrides

    return parse_overrides(tuple(TINY))


def _batches(trainer: Trainer) -> list:
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(trainer.train_set, num_samples=trainer.samples_per_epoch)
    return list(DataLoader(trainer.train_set, batch_size=4, sampler=sampler, drop_last=True))


def test_label_cost_study_end_to_end_honours_budgets_and_resumes(
    streets: Path, tmp_path: Path
) -> None:
    out = tmp_path / "al"
    args = [
        "al",
        "--data",
        str(streets),
        "--out",
        str(out),
        "--unit",
        "region",
        "--budgets",
        "5,10",
        "--regions",
        "cell:8",
        "--strategies",
        "region-ds-sample,region-random,entropy",
        "--seeds",
        "0",
        "--preset",
        "cpu",
        *TINY,
        "samples_per_epoch=8",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pool_pixels = 21 * 64 * 80
    for name in ("region-ds-sample", "region-random"):
        state = json.loads((out / name / "seed0" / "state.json").read_text())
        s0, s1 = state["stages"]
        first = sum(len(v) for v in s0["labeled"]["regions"].values()) * 64
        assert first <= 0.05 * pool_pixels < first + 64  # within one cell of the budget
        bought = s0["selection"]
        assert first + bought["pixels"] <= 0.10 * pool_pixels < first + bought["pixels"] + 64
        owned = {(int(f), r) for f, ids in s0["labeled"]["regions"].items() for r in ids}
        assert not owned & {tuple(p) for p in bought["picked"]}  # never bought twice
        assert (
            0 <= bought["error_pixels"] <= bought["pixels"] >= sum(bought["class_pixels"])
        )  # void
    frames = json.loads((out / "entropy" / "seed0" / "state.json").read_text())["stages"]
    assert len(frames[0]["labeled"]["frames"]) == 1  # 5% of 21 frames
    assert len(frames[1]["labeled"]["frames"]) == 2
    table = (out / "results.md").read_text()
    assert "Regions sampled by DS" in table and "| region |" in table and "| frame |" in table
    # a state recorded before a setting existed resumes at the setting's default
    recorded = out / "entropy" / "seed0" / "state.json"
    old = json.loads(recorded.read_text())
    del old["settings"]["pseudo_threshold"]
    recorded.write_text(json.dumps(old))
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("(recorded)") == 6  # nothing retrained
    assert json.loads((out / "region-random" / "seed0" / "state.json").read_text()) == state

    # a later budget extends the study: the recorded stages stand, the last one selects
    grown = [*args[: args.index("5,10")], "5,10,15", *args[args.index("5,10") + 1 :]]
    grown[grown.index("region-ds-sample,region-random,entropy")] = "region-random"
    longer = CliRunner().invoke(main, grown, catch_exceptions=False)
    assert longer.exit_code == 0 and longer.output.count("(recorded)") == 1, longer.output
    extended = json.loads((out / "region-random" / "seed0" / "state.json").read_text())
    assert extended["settings"]["budgets"] == [0.05, 0.10, 0.15]
    assert [{k: v for k, v in s.items() if k != "selection"} for s in extended["stages"][:2]] == [
        {k: v for k, v in s.items() if k != "selection"} for s in state["stages"]
    ]
    s1, s2 = extended["stages"][1:]
    spent = sum(len(v) for v in s1["labeled"]["regions"].values()) * 64
    assert (
        spent + s1["selection"]["pixels"]
        <= 0.15 * pool_pixels
        < spent + 64 + (s1["selection"]["pixels"])
    )
    assert sum(len(v) for v in s2["labeled"]["regions"].values()) * 64 == (
        spent + s1["selection"]["pixels"]
    )


def test_pseudo_labels_train_every_frame_from_the_second_stage(
    streets: Path, tmp_path: Path
) -> None:
    out = tmp_path / "al"
    args = ["al", "--data", str(streets), "--out", str(out), "--unit", "region"]
    args += ["--budgets", "5,10", "--regions", "cell:8", "--strategies", "region-random,random"]
    args += ["--pseudo-labels", "0.1", "--preset", "cpu", *TINY, "samples_per_epoch=8"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name, unit in (("region-random", "region"), ("random", "frame")):
        state = json.loads((out / name / "seed0" / "state.json").read_text())
        assert state["settings"]["pseudo_threshold"] == 0.1
        first, second = (
            json.loads((out / s["run_dir"] / "result.json").read_text())["key"]
            for s in state["stages"]
        )
        assert "pseudo" not in first.get("partial", {})  # stage 0: no model to guess with
        assert second["labeled"] is None and second["partial"]["pseudo"].startswith(">= 0.1, ")
        quality = state["stages"][1]["pseudo"]
        assert 0 < quality["share"] < 1 and 0 <= quality["accuracy"] <= 1
        if unit == "frame":  # whole frames bought: one region each, the rest of the pool guessed
            assert second["partial"]["regions"] == "frame"
            assert (
                sorted(map(int, second["partial"]["picked"]))
                == state["stages"][1]["labeled"]["frames"]
            )
    assert "confidence >= 0.1" in (out / "results.md").read_text()


def test_label_cost_needs_a_fixed_training_budget(streets: Path, tmp_path: Path) -> None:
    args = ["al", "--data", str(streets), "--out", str(tmp_path), "--unit", "region"]
    result = CliRunner().invoke(main, [*args, "--strategies", "region-random", *TINY])
    assert result.exit_code == 1 and "samples_per_epoch" in result.output


def test_frames_bought_whole_cost_their_pixels(streets: Path) -> None:
    from dealseg.training.label_cost import score_regions

    scored = score_regions(streets, "train", [0, 3], "frame", None, size=(64, 80))
    assert scored.pool.region.tolist() == [0, 0] and scored.pool.pixels.tolist() == [5120, 5120]
    assert np.asarray(scored.classes).sum() <= 2 * 5120


def test_each_region_carries_the_class_its_model_predicts_most(streets: Path) -> None:
    from dealseg.training.label_cost import score_regions
    from dealseg.training.model import DEALNet, normalise

    preset = resolve_config("cpu", None, _overrides())
    torch.manual_seed(0)
    model = DEALNet(replace(preset.model, num_classes=11), pretrained=True).eval()
    with torch.no_grad():  # an untrained head predicts one class nearly everywhere: spread it
        model.segmentation_head.weight.mul_(50.0)
    scored = score_regions(streets, "train", [4], "cell:16", model, batch_size=1)
    image, _ = SegmentationDataset(streets, "train", size=(64, 80), indices=[4])[0]
    with torch.no_grad():  # the graph's segmentation: the argmax at stride 4
        coarse = model(normalise(image[None], model.cfg.mean, model.cfg.std)).logits
    pred = coarse.argmax(1)[0].numpy().repeat(4, axis=0).repeat(4, axis=1)
    ids = partition(parse_regions("cell:16"), (64, 80))
    expected = [np.bincount(pred[ids == r], minlength=11).argmax() for r in scored.pool.region]
    assert scored.pool.classes.tolist() == expected and len(expected) == 20
    assert len(set(expected)) > 1  # the regions differ: not one class everywhere
    assert score_regions(streets, "train", [4], "cell:16", None, size=(64, 80)).pool.classes is None
