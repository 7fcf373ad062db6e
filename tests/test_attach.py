"""Bring your own segmenter: the difficulty head attached to two segmenters that are not ours
(tests/foreign_segmenters.py), each trained here, exported to ONNX by this test, attached with
`deal-train attach` (the U-Net by the README's commands), wrapped by `deal-export attach`,
served by the real Triton server and scored like the embedded engine."""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from foreign_segmenters import (
    NHWC_METADATA,
    NHWCNet,
    UNet,
    export_segmenter,
    frames,
    nhwc_input,
    street_set,
    train_segmenter,
    unet_input,
    with_pixel_readout,
)
from helpers import assert_same_selection, deal_client, records, selection

from dealseg.core.contract import TOL_DS, TOL_ENTROPY, model_inputs
from dealseg.export.attach import check_attached
from dealseg.export.cli import main as export_cli
from dealseg.serving.repository import read_onnx_spec, write_repository
from dealseg.training.cli import main as train_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 80)
FAST = ("steps=60",)  # AttachConfig overrides of the NHWC run
STEPS = 40  # each segmenter's training steps


def run(cli, *args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def readme_commands() -> list[list[str]]:
    """The `deal-train` and `deal-export` commands of the README's "Bring your own segmenter"
    section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Bring your own segmenter") :]
    section = section[: section.index("\n## ", 3)]
    lines = re.sub(r"\\\n\s*", " ", section).splitlines()
    return [
        shlex.split(line.split("#")[0]) for line in lines if re.match(r"deal-(train|export) ", line)
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """frames/ (the street set in the plain layout), unet.onnx and nhwc.onnx: trained here."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    work = tmp_path_factory.mktemp("attach")
    data = street_set(work / "set", 100, SIZE, seed=3)
    data.rename(work / "frames")
    data = work / "frames"
    unet = train_segmenter(UNet(11, 8), data, unet_input, False, STEPS)
    export_segmenter(unet, torch.zeros(2, 3, *SIZE), work / "unet.onnx")
    nhwc = train_segmenter(NHWCNet(11, 16), data, nhwc_input, True, STEPS)
    export_segmenter(nhwc, torch.zeros(2, *SIZE, 3), work / "nhwc.onnx", NHWC_METADATA)
    return work


@pytest.fixture(scope="module")
def attached(work: Path) -> dict[str, Path]:
    """Each segmenter wrapped: the U-Net by the README's commands (its settings on the command
    line), the NHWC model by its metadata alone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for command in readme_commands():
            cli = train_cli if command[0] == "deal-train" else export_cli
            run(cli, *command[1:])
    data, nhwc = work / "frames", work / "nhwc-run"
    run(
        train_cli, "attach", "--segmenter", work / "nhwc.onnx", "--data", data, "--out", nhwc, *FAST
    )
    out = work / "nhwc-deal.onnx"
    run(
        export_cli,
        "attach",
        "--head",
        nhwc / "head.pt",
        "--segmenter",
        work / "nhwc.onnx",
        "--out",
        out,
        "--name",
        "nhwc",
        "--no-check",
        "--novelty-data",
        data,
    )
    return {"unet": work / "unet-deal.onnx", "nhwc": out}


def test_the_readme_attaches_and_exports_the_unet(work: Path, attached: dict[str, Path]) -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [
        ["deal-train", "attach"],
        ["deal-export", "attach"],
        ["deal-export", "repository"],
    ]
    spec = read_onnx_spec(attached["unet"])
    assert (spec.model_name, spec.input_size, spec.segmentation_size) == ("unet", SIZE, SIZE)
    assert spec.class_names[0] == "Sky" and spec.num_classes == 11


def test_the_settings_come_from_the_options_or_the_models_metadata(
    work: Path, attached: dict[str, Path]
) -> None:
    unet = json.loads((work / "unet-run" / "attach.json").read_text())["io"]
    assert (unet["input_layout"], unet["output_layout"], unet["output_kind"]) == (
        "nchw",
        "nchw",
        "logits",
    )
    assert unet["mean"] == [0.485, 0.456, 0.406] and unet["pixel_range"] == 1.0
    nhwc = json.loads((work / "nhwc-run" / "attach.json").read_text())
    io = nhwc["io"]
    assert (io["input_layout"], io["channel_order"], io["pixel_range"]) == ("nhwc", "bgr", 255.0)
    assert (io["output_layout"], io["output_kind"], io["output_size"]) == (
        "nhwc",
        "probabilities",
        [32, 40],
    )
    test = nhwc["test"]  # measured on the test split, which nothing was fit on
    assert test["split"] == "test" and test["images"] == len(frames(work / "frames", "test"))
    assert 0 <= test["pixel_auroc"] <= 1 and nhwc["refit"]["pixels"] > 0


@pytest.mark.parametrize("name", ["unet", "nhwc"])
def test_the_pixel_readout_is_left_out_only_where_val_finds_it_worse(
    work: Path, attached: dict[str, Path], name: str
) -> None:
    from dealseg.training.attach import KEEP_CONFIDENCE, load_head

    pixel = json.loads((work / f"{name}-run" / "attach.json").read_text())["pixel"]
    assert pixel["pixels"] > 0 and 0 <= pixel["val_worse_share"] <= 1
    assert pixel["kept"] == (pixel["val_worse_share"] < KEEP_CONFIDENCE)
    head = load_head(work / f"{name}-run" / "head.pt")
    assert (head.build_pixel() is not None) == pixel["kept"]
    assert head.metrics["pixel"] == pixel


def test_a_map_is_found_worse_on_the_resamples_where_its_auroc_is_lower() -> None:
    from dealseg.training.attach import worse_share

    rng = np.random.default_rng(0)
    wrong = [rng.random(200) < 0.3 for _ in range(20)]
    good = [w + rng.normal(0, 0.3, 200) for w in wrong]  # AUROC about 0.99
    poor = [w + rng.normal(0, 3.0, 200) for w in wrong]  # about 0.55
    assert worse_share(poor, good, wrong) == 1.0
    assert worse_share(good, poor, wrong) == 0.0
    assert worse_share(good, good, wrong) == 0.0  # equal is not worse
    mixed = [g if i % 2 else p for i, (g, p) in enumerate(zip(good, poor, strict=True))]
    assert 0.0 < worse_share(mixed, [w + rng.normal(0, 1.2, 200) for w in wrong], wrong) < 1.0


def test_a_pixel_readout_is_exported_at_the_segmenters_output_size(
    work: Path, attached: dict[str, Path], tmp_path: Path
) -> None:
    """Whatever the val split decided: a head with a pixel read-out exports its map at the
    segmenter's output resolution (NHWC: half the input), and the graph's scores match the
    torch head's."""
    head = with_pixel_readout(work / "nhwc-run" / "head.pt", tmp_path / "head.pt")
    out = tmp_path / "pixel.onnx"
    run(export_cli, "attach", "--head", head, "--segmenter", work / "nhwc.onnx", "--out", out)
    assert read_onnx_spec(out).difficulty_size == (32, 40)
    report = check_attached(out, work / "nhwc.onnx", head, frames(work / "frames", "test"))
    assert report.failures == [] and report.argmax_mismatches == 0, report


def test_an_attached_graph_carries_novelty_of_its_own_embeddings(
    work: Path, attached: dict[str, Path]
) -> None:
    """`deal-export attach --novelty-data`: the statistics of the wrapped graph's embeddings (the
    segmenter's class probabilities pooled per quadrant) of the set's train split, calibrated on
    its val split; the held-out test frames get finite novelty, most of them below 0.99."""
    import onnxruntime as ort

    from dealseg.export.novelty import carried_novelty
    from dealseg.training.data import list_plain

    stats = carried_novelty(attached["nhwc"])
    assert stats is not None and carried_novelty(attached["unet"]) is None
    assert stats.fitted == len(list_plain(work / "frames", "train"))
    assert len(stats.reference) == len(list_plain(work / "frames", "val"))
    spec = read_onnx_spec(attached["nhwc"])
    session = ort.InferenceSession(str(attached["nhwc"]), providers=["CPUExecutionProvider"])
    test = frames(work / "frames", "test")
    novelty = session.run(["novelty"], model_inputs(spec, test))[0]
    assert np.all(np.isfinite(novelty)) and np.mean(novelty > 0.99) < 0.5


@pytest.mark.parametrize("name", ["unet", "nhwc"])
def test_the_wrapped_graph_keeps_the_segmenters_argmax_on_every_test_frame(
    work: Path, attached: dict[str, Path], name: str
) -> None:
    test = frames(work / "frames", "test")
    report = check_attached(
        attached[name], work / f"{name}.onnx", work / f"{name}-run" / "head.pt", test
    )
    assert report.frames == len(test) and report.argmax_mismatches == 0, report
    assert report.failures == [], report
    assert report.max_abs["ds"] <= TOL_DS and report.max_abs["entropy"] <= TOL_ENTROPY


@pytest.mark.triton
def test_triton_serves_both_attached_models_like_the_embedded_engine(
    work: Path, attached: dict[str, Path], tmp_path: Path
) -> None:
    from dealseg.serving.server import TritonServer

    repo = tmp_path / "repo"
    for model in attached.values():
        write_repository(model, repo, "python-cpu")
    pool = work / "frames" / "images"
    embedded = {}
    for name, model in attached.items():
        embedded[name] = tmp_path / f"embedded-{name}"
        r = deal_client("score", pool, "-k", 5, "--model", model, "--out", embedded[name])
        assert r.exit_code == 0, r.stderr
    with TritonServer(repo) as server:
        for name, model in attached.items():
            served = tmp_path / f"triton-{name}"
            url = ("--url", server.url_grpc, "--model-name", name)
            r = deal_client("score", pool, "-k", 5, *url, "--out", served, "--no-progress")
            assert r.exit_code == 0, r.stderr
            assert_same_selection(selection(served), selection(embedded[name]))
            mine = {x["path"]: x for x in records(embedded[name])}
            theirs = records(served)
            assert len(theirs) == len(mine) == 100
            for x in theirs:
                assert x["model"] == read_onnx_spec(model).model_id
                assert abs(x["ds"] - mine[x["path"]]["ds"]) <= TOL_DS
                novelty = mine[x["path"]]["novelty"]  # the U-Net's graph has no statistics
                assert x["novelty"] == (None if name == "unet" else pytest.approx(novelty))
                assert list(x["class_fraction"])[:2] == ["Sky", "Building"]


def test_a_segmenter_that_cannot_be_attached_is_refused_in_one_line(
    work: Path, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(
        UNet(11, 4).eval(),
        (torch.zeros(1, 3, *SIZE),),
        str(fixed),
        input_names=["x"],
        output_names=["y"],
        opset_version=13,
        dynamo=False,
    )
    five = export_segmenter(UNet(5, 4).eval(), torch.zeros(2, 3, *SIZE), tmp_path / "five.onnx")
    data = work / "frames"
    for model, words in (
        (fixed, "fixed batch of 1"),
        (five, "no axis of the data set's 11 classes"),
    ):
        r = CliRunner().invoke(
            train_cli,
            [
                "attach",
                "--segmenter",
                str(model),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "o"),
            ],
        )
        assert r.exit_code == 1 and words in r.output, r.output
        assert r.output.count("\n") == 1
    r = CliRunner().invoke(
        export_cli,
        [
            "attach",
            "--head",
            str(work / "nhwc-run" / "head.pt"),
            "--segmenter",
            str(five),
            "--out",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert r.exit_code == 1 and "is not the segmenter" in r.output, r.output


def test_the_ray_path_scores_an_attached_model_like_the_embedded_engine(
    work: Path, attached: dict[str, Path], tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted((work / "frames" / "images").glob("*.png"))[:12]:
        shutil.copy(image, pool)
    embedded, on_ray = tmp_path / "embedded", tmp_path / "ray"
    args = ("-k", 3, "--model", attached["nhwc"], "--no-progress")
    r = deal_client("score", pool, *args, "-o", embedded)
    assert r.exit_code == 0, r.stderr
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        r = deal_client("score", pool, *args, "-o", on_ray, "--ray")
        assert r.exit_code == 0, r.stderr
    finally:
        ray.shutdown()
    assert_same_selection(selection(on_ray), selection(embedded))
