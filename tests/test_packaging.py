"""Packaging: one `dealseg` namespace, torch-free serving and client, the documented scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
        "import dealseg.client.cli, dealseg.client.run, dealseg.client.engines\n"
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
