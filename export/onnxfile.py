"""Writing a finished ONNX model: contract metadata, checker, atomic save (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dealseg.core.files import atomic_output


def save_model(model: Any, metadata: Mapping[str, str], out: Path, full_check: bool) -> None:
    """Set `metadata` as the model's only metadata (producer `dealseg`), run onnx.checker, and
    write `out` so that readers see the old file or the whole new one."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "dealseg"
    onnx.checker.check_model(model, full_check=full_check)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
