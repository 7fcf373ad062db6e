"""A dataset's classes as data: names, colours, each class's label value and the ignored values.

They come from the dataset's class file (`classes.json`, or `classes.yaml` / `classes.yml` when
PyYAML is installed), else, for CamVid and Cityscapes, from their built-in tables:

    {
      "classes": [
        {"name": "road", "value": 1, "color": [128, 64, 128]},
        {"name": "lane marking", "value": 2, "color": [255, 255, 255]}
      ],
      "ignore": [0, 255]
    }

`value` is the class's pixel value in the mask files (default: its position in the list),
`color` its RGB colour in maps (default: a generated one), `ignore` the mask values no loss or
metric counts (default 255). Classes are trained as ids 0..C-1 in the file's order, 2 to 255 of
them. A class may also be a bare name. Torch-free: training reads it, and `deal-client eval` checks
a label set's class file against the model's classes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = 255  # the train id of ignored pixels
MIN_CLASSES, MAX_CLASSES = 2, 255  # train ids 0..254; 255 is IGNORE_INDEX
CLASS_FILES = ("classes.json", "classes.yaml", "classes.yml")
INVALID = -1  # marks label values that are neither a class nor ignored in a lookup table

Colour = tuple[int, int, int]


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""


@dataclass(frozen=True)
class ClassTable:
    """The classes of a dataset: train id i is `names[i]`, drawn `palette[i]`, stored in the
    mask files as `values[i]`; mask values in `ignore` are skipped by the loss and metrics."""

    names: tuple[str, ...]
    palette: tuple[Colour, ...]
    values: tuple[int, ...]
    ignore: tuple[int, ...] = (IGNORE_INDEX,)
    source: str = "built-in"  # where the table came from, for error messages

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def lut(self) -> np.ndarray:
        """int16 [256]: mask value -> train id, IGNORE_INDEX when ignored, INVALID otherwise."""
        lut = np.full(256, INVALID, dtype=np.int16)
        lut[list(self.ignore)] = IGNORE_INDEX
        lut[list(self.values)] = np.arange(self.num_classes)
        return lut

    def describe_values(self) -> str:
        """What a mask may hold, for error messages: the class values and the ignored ones."""
        values, ignored = _ranges(self.values), _ranges(self.ignore)
        return f"class values {values}, ignored {ignored} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        """The class-file form of the table."""
        classes = [
            {"name": n, "value": v, "color": list(c)}
            for n, v, c in zip(self.names, self.values, self.palette, strict=True)
        ]
        return {"classes": classes, "ignore": list(self.ignore)}


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs) or "none"


def generated_colour(i: int) -> Colour:
    """A colour for class i when the class file gives none: distinct for neighbouring ids."""
    return ((67 * i + 64) % 256, (151 * i + 32) % 256, (199 * i + 96) % 256)


# -------------------------------------------------------------------------- the share columns
def class_column(name: str) -> str:
    """The readable column (CSV, data frame, Parquet) or field (Label Studio, FiftyOne) of a
    class's share: `class_<name>`, non-word characters as `_`."""
    return "class_" + re.sub(r"\W+", "_", name)


def shared_columns(names: Sequence[str]) -> dict[str, list[str]]:
    """The readable columns that two or more of `names` map to, with those names."""
    by_column: dict[str, list[str]] = {}
    for name in names:
        by_column.setdefault(class_column(name), []).append(name)
    return {c: n for c, n in by_column.items() if len(n) > 1}


def class_columns(names: Sequence[str]) -> dict[str, str]:
    """Class name -> its share's column, unique over `names` (class order): `class_column`,
    and for a later class whose readable column is taken (a model trained before such class
    files were refused) that column + `_<class id>`. With the class list, which every out dir
    and model records, each column maps back to its class."""
    columns: dict[str, str] = {}
    taken: set[str] = set()
    for i, name in enumerate(names):
        column = class_column(name)
        while column in taken:
            column = f"{column}_{i}"
        columns[name] = column
        taken.add(column)
    return columns


# ------------------------------------------------------------------------------ the class file
def find_class_file(root: Path) -> Path | None:
    """The class file in a dataset root, or None."""
    found = [Path(root) / name for name in CLASS_FILES if (Path(root) / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{root} has {len(found)} class files ({found[0].name}, ...): keep one")
    return found[0] if found else None


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DataError(f"class file {path} is not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise DataError(
            f"class file {path} is YAML but PyYAML is not installed: `pip install pyyaml`, or "
            "write it as classes.json"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"class file {path} is not valid YAML: {exc}") from None


def read_class_file(path: Path) -> ClassTable:
    """Parse and check a class file; every problem is a DataError naming the file."""
    path = Path(path)
    doc = _load(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise DataError(f"class file {path}: expected an object with a 'classes' list")
    try:
        return _table(doc, str(path))
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"class file {path}: {exc}") from None


def _entry(item: Any, i: int, palette: Sequence[Any]) -> tuple[str, int, Colour]:
    """(name, value, colour) of the i-th entry of 'classes': an object or a bare name."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or set(item) - {"name", "value", "color"}:
        raise ValueError(f"class {i}: expected {{name, value, color}} or a name, got {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"class {i}: 'name' must be a non-empty string")
    colour = item.get("color", palette[i] if i < len(palette) else generated_colour(i))
    return name, _byte(item.get("value", i), f"class {name!r} value"), _colour(colour, name)


def _byte(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"{what} must be an integer in 0..255, got {value!r}")
    return value


def _colour(value: Any, name: str) -> Colour:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"class {name!r} color must be [r, g, b], got {value!r}")
    r, g, b = (_byte(v, f"class {name!r} color") for v in value)
    return r, g, b


def _table(doc: dict[str, Any], source: str) -> ClassTable:
    # "palette" and "void" are the keys of the classes.json that older `synth` versions wrote.
    entries = [_entry(item, i, doc.get("palette", [])) for i, item in enumerate(doc["classes"])]
    ignore = doc.get("ignore", doc.get("void", IGNORE_INDEX))
    ignore = tuple(_byte(v, "ignore") for v in (ignore if isinstance(ignore, list) else [ignore]))
    table = ClassTable(
        names=tuple(n for n, _, _ in entries),
        palette=tuple(c for _, _, c in entries),
        values=tuple(v for _, v, _ in entries),
        ignore=tuple(dict.fromkeys(ignore)),
        source=source,
    )
    check_table(table)
    return table


def check_table(table: ClassTable) -> None:
    """2..255 classes, unique names and values, no value both a class and ignored."""
    if not MIN_CLASSES <= table.num_classes <= MAX_CLASSES:
        raise ValueError(
            f"{table.num_classes} classes; dealseg trains {MIN_CLASSES} to {MAX_CLASSES}"
        )
    for what, items in (("name", table.names), ("value", table.values)):
        twice = sorted({x for x in items if items.count(x) > 1}, key=str)
        if twice:
            raise ValueError(f"class {what}s must be unique; repeated: {twice}")
    both = sorted(set(table.values) & set(table.ignore))
    if both:
        raise ValueError(f"values {both} are both a class value and ignored")
    shared = shared_columns(table.names)
    if shared:
        column, names = next(iter(shared.items()))
        raise ValueError(
            f"classes {' and '.join(map(repr, names))} would share the column {column} in every "
            "table of scores (a class's column is class_<name>, non-word characters as _); "
            "rename one"
        )
