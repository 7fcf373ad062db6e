"""Per-image tags of a street set: which drive and condition each frame comes from.

`deal-train synth` writes `tags.jsonl` in the data set's root, one JSON object per image in
split, then file order:

    {"image": "train/s0003_f01.png", "split": "train", "stem": "s0003_f01", "sequence": 3,
     "frame": 1, "condition": "night", "rare": true}

`read_tags` reads it back without torch, so evaluation and the active-learning report can count
how many rare-condition frames a selection caught.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

TAGS_FILE = "tags.jsonl"


@dataclass(frozen=True)
class FrameTag:
    """One image of a street set."""

    image: str  # path relative to the data set's root, e.g. "train/s0003_f01.png"
    split: str  # train | val | test
    stem: str  # file name without suffix; the label is {split}annot/{stem}.png
    sequence: int  # the drive it belongs to; ids are unique across splits
    frame: int  # 0-based position in its drive
    condition: str  # "clear" or a rare condition (synth.CONDITIONS)
    rare: bool  # condition != "clear"


def write_tags(root: Path, tags: Iterable[FrameTag]) -> None:
    lines = (json.dumps(asdict(tag)) + "\n" for tag in tags)
    (Path(root) / TAGS_FILE).write_text("".join(lines))


def read_tags(root: Path) -> dict[str, FrameTag]:
    """Tags of the street set at `root`, by image path relative to it ("train/s0003_f01.png").

    Raises FileNotFoundError when the set has no tags file, ValueError naming the line of a
    malformed one.
    """
    path = Path(root) / TAGS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: tags come with sets written by deal-train synth"
        )
    tags = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            tag = FrameTag(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}:{line_no}: not a frame tag ({exc})") from None
        tags[tag.image] = tag
    return tags
