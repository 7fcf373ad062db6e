"""dealseg: difficulty-aware active learning for semantic segmentation.

`dealseg.score(pool)` scores a pool of images into a table and `dealseg.select(table, "de", k)`
picks the ones most worth labelling (`dealseg.client.api`). Importing `dealseg` loads neither
numpy nor an engine: they load on the first use of these names.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["score", "select"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dealseg.client import api

        return getattr(api, name)
    raise AttributeError(f"module 'dealseg' has no attribute {name!r}")
