"""Bring your own data: a 4-class plain dataset with its class file, trained, exported as
`roads` version 3, served by the real Triton server beside version 1, scored by both engines.

Also the model repository's versions without a server: a version is written beside the others,
never over one unless forced, and only when it fits the config they share.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    assert_same_selection,
    deal_client,
    records,
    selection,
    write_pool,
    write_wide_pool,
)
from PIL import Image

from dealseg.core.contract import CONTRACT_VERSION, ModelSpec, version_metadata
from dealseg.core.modelfile import read_onnx_spec
from dealseg.export.cli import main as export_cli
from dealseg.serving.repository import (
    config_metadata,
    parse_config,
    parse_version_policy,
    versions_of,
    write_repository,
)
from dealseg.training.cli import main as train_cli

CLASSES = {
    "classes": [
        {"name": "road", "value": 1, "color": [128, 64, 128]},
        {"name": "lane marking", "value": 2, "color": [255, 255, 255]},
        {"name": "vehicle", "value": 3, "color": [0, 0, 142]},
        {"name": "person", "value": 4, "color": [220, 20, 60]},
    ],
    "ignore": [0, 255],
}
NAMES = [c["name"] for c in CLASSES["classes"]]
SIZE = (64, 80)
TINY = [
    "decoder_width=16",
    "attention_size=[8,10]",
    "input_size=[64,80]",
    "epochs=1",
    "batch_size=4",
    "crop=[64,64]",
    "val_every=1",
    "threads=1",
    "refit_difficulty=false",
]


def write_plain_dataset(root: Path, count: int = 12) -> Path:
    """images/ + masks/ as a mask export leaves them: road below a horizon, a lane marking, a
    vehicle box, a person, unlabelled sky (0); split files and the class file."""
    rng = np.random.default_rng(11)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = SIZE
    for i in range(count):
        mask = np.zeros(SIZE, np.uint8)
        horizon = int(rng.integers(16, 32))
        mask[horizon:] = 1
        mask[horizon:, w // 2 - 2 : w // 2 + 2] = 2
        y, x = int(rng.integers(horizon, h - 12)), int(rng.integers(0, w - 20))
        mask[y : y + 10, x : x + 18] = 3
        mask[y : y + 12, (x + 30) % (w - 4) : (x + 30) % (w - 4) + 3] = 4
        colours = np.array(
            [[90, 140, 220], [80, 80, 80], [250, 250, 250], [200, 30, 30], [30, 200, 60]]
        )
        noise = rng.integers(-20, 20, (*SIZE, 3))
        image = (colours[mask] + noise).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"frame_{i:03d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"frame_{i:03d}.png")
    stems = [f"frame_{i:03d}" for i in range(count)]
    for split, part in (("train", stems[:8]), ("val", stems[8:10]), ("test", stems[10:])):
        (root / f"{split}.txt").write_text("\n".join(part) + "\n")
    (root / "classes.json").write_text(json.dumps(CLASSES, indent=1))
    return root


def run(cli, *args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def roads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4-class model trained for a few steps and exported as roads version 3."""
    tmp = tmp_path_factory.mktemp("byod")
    data = write_plain_dataset(tmp / "data")
    run(train_cli, "fit", "--data", data, "--out", tmp / "run", "--device", "auto", *TINY)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out = tmp / "roads.onnx"
    checkpoint = tmp / "run" / "best.pt"
    named = ("--name", "roads", "--version", 3, "--no-compare")
    run(export_cli, "onnx", "--checkpoint", checkpoint, "--out", out, *named)
    return out


