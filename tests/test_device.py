"""`--device`: CPU runs unchanged, clear failures without CUDA, AMP paths covered on the CPU.

There is no GPU on the machines these tests were written on: the CUDA paths are checked through
their selection logic and, for autocast and the grad scaler, by running them on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dealseg.training.cli import main as train_cli
from dealseg.training.config import resolve_config
from dealseg.training.device import (
    DeviceError,
    Runtime,
    choose_precision,
    loader_workers,
    resolve_device,
)
from dealseg.training.streets.dataset import write_streets
from dealseg.training.train import Trainer

TINY = {
    "decoder_width": 16,
    "attention_size": [8, 10],
    "input_size": [64, 80],
    "epochs": 2,
    "batch_size": 4,
    "crop": [64, 64],
    "val_every": 2,
    "threads": 1,
    "refit_difficulty": False,
    "difficulty_inputs": "Q+U",  # the cpu preset's head at that commit, pinned here
    "difficulty_hidden": 16,
    "difficulty_context": 0,
}
# The per-epoch mean losses of this seeded run, recorded with the code before `--device` existed
# (commit 794d84e, torch 2.13 CPU): `--device auto` on a machine without CUDA must repeat them.
# To the CPU's rounding: the kernels torch picks differ by instruction set (AVX2, AVX-512), which
# moves the second epoch by ~1.5e-4 relative; a change to the recipe (data order, loss, schedule)
# moves it by 1e-2 or more.
CPU_REL = 1e-3
BEFORE = [
    {"loss": 3.1264679431915283, "seg": 2.411795139312744, "dif": 0.7146727740764618},
    {"loss": 2.854335308074951, "seg": 2.162779450416565, "dif": 0.6915557980537415},
]
BEFORE_VAL_MIOU = 0.08266417927113841
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("device") / "streets"
    write_streets(data, n=12, size=(64, 80), seed=3, workers=1)
    return data


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    settings = [f"{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items()]
    return ["fit", "--data", str(data), "--out", str(out), *extra, *settings]


@pytest.mark.skipif(not NO_CUDA, reason="the recorded curve is the CPU's")
def test_device_auto_without_cuda_trains_exactly_as_before(streets: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, fit_args(streets, tmp_path / "run", "--device", "auto"))
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for got, want in zip(history, BEFORE, strict=True):
        assert {k: got[k] for k in want} == pytest.approx(want, rel=CPU_REL)
        assert got["img_per_s"] > 0  # the throughput is logged with every epoch
    assert json.loads(result.stdout.splitlines()[-1])["val_miou"] == pytest.approx(
        BEFORE_VAL_MIOU,
        rel=10 * CPU_REL,  # a few argmax flips on the val frames' pixels
    )
    assert "on cpu (CPU), fp32, 0 loader workers" in result.output


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_cuda_is_one_clear_line(tmp_path: Path, device: str) -> None:
    for command in ("fit", "al"):
        args = [command, "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", device]
        result = CliRunner().invoke(train_cli, args)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        assert result.output.startswith(f"Error: --device {device}: no CUDA device")


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_precision_and_loader_choices() -> None:
    assert choose_precision("cpu", bf16_supported=True) == "fp32"
    assert choose_precision("cuda", bf16_supported=True) == "bf16"
    assert choose_precision("cuda", bf16_supported=False) == "fp16"
    assert choose_precision("cuda", bf16_supported=True, amp=False) == "fp32"
    assert loader_workers("cpu", 64) == 0
    assert loader_workers("cuda", 2) == 1 and loader_workers("cuda", 64) == 8
    cpu = Runtime.for_device("cpu")
    assert (cpu.precision, cpu.workers, cpu.loader_options()) == (
        "fp32",
        0,
        {"num_workers": 0, "pin_memory": False},
    )
    assert not cpu.grad_scaler().is_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run(streets: Path, tmp_path: Path, precision: str) -> None:
    """The autocast forward, the float32 loss and (fp16) the grad scaler, run on the CPU."""
    preset = resolve_config("cpu", None, TINY)
    trainer = Trainer(streets, tmp_path, preset, None, True, Runtime(precision=precision))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    images, labels = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4)))
    head = trainer.model.segmentation_head.weight.detach().clone()
    parts = trainer.step(images, labels)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert not torch.equal(head, trainer.model.segmentation_head.weight)
    assert trainer.model.segmentation_head.weight.dtype == torch.float32


def test_a_run_resumes_under_another_runtime(streets: Path, tmp_path: Path) -> None:
    """The device and precision are not the run's configuration: last.pt resumes under any."""
    one_epoch = {**TINY, "epochs": 1, "val_every": 1}
    preset = resolve_config("cpu", None, one_epoch)
    Trainer(streets, tmp_path, preset, None, True).run()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    again = Trainer(streets, tmp_path, preset, None, True, Runtime(precision="bf16"))
    again.resume()
    assert again.start_epoch == 1 and again.history == saved["history"]
