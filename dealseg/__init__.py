"""dealseg: difficulty-aware active learning for semantic segmentation.

`dealseg.score(pool)` scores a pool of images into a table and `dealseg.select(table, "de", k)`
picks the ones most worth labelling; `dealseg.score(pool, regions="cell:12")` keeps each frame's
cells and `dealseg.select_regions(table, "2%")` buys regions inside frames
(`dealseg.client.api`). Importing `dealseg` loads neither numpy nor an engine: they load on the
first use of these names.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["score", "select", "select_regions", "shipped_repository"]


def __getattr__(name: str) -> Any:
    if name in ("score", "select", "select_regions"):
        from dealseg.client import api

        return getattr(api, name)
    if name == "shipped_repository":
        from dealseg.core.modelfile import shipped_repository

        return shipped_repository
    raise AttributeError(f"module 'dealseg' has no attribute {name!r}")
