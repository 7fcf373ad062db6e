"""`deal-train fit` and `eval` end to end on a tiny street set: checkpoint, resume, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from click.testing import CliRunner

from dealseg.training.cli import main as train_cli
from dealseg.training.streets.dataset import write_streets

TINY = [
    "decoder_width=16",
    "attention_size=[8,10]",
    "input_size=[64,80]",
    "epochs=2",
    "batch_size=4",
    "crop=[64,64]",
    "val_every=1",
    "threads=1",
    "refit_difficulty=true",
]


def test_fit_resume_and_eval(tmp_path: Path) -> None:
    data = tmp_path / "streets"
    write_streets(data, n=24, size=(64, 80), seed=3, split=(0.5, 0.25, 0.25))  # 6 to refit on
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(train_cli, ["fit", "--data", str(data), "--out", str(run), *TINY])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    n_train = len((data / "train.txt").read_text().splitlines())
    assert 0 <= summary["val_miou"] <= 1 and summary["train_images"] == n_train
    raw = torch.load(run / "best.pt", weights_only=True)
    assert raw["model_config"]["decoder_width"] == 16 and len(raw["class_names"]) == 11
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_miou" in h for h in history)
    refit = raw["metrics"]["difficulty_refit"]  # the head refit on the val split, recorded
    assert refit == summary["difficulty_refit"] and refit["split"] == "val"
    assert (refit["fit_images"], refit["held_apart_images"], summary["val_images"]) == (3, 3, 6)
    assert "12 training images, 6 validation images" in result.stderr
    assert refit["auroc_after"] >= refit["auroc_before"] and refit["pixels"] > 0

    again = runner.invoke(train_cli, ["fit", "--data", str(data), "--out", str(run), *TINY])
    assert again.exit_code == 0 and "resuming" in again.output  # nothing left to train
    assert json.loads(again.stdout.strip().splitlines()[-1])["difficulty_refit"] == refit
    kept = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    head = [k for k in kept if k.startswith("difficulty_head.classifier.")]
    assert head and all(torch.equal(kept[k], raw["state_dict"][k]) for k in head)  # not refit twice

    out = tmp_path / "eval"
    evaluated = runner.invoke(
        train_cli,
        [
            "eval",
            "--checkpoint",
            str(run / "best.pt"),
            "--data",
            str(data),
            "--split",
            "test",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len((data / "test.txt").read_text().splitlines())
    assert metrics["images"] == n_test and len(metrics["iou_per_class"]) == 11
    auroc = metrics["difficulty_auroc"]
    assert math.isnan(auroc) or 0 <= auroc <= 1  # NaN only if a split has no errors at all
    assert "| **mIoU** |" in evaluated.output and (out / "figure.png").stat().st_size > 1000

    # A standalone refit (for checkpoints trained without one) writes a new checkpoint.
    refit_out = tmp_path / "refit.pt"
    refitted = runner.invoke(
        train_cli,
        [
            "refit",
            "--checkpoint",
            str(run / "best.pt"),
            "--data",
            str(data),
            "--split",
            "train",
            "--loss",
            "bce",
            "--out",
            str(refit_out),
            "--threads",
            "1",
        ],
    )
    assert refitted.exit_code == 0, refitted.output
    record = json.loads(refitted.stdout.strip().splitlines()[-1])["difficulty_refit"]
    assert record["split"] == "train" and record["auroc_after"] >= record["auroc_before"]
    assert torch.load(refit_out, weights_only=True)["metrics"]["difficulty_refit"] == record

    # A new head on the same segmenter: the paper's, refit from scratch; segmenter unchanged.
    paper_out = tmp_path / "paper.pt"
    args = ["refit", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--out"]
    paper = runner.invoke(train_cli, [*args, str(paper_out), "--inputs", "Q", "--hidden", "0"])
    assert paper.exit_code == 0, paper.output
    old, new = raw["state_dict"], torch.load(paper_out, weights_only=True)
    assert new["model_config"]["difficulty_inputs"] == "Q"
    assert new["model_config"]["difficulty_hidden"] == 0
    assert new["state_dict"]["difficulty_head.classifier.weight"].shape == (1, 11, 1, 1)
    kept = [k for k in old if not k.startswith("difficulty_head.")]
    assert kept and all(torch.equal(new["state_dict"][k], old[k]) for k in kept)
    bad = runner.invoke(train_cli, [*args, str(paper_out), "--inputs", "Q+XYZ"])
    assert bad.exit_code == 2 and "unknown difficulty head input 'XYZ'" in bad.output


def test_fit_on_a_small_set_says_its_splits_and_does_not_refit_on_one_image(
    tmp_path: Path,
) -> None:
    """40 frames once gave one validation image, a head refit on it reported AUROC 0.743 ->
    1.000 and was kept. The split sizes are said, and the refit needs images held apart."""
    data = tmp_path / "streets"
    write_streets(data, n=12, size=(64, 80), seed=3, split=(0.75, 0.1, 0.15))
    tiny = [o for o in TINY if not o.startswith("epochs=")]
    args = ["fit", "--data", str(data), "--out", str(tmp_path / "run"), *tiny, "epochs=1"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["train_images"], summary["val_images"]) == (9, 1)
    assert "9 training images, 1 validation images" in result.stderr
    assert "warning: 1 validation images choose best.pt by a noisy mIoU" in result.stderr
    skipped = summary["difficulty_refit"]["skipped"]
    assert "the refit needs at least 4 images" in skipped and "the val split has 1" in skipped
    assert "warning: the difficulty head is not refit" in result.stderr
    assert "auroc_after" not in summary["difficulty_refit"]
    raw = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "difficulty_refit" not in raw["metrics"]  # the trained head, unchanged
    refit = CliRunner().invoke(
        train_cli,
        ["refit", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data)]
        + ["--out", str(tmp_path / "r.pt")],
    )
    assert refit.exit_code == 1 and "the refit needs at least 4 images" in refit.output
    assert not (tmp_path / "r.pt").exists()


def test_fit_rejects_unknown_settings(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        train_cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "learning_rate=1"]
    )
    assert result.exit_code == 2 and "unknown setting 'learning_rate'" in result.output


def test_fit_rejects_settings_of_the_wrong_form(tmp_path: Path) -> None:
    for bad, hint in [
        ("attention_size=45,60", "attention_size=[60,80]"),
        ("attention_size=[45]", "attention_size=[60,80]"),
        ("epochs=2.5", "epochs=100"),
        ("separable=1", "separable=false"),
    ]:
        result = CliRunner().invoke(
            train_cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "r"), bad]
        )
        assert result.exit_code == 2 and hint in result.output, (bad, result.output)


def test_bad_data_and_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    fitted = runner.invoke(
        train_cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    refitted = runner.invoke(
        train_cli,
        ["refit", "--checkpoint", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "x")],
    )
    for result in (fitted, refitted):
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert result.output.startswith("Error: ") and str(tmp_path) in result.output


def test_fit_help_lists_every_override_key() -> None:
    """`fit --help` once named two examples of OVERRIDES and none of the valid keys."""
    import dataclasses

    from dealseg.training.cli import MODEL_SETTINGS, TRAIN_SETTINGS
    from dealseg.training.config import TrainConfig
    from dealseg.training.model import ModelConfig

    assert tuple(f.name for f in dataclasses.fields(ModelConfig)) == MODEL_SETTINGS
    assert tuple(f.name for f in dataclasses.fields(TrainConfig)) == TRAIN_SETTINGS
    for command in ("fit", "al"):
        shown = " ".join(CliRunner().invoke(train_cli, [command, "--help"]).output.split())
        for key in (*MODEL_SETTINGS, *TRAIN_SETTINGS):
            assert f" {key}," in shown or f" {key}." in shown, (command, key)
