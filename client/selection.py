"""The selection step of `deal-client score / select / merge` and of `dealseg.select`: a
scored table and the settings -> the ranking pool (`pool_of`) -> `core.ranking.choose` (`pick`)
-> selection.txt / selection.json (`run_selection`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.ranking import Choice, Options, Pool, choose, groups_of
from dealseg.core.strategies import DESCRIPTORS

from .objects import Location, location
from .outdir import SELECTION_JSON, load_table, read_selection, write_selection
from .records import StoreError, Table
from .scoring import list_paths
from .settings import SelectSettings


def load_labeled(
    source: Path, table: Table, embeddings: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """`--labeled FILE` -> (centres [L, D] or None, exclude [N] bool).

    FILE is a .npy of embeddings [L, D]; a scores.jsonl (or out dir) of a run on the labelled
    images (their embeddings are the centres and their paths are never picked); or a text file of
    paths in the pool (never picked; their embeddings, rows of `embeddings` = the table's, are the
    centres). Without `embeddings` no centres are read.
    """
    source = Path(source)
    d = table.embedding_dim
    exclude = np.zeros(len(table), dtype=bool)
    if source.suffix == ".npy":
        centres = np.load(source, allow_pickle=False)
        if centres.ndim != 2 or centres.shape[1] != d:
            raise ValueError(f"{source}: expected embeddings [L, {d}], got {list(centres.shape)}")
        return centres.astype(np.float32), exclude
    if source.is_dir() or source.suffix in (".jsonl", ".parquet"):
        try:
            other = load_table(source)
        except StoreError as exc:
            raise ValueError(
                f"--labeled {source}: {exc}; give the out dir (or its scores file) of a "
                "`deal-client score` run on the labelled images, a text file of their paths, or a "
                ".npy of their embeddings [L, D]"
            ) from None
        if other.meta["model"] != table.meta["model"]:
            raise ValueError(f"{source} was scored by {other.meta['model']}, not this model")
        exclude = np.isin(np.asarray(table.paths, dtype=object), other.paths)
        return (other.embeddings() if embeddings is not None else None), exclude
    labeled = set(list_paths(str(source)))  # a list file, read exactly as a POOL
    exclude = np.fromiter((p in labeled for p in table.paths), dtype=bool, count=len(table))
    missing = len(labeled) - int(exclude.sum())
    if labeled and missing == len(labeled):
        raise ValueError(
            f"none of the {len(labeled)} labelled paths in {source} is in the scores (paths are "
            "compared absolute, relative ones to the list's folder)"
        )
    if missing:
        print(
            f"warning: {missing} labelled paths in {source} are not in the scores, ignored",
            file=sys.stderr,
        )
    centres = np.asarray(embeddings[exclude]) if embeddings is not None else None
    return centres, exclude


class SelectionExists(StoreError):
    """The folder holds the selection of another run, which `--force` would replace."""


def pool_of(table: Table, how: SelectSettings) -> Pool:
    """The table as a ranking pool, with what `how` needs: embeddings (core-set, --diverse,
    --labeled centres), class fractions (--balance) and groups (--per-group)."""
    needs_embeddings = "embeddings" in DESCRIPTORS[how.strategy].needs or how.diverse is not None
    groups = None
    if how.per_group is not None:
        groups, unmatched = groups_of(table.paths, how.group_by)
        if unmatched:
            print(
                f"warning: --group-by {how.group_by!r} matches no part of {unmatched} of "
                f"{len(table)} paths; each of those is a group of its own",
                file=sys.stderr,
            )
    return Pool(
        table.paths,
        table.scores,
        table.embeddings() if needs_embeddings else None,
        table.fractions if how.balance is not None else None,
        groups,
    )


class ClassWeightError(ValueError):
    """A class weight (--class-weight) names a class the model does not have."""


def balance_weights(names: Sequence[str], weights: dict[str, float]) -> np.ndarray:
    """[C] target weights: 1 for every class, or as `weights` (class name -> weight) says;
    ClassWeightError for a weight of a class not in `names`."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ClassWeightError(
            f"no class {', '.join(map(repr, unknown))}; classes: {', '.join(names)}"
        )
    return np.array([float(weights.get(name, 1.0)) for name in names])


def pick(table: Table, how: SelectSettings) -> tuple[Choice, Options]:
    """Select from a loaded table as `how` says: the one selection step of the CLI and the API.

    Raises ValueError for settings the table cannot serve (nothing scored, an unknown class)."""
    pool = pool_of(table, how)
    centres, exclude = (None, None)
    if how.labeled is not None:
        need_centres = "embeddings" in DESCRIPTORS[how.strategy].needs
        centres, exclude = load_labeled(
            how.labeled, table, pool.embeddings if need_centres else None
        )
    weights = None if how.balance is None else balance_weights(table.class_names, how.balance)
    options = Options(
        seed=how.seed,
        labeled=centres,
        diverse=how.diverse,
        exclude=exclude,
        per_group=how.per_group,
        balance=weights,
        novel_share=how.novel_share,
        novel_threshold=how.novel_threshold,
    )
    return choose(pool, how.strategy, how.k, options), options


def check_replace(out: Location, scores_file: Location, how: SelectSettings) -> None:
    """Refuse to replace a selection in `out` made with other settings or of other scores than
    `scores_file` (`score` and `select --out` alike, unless --force)."""
    old = read_selection(out)
    if old is None:
        return
    mine = json.loads(json.dumps({**how.describe(), "scores": str(scores_file)}))
    recorded = old.get("settings") or {}
    if {key: recorded.get(key) for key in mine} != mine:  # results recorded beside (k) aside
        raise SelectionExists(
            f"{location(out) / SELECTION_JSON} holds another selection ({old.get('strategy')}, top "
            f"{old.get('k')}, of {old.get('scores', 'other scores')}); write this one elsewhere "
            "with --out DIR, or replace it with --force"
        )


def run_selection(table: Table, out: Location, how: SelectSettings) -> dict[str, Any]:
    """Select from a loaded table and write selection.txt / selection.json into `out` (see
    `check_replace` to keep another run's selection); a region budget buys regions
    (`client.regions`)."""
    if how.regions:
        from .regions import run_region_selection

        return run_region_selection(table, out, how)
    chosen, options = pick(table, how)
    return write_selection(out, table, chosen, how.describe(), chosen.shortfall(how.k, options))
