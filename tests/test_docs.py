"""The README and the model card are true of the shipped model and the install: its id and
contract are read from the model file, `--resize letterbox` is run on it, the extras are the
Makefile's, and docs/report.png is made by a script that runs here on a tiny pool."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_streets_pool
from PIL import Image

import dealseg
from dealseg.client.cli import main as client_cli
from dealseg.core.contract import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MODEL_ID = re.compile(r"\bdeal:\d+:[0-9a-f]{16}\b")


@pytest.fixture(scope="module")
def shipped() -> ModelSpec:
    import onnxruntime as ort

    model = dealseg.shipped_repository() / "deal" / "1" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map)


def test_the_readme_and_the_model_card_name_the_shipped_model(shipped: ModelSpec) -> None:
    """The README once called the shipped model contract 1, refused by letterbox (it is
    contract 2), and showed the ids of older models."""
    assert set(MODEL_ID.findall(README)) == {shipped.model_id}
    claim = re.search(r"The shipped model \(`([^`]+)`\) is contract (\d+)", README)
    assert claim is not None and claim.groups() == (shipped.model_id, shipped.contract_version)
    card = (dealseg.shipped_repository() / "deal" / "MODEL_CARD.md").read_text()
    assert set(MODEL_ID.findall(card)) == {shipped.model_id}
    assert f"`{shipped.checkpoint_sha256}`" in card
    assert f"(graph contract {shipped.contract_version}:" in card


def test_letterbox_runs_on_the_shipped_model_as_the_readme_says(
    shipped: ModelSpec, tmp_path: Path
) -> None:
    assert shipped.takes_valid_box  # contract 2: the README's claim
    pool = tmp_path / "pool"
    write_streets_pool(tmp_path / "streets", 2)
    for i, size in enumerate([(90, 200), (120, 90)]):  # wide and tall: both letterboxed
        street = Image.open(tmp_path / "streets" / f"street_{i:04d}.png")
        pool.mkdir(exist_ok=True)
        street.crop((0, 0, size[1], size[0])).save(pool / f"{i}.png")
    args = ["score", str(pool), "-k", "1", "--resize", "letterbox", "--no-progress"]
    result = CliRunner().invoke(client_cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr


def test_the_readme_lists_the_extras_make_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", makefile)
    said = re.search(r"with its `([a-z,]+)` extras", README)
    assert installed is not None and said is not None
    assert said.group(1) == installed.group(1)


@pytest.mark.slow
def test_the_report_picture_is_made_by_its_script(tmp_path: Path) -> None:
    from chromium import find_chromium

    exe, why = find_chromium()
    if exe is None:
        pytest.skip(f"no Chromium: {why}")
    png, work = tmp_path / "report.png", tmp_path / "work"
    script = [sys.executable, str(ROOT / "docs" / "report_png.py"), "--out", str(png)]
    small = ["--streets", "8", "--photos", "1", "--top-k", "3", "--work", str(work)]
    subprocess.run([*script, *small], check=True, capture_output=True, timeout=600)
    assert (work / "out" / "report.html").is_file()
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size == (910, 1000)
        colours = picture.convert("RGB").getcolors(1 << 16)
    assert colours is not None and len(colours) > 100  # a page with pictures, not a blank
    with Image.open(ROOT / "docs" / "report.png") as committed:
        assert committed.format == "PNG" and committed.size == (910, 1000)
