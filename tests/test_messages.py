"""Usage errors exit 2 everywhere, and every message says what happened and what to do: the
cases a new user met that ended in exit 1, a misleading line or a silent wrong result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import write_pool

from dealseg.client.cli import main
from dealseg.client.handoff import PathMap
from dealseg.core.ranking import Options, Pool, choose


def deal_client(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def scored(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scored")
    out = root / "out"
    pool = write_pool(root / "pool", 6)
    result = deal_client("score", pool, "-k", 3, "--model", tiny_onnx, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


def test_usage_errors_exit_2(scored: Path, tmp_path: Path) -> None:
    predictions = deal_client("export", scored, "--format", "cvat", "--predictions")
    assert predictions.exit_code == 2 and "cvat takes no predictions" in predictions.stderr
    select = ("select", scored, "-k", 2, "--out")
    nope = deal_client(*select, tmp_path / "a", "--class-weight", "Nope=5")
    assert nope.exit_code == 2 and "no class 'Nope'; classes: sky, building" in nope.stderr
    huge = ("--class-weight", "sky=1e308", "--class-weight", "road=1e308")
    overflow = deal_client(*select, tmp_path / "b", *huge)
    assert overflow.exit_code == 2 and "sum to more than a float holds" in overflow.stderr
    twice = ("--path-map", f"{tmp_path}=/a", "--path-map", f"{tmp_path}/=/b")
    rules = deal_client("export", scored, "--format", "csv", *twice)
    assert rules.exit_code == 2 and f"two rules for {tmp_path}" in rules.stderr
    assert not any((tmp_path / name).exists() for name in ("a", "b"))


def test_weights_that_overflow_are_refused_by_the_library_too() -> None:
    pool = Pool(["a", "b"], {"ds": np.array([0.1, 0.2])}, class_fraction=np.eye(2))
    with pytest.raises(ValueError, match="sum to more than a float holds"):
        choose(pool, "ds", 1, Options(balance=np.array([1e308, 1e308])))


def test_strategy_names_are_case_insensitive(scored: Path, tmp_path: Path) -> None:
    result = deal_client("select", scored, "-k", 2, "--strategy", "DS", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "o" / "selection.json").read_text())["strategy"] == "ds"


def test_an_out_dir_that_cannot_be_written_says_so(tiny_onnx: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool", 2)
    os.symlink("loop", tmp_path / "loop")
    loop = deal_client("score", pool, "-k", 1, "--model", tiny_onnx, "--out", tmp_path / "loop")
    assert loop.exit_code == 1 and "a symbolic link that leads nowhere" in loop.stderr
    (tmp_path / "file").write_text("")
    inside = tmp_path / "file" / "out"
    nowhere = deal_client("score", pool, "-k", 1, "--model", tiny_onnx, "--out", inside)
    assert nowhere.exit_code == 1 and f"cannot write {inside}: Not a directory" in nowhere.stderr
    for result in (loop, nowhere):  # nothing was written, so nothing to resume
        assert "resume" not in result.stderr and "Traceback" not in result.stderr


def test_a_pytorch_checkpoint_as_model_names_the_export(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pool = write_pool(tmp_path / "pool", 2)
    args = ("-k", 1, "--model", tiny_checkpoint, "--out", tmp_path / "o")
    result = deal_client("score", pool, *args)
    assert result.exit_code == 1
    assert f"{tiny_checkpoint} is a PyTorch checkpoint, not an ONNX model" in result.stderr
    assert "`deal-export onnx --checkpoint" in result.stderr


def test_labeled_folder_without_scores_says_what_it_expects(scored: Path, tmp_path: Path) -> None:
    (tmp_path / "labelled").mkdir()
    args = ("--labeled", tmp_path / "labelled", "--out", tmp_path / "o")
    result = deal_client("select", scored, "-k", 2, *args)
    assert result.exit_code == 1 and "no scores file at" in result.stderr
    assert "a text file of their paths, or a .npy of their embeddings" in result.stderr


def test_a_path_map_from_object_storage_rewrites_uris() -> None:
    rules = PathMap.parse(["s3://bucket/pool/=https://cdn.example.com/pool"])
    assert rules.apply("s3://bucket/pool/a b.png") == "https://cdn.example.com/pool/a%20b.png"
    assert rules.apply("s3://bucket/other.png") == "s3://bucket/other.png"


@pytest.mark.triton
def test_health_names_the_served_models_and_the_protocol_that_answered(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    write_repository(tiny_onnx, tmp_path / "repo", target="python-cpu")
    with TritonServer(tmp_path / "repo") as server:
        unknown = deal_client("health", "--url", server.url_grpc, "--model-name", "nope")
        assert unknown.exit_code == 1
        assert "no model 'nope'; the server has 'deal' (choose with --model-name)" in (
            unknown.stderr
        )
        http = deal_client("health", "--url", server.url_grpc, "--protocol", "http")
        assert http.exit_code == 1
        assert "the server there answers grpc, not http: use --protocol grpc" in http.stderr
        grpc = deal_client("health", "--url", server.url_http, "--protocol", "grpc", "--retries", 0)
        assert grpc.exit_code == 1
        assert "the server there answers http, not grpc: use --protocol http" in grpc.stderr
        assert deal_client("health", "--url", server.url_grpc).exit_code == 0