@pytest.fixture(scope="module")
def repo(roads: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """roads/1 (the same weights, served as version 1), then roads/3 written beside it."""
    repo = tmp_path_factory.mktemp("repo")
    run(export_cli, "repository", "--model", roads, "--repo", repo, "--version", 1)
    first = (repo / "roads" / "1" / "model.onnx").read_bytes()
    said = run(export_cli, "repository", "--model", roads, "--repo", repo)
    assert "versions 1, 3, policy all" in said
    assert (repo / "roads" / "1" / "model.onnx").read_bytes() == first  # left as it was
    return repo


@pytest.mark.slow
def test_the_checkpoint_and_the_model_carry_the_class_file(roads: Path) -> None:
    spec = read_onnx_spec(roads)
    assert list(spec.class_names) == NAMES and spec.num_classes == 4
    assert spec.palette[0] == (128, 64, 128)
    assert (spec.model_name, spec.model_version) == ("roads", "3")
    assert spec.model_id.startswith("roads:3:") and spec.contract_version == CONTRACT_VERSION


def test_versions_share_one_config_with_each_ones_metadata(repo: Path, roads: Path) -> None:
    config = parse_config(repo / "roads" / "config.pbtxt")
    assert config["name"] == "roads" and "all" in config["version_policy"]
    assert versions_of(repo / "roads") == ["1", "3"]
    params = config_metadata(config)
    one, three = (ModelSpec.from_metadata(version_metadata(params, v)) for v in ("1", "3"))
    assert three == read_onnx_spec(roads) == read_onnx_spec(repo / "roads" / "3" / "model.onnx")
    assert one == read_onnx_spec(repo / "roads" / "1" / "model.onnx")  # stamped as version 1
    assert one.model_id.startswith("roads:1:") and one.class_names == three.class_names


def test_a_version_is_never_overwritten_unless_forced(repo: Path, roads: Path) -> None:
    result = CliRunner().invoke(
        export_cli, ["repository", "--model", str(roads), "--repo", str(repo)]
    )
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"{repo / 'roads' / '3'} exists (roads version 3)" in result.output
    assert "--force" in result.output
    before = parse_config(repo / "roads" / "config.pbtxt")
    forced = run(export_cli, "repository", "--model", roads, "--repo", repo, "--force")
    assert "versions 1, 3" in forced
    assert parse_config(repo / "roads" / "config.pbtxt") == before


@pytest.mark.slow
def test_a_version_that_does_not_fit_the_others_is_refused(
    repo: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """The 11-class tiny model cannot join roads: its versions share a config."""
    result = CliRunner().invoke(
        export_cli,
        [
            "repository",
            "--model",
            str(tiny_onnx),
            "--repo",
            str(repo),
            "--name",
            "roads",
            "--version",
            "4",
        ],
    )
    assert result.exit_code == 1 and "export it under another --name" in result.output
    assert versions_of(repo / "roads") == ["1", "3"]
    write_repository(tiny_onnx, repo, "python-cpu")  # another name: beside roads
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["deal", "roads"]


def test_version_policies() -> None:
    assert parse_version_policy("latest:2").latest.num_versions == 2
    assert list(parse_version_policy("specific:1,3").specific.versions) == [1, 3]
    for bad in ("newest", "latest:0", "specific:", "all:2"):
        with pytest.raises(ValueError, match="use all, latest:N or specific:N"):
            parse_version_policy(bad)


@pytest.mark.triton
def test_triton_serves_both_versions_and_agrees_with_the_embedded_engine(
    repo: Path, roads: Path, tmp_path: Path
) -> None:
    from dealseg.serving.server import TritonServer

    pool = write_pool(tmp_path / "pool", 6, size=SIZE, seed=4)
    wide = write_wide_pool(tmp_path / "wide")
    embedded = tmp_path / "embedded"
    assert deal_client("score", pool, "-k", 3, "--model", roads, "--out", embedded).exit_code == 0
    three = read_onnx_spec(roads).model_id
    for r in records(embedded):
        assert list(r["class_fraction"]) == NAMES and r["model"] == three
    boxed = tmp_path / "boxed"
    letterbox = ("--resize", "letterbox", "--no-progress")
    assert (
        deal_client("score", wide, "-k", 2, "--model", roads, *letterbox, "--out", boxed).exit_code
        == 0
    )

    with TritonServer(repo) as server:
        served = tmp_path / "triton"
        url = ("--url", server.url_grpc, "--model-name", "roads")
        result = deal_client("score", pool, "-k", 3, *url, "--out", served, "--no-progress")
        assert result.exit_code == 0, result.stderr
        assert (
            f"model {three} via Triton grpc at {server.url_grpc}, model roads version 3"
            in result.stderr
        )
        assert_same_selection(selection(served), selection(embedded))
        for r in records(served):
            assert list(r["class_fraction"]) == NAMES and r["model"] == three

        old = tmp_path / "v1"
        result = deal_client("score", pool, "-k", 3, *url, "--model-version", 1, "--out", old)
        assert result.exit_code == 0, result.stderr
        one = {r["model"] for r in records(old)}
        assert len(one) == 1 and one.pop().startswith("roads:1:")  # version 1 still answers

        served_boxed = tmp_path / "triton-boxed"
        result = deal_client("score", wide, "-k", 2, *url, *letterbox, "--out", served_boxed)
        assert result.exit_code == 0, result.stderr
        assert_same_selection(selection(served_boxed), selection(boxed))

        health = deal_client("health", *url)
        assert json.loads(health.stdout)["model_version"] == "3"
