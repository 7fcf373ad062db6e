"""Packaging: one `dealseg` namespace, torch-free serving and client, the documented scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import write_streets_pool

import dealseg

SCRIPTS = ("deal-client", "deal-train", "deal-export", "deal-serve")


def run_fresh(code: str) -> str:
    """Run `code` in a fresh interpreter outside the checkout, so only installed code imports."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    return out.stdout.strip()


def test_serving_and_client_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import dealseg.core.contract, dealseg.serving.server, dealseg.serving.repository\n"
        "import dealseg.serving.cli\n"
        "import dealseg.client.cli, dealseg.client.scoring, dealseg.client.engines\n"
        "import dealseg.core.ranking, dealseg.core.decode, dealseg.client.maps\n"
        "import dealseg.client.evaluation, dealseg.core.metrics, dealseg.core.labels\n"
        "print('torch' in sys.modules)\n"
    )
    assert run_fresh(code) == "False"


def test_core_imports_only_numpy_and_pillow() -> None:
    code = (
        "import sys\n"
        "import dealseg.core.contract, dealseg.core.decode, dealseg.core.files\n"
        "import dealseg.core.pool, dealseg.core.ranking, dealseg.core.registry\n"
        "import dealseg.core.metrics, dealseg.core.labels\n"
        "print([m for m in ('torch', 'onnxruntime', 'tritonclient', 'dealseg.client',"
        " 'dealseg.training') if m in sys.modules])\n"
    )
    assert run_fresh(code) == "[]"


def test_training_never_imports_the_client() -> None:
    training = Path(__file__).resolve().parents[1] / "training"
    named = [p.name for p in training.glob("*.py") if "dealseg.client" in p.read_text()]
    assert named == []
    modules = ", ".join(f"dealseg.training.{p.stem}" for p in sorted(training.glob("*.py")))
    code = f"import sys\nimport {modules}\nprint('dealseg.client' in sys.modules)\n"
    assert run_fresh(code) == "False"


def test_nothing_generic_lands_at_the_top_of_site_packages() -> None:
    code = (
        "import importlib.util as u\n"
        "print([n for n in ('client', 'training', 'export', 'serving') if u.find_spec(n)])\n"
    )
    assert run_fresh(code) == "[]"


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_scripts_answer_help(script: str) -> None:
    exe = Path(sys.executable).with_name(script)
    assert exe.exists(), f"{script} is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "Usage:" in out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_scripts_answer_version(script: str) -> None:
    exe = Path(sys.executable).with_name(script)
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"{script}, version {dealseg.__version__}\n"


def _copy_source(root: Path, dest: Path) -> Path:
    """The checkout's tracked kind of files (no venv, caches, builds or data), to build from."""
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "data"
    )
    return Path(shutil.copytree(root, dest, ignore=skip))


@pytest.mark.slow
def test_an_installed_wheel_scores_a_folder_with_the_shipped_model(tmp_path: Path) -> None:
    """The wheel installed (not editable) into a fresh venv: `deal-client score` works with no
    checkout, its default model inside the package. The venv borrows this one's third-party
    packages through a .pth line (no package index needed); dealseg comes from the wheel only.
    `make install-check` does the same with `pip install .` and its dependencies."""
    source = _copy_source(Path(__file__).resolve().parents[1], tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    built = subprocess.run(build, check=True, capture_output=True, text=True)
    said = built.stdout + built.stderr  # setuptools once warned of our license table and of
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "absent from"):
        assert warning not in said, said  # data folders missing from `packages`
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = wheels.glob("dealseg-*.whl")
    install = [python, "-m", "pip", "-q", "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)

    pool = write_streets_pool(tmp_path / "pool", 3)  # noise would be off-domain, never picked
    score = [venv / "bin" / "deal-client", "score", pool, "-k", "2", "--out", tmp_path / "out"]
    done = subprocess.run(score + ["--no-progress"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    shipped = Path(purelib) / "dealseg" / "model_repository" / "deal" / "1" / "model.onnx"
    assert f"on {shipped}, out" in done.stderr
    assert len((tmp_path / "out" / "selection.txt").read_text().splitlines()) == 2
