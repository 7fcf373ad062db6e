"""dealseg: difficulty-aware active learning for semantic segmentation."""

from pathlib import Path

__version__ = "0.1.0"


def shipped_repository() -> Path | None:
    """The Triton model repository shipped with dealseg (the model `deal`, version 1): inside the
    installed package (`pip install`, the wheel: site-packages/dealseg/model_repository/), else
    the `model_repository/` of a source checkout (an editable install); None if neither has it."""
    package = Path(__file__).resolve().parent
    for repo in (package / "model_repository", package.parent / "model_repository"):
        if (repo / "deal" / "config.pbtxt").is_file():
            return repo
    return None
