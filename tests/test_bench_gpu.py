"""bench/gpu.py, the one-command GPU check: on a host without CUDA it says so in one line and
exits at once, writing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA host runs the whole benchmark")
def test_on_a_cpu_host_the_gpu_check_says_so_in_one_line() -> None:
    result = REPO / "bench" / "results" / "gpu.md"
    before = result.stat().st_mtime_ns if result.exists() else None
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bench/gpu.py: no CUDA device on this host; nothing measured (run it on a GPU host)"
    ]
    assert (result.stat().st_mtime_ns if result.exists() else None) == before
