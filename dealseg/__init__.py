"""dealseg: difficulty-aware active learning for semantic segmentation.

`dealseg.score(pool)` scores a pool of images into a table and `dealseg.select(table, "de", k)`
picks the ones most worth labelling (`dealseg.client.api`). Importing `dealseg` loads neither
numpy nor an engine: they load on the first use of these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["score", "select", "shipped_repository"]


def __getattr__(name: str) -> Any:
    if name in ("score", "select"):
        from dealseg.client import api

        return getattr(api, name)
    raise AttributeError(f"module 'dealseg' has no attribute {name!r}")


def shipped_repository() -> Path | None:
    """The Triton model repository shipped with dealseg (the model `deal`, version 1): inside the
    installed package (`pip install`, the wheel: site-packages/dealseg/model_repository/), else
    the `model_repository/` of a source checkout (an editable install); None if neither has it."""
    package = Path(__file__).resolve().parent
    for repo in (package / "model_repository", package.parent / "model_repository"):
        if (repo / "deal" / "config.pbtxt").is_file():
            return repo
    return None
