"""Typed settings: the CLI and the Python API build the same dataclasses and refuse the same
values the same way; the API names its valid keywords."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import deal_client

import dealseg
from dealseg.client.settings import (
    EngineSettings,
    ScoreSettings,
    SelectSettings,
    SettingsError,
    TritonSettings,
)


def cli(*args: object) -> tuple[int, str]:
    result = deal_client(*args)
    return result.exit_code, result.stderr


def test_an_unknown_api_keyword_is_a_type_error_naming_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="batchsize") as caught:
        dealseg.score("no-such-pool", batchsize=3)
    for valid in ("batch_size", "resize", "format", "protocol", "timeout"):
        assert valid in str(caught.value)
    with pytest.raises(TypeError, match="k_max"):
        dealseg.select([], "ds", k_max=3)


def test_triton_keywords_without_a_url_are_refused_not_ignored() -> None:
    with pytest.raises(SettingsError, match="give a url"):
        dealseg.score("no-such-pool", timeout=5.0)
    with pytest.raises(SettingsError, match="shm"):
        EngineSettings(triton=TritonSettings(shm=True))
    assert EngineSettings(urls=("localhost:8001",), triton=TritonSettings(shm=True)).urls


@pytest.mark.parametrize(
    ("keywords", "words"),
    [
        ({"batch_size": 0}, "batch_size must be in 1..1024"),
        ({"resize": "squash"}, "resize must be one of stretch, letterbox, crop"),
        ({"format": "csv"}, "format must be one of jsonl, parquet"),
        ({"workers": 300}, "workers must be in 1..256"),
    ],
)
def test_score_settings_are_checked_on_construction(keywords: dict, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        dealseg.score("no-such-pool", **keywords)
    with pytest.raises(SettingsError, match=words):
        ScoreSettings(**keywords)


def test_cli_and_api_refuse_a_group_regex_without_quotas_alike(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="group_by names the groups of per_group") as api:
        dealseg.select([], "ds", 3, group_by="cam")
    code, stderr = cli("select", tmp_path, "-k", 3, "--group-by", "cam")
    assert code == 2 and f"--group-by: {api.value}" in stderr


def test_cli_and_api_refuse_a_bad_regex_and_a_bad_weight_alike(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not a regular expression") as api:
        dealseg.select([], "ds", 3, per_group=1, group_by="(")
    code, stderr = cli("select", tmp_path, "-k", 3, "--per-group", 1, "--group-by", "(")
    assert code == 2 and "not a regular expression" in stderr
    assert str(api.value).split(":")[0] in stderr
    with pytest.raises(SettingsError, match="must be >= 0"):
        dealseg.select([], "ds", 3, balance={"Road": float("nan")})


def test_an_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(SettingsError, match="entropy") as caught:
        SelectSettings("nope")
    assert "coreset" in str(caught.value) and "'nope'" in str(caught.value)


def test_model_and_url_exclude_each_other_in_both(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    with pytest.raises(SettingsError, match="exclude each other"):
        dealseg.score("no-such-pool", model=model, url="localhost:8001")
    code, stderr = cli("select", tmp_path, "-k", 1, "--model", model, "--url", "localhost:8001")
    assert code == 2 and "exclude each other" in stderr


@pytest.mark.parametrize(
    ("keywords", "words"),
    [
        ({"k": 2.5}, "k must be a whole number, got 2.5"),
        ({"k": True}, "k must be a whole number, got True"),
        ({"seed": "1"}, "seed must be a whole number, got '1'"),
        ({"diverse": "0.9"}, "diverse must be a number, got '0.9'"),
        ({"strategy": None}, "strategy must be one of"),
        ({"strategy": b"ds"}, "strategy must be one of"),
        ({"per_group": 0}, "per_group must be >= 1"),
        ({"per_group": 1, "group_by": b"cam"}, "group_by must be a regular expression, got b'cam'"),
        ({"balance": {"Road": "2"}}, "the weight of 'Road' must be >= 0"),
    ],
)
def test_values_of_the_wrong_kind_are_settings_errors_naming_the_setting(
    keywords: dict, words: str
) -> None:
    with pytest.raises(SettingsError, match=words):
        SelectSettings(**keywords)
    with pytest.raises(SettingsError, match=words):
        dealseg.select([], **{"strategy": "ds", "k": 3, **keywords})


def test_an_empty_pool_is_no_images_in_the_api_as_in_the_cli(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images") as api:
        dealseg.score(empty)
    code, stderr = cli("score", empty, "-k", 1, "--out", tmp_path / "out")
    assert code == 1 and str(api.value) in stderr
    with pytest.raises(ValueError, match="holds no images"):
        dealseg.score(os.fsencode(empty))  # a path as bytes, as os.listdir(bytes) gives
    with pytest.raises(ValueError, match="holds no images"):
        dealseg.score([])


@pytest.mark.parametrize("pool", [None, 3])
def test_a_pool_that_is_no_path_is_a_settings_error(pool: object) -> None:
    words = f"pool must be a folder, a list file or paths, got {pool}"
    with pytest.raises(SettingsError, match=words):
        dealseg.score(pool)


def test_a_labeled_file_given_as_bytes_is_read_as_its_path(tiny_onnx: Path, tmp_path: Path) -> None:
    from helpers import write_pool

    def paths(table: object) -> list[str]:  # a DataFrame, or records without pandas
        rows = table.to_dict("records") if hasattr(table, "to_dict") else table
        return sorted(r["path"] for r in rows)  # type: ignore[attr-defined]

    table = dealseg.score(write_pool(tmp_path / "pool", 3), model=tiny_onnx)
    labeled = tmp_path / "labeled.txt"
    labeled.write_text(paths(table)[0] + "\n")
    picks = dealseg.select(table, "ds", 3, labeled=os.fsencode(labeled))
    assert paths(picks) == paths(table)[1:]
