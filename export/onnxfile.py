"""Writing a finished ONNX model: contract metadata, checker, atomic save (torch-free)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dealseg.core.contract import ModelSpec
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


@contextlib.contextmanager
def stamped(
    model_path: Path, spec: ModelSpec, name: str | None, version: int | None
) -> Iterator[Path]:
    """`model_path`, or a temporary copy of it whose metadata names it `name` version `version`
    when those differ from `spec` (its metadata): what `repository --name/--version` serves."""
    wanted = replace(
        spec,
        model_name=name or spec.model_name,
        model_version=spec.model_version if version is None else str(version),
    )
    if wanted == spec:
        yield model_path
        return
    import onnx

    with tempfile.TemporaryDirectory(prefix="dealseg-stamp-") as tmp:
        copy = Path(tmp) / "model.onnx"
        save_model(onnx.load(str(model_path)), wanted.to_metadata(), copy, full_check=False)
        yield copy
