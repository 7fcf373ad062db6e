"""What each selection strategy is, described once: every layer reads it from here.

A strategy's descriptor says its name, what its score means (one line under a selection), its
label and colour in tables and plots, its unit (whole frames or regions inside frames), what it
needs (`scores`: the per-image scores; `embeddings`: the embedding rows; `maps`: the per-pixel
maps; `classes`: the class the model predicts most over each region; `model`: the
active-learning stage's model), for a region strategy the map whose
region means it reads (`region_map`: "ds" the difficulty map, "entropy" the softmax-entropy
map; the client's needs the model to serve it) and where it runs (`client`: `deal-client`
and the Python API rank with it; the active-learning loop runs every strategy). The ranking
itself is a function registered under the same name: frame strategies in
`core.ranking.STRATEGIES` (the client's) and `training.acquisition.STRATEGIES` (the loop's,
scoring with the stage's model), region strategies in `core.regions.REGION_STRATEGIES`. Adding a
strategy is one entry here plus its function; tests check that the registries and these
descriptors name the same strategies.

Standard library only, so `deal-client --help` lists the names without loading numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import REGION_MAPS
from .registry import Registry

NEEDS = ("scores", "embeddings", "maps", "classes", "model")
# The strategy a selection uses unless told: chosen by measurement on labelled tuning frames
# (README, "Which strategy").
DEFAULT_STRATEGY = "entropy"
# The region strategy a region budget uses unless told (README, "Label regions, not frames").
DEFAULT_REGION_STRATEGY = "region-ds-sample"
# Novelty above this is off-domain: further from the training frames than 99% of held-out
# in-domain ones; off-domain frames are not picked unless told (README, "Off-domain frames":
# both chosen by bench/novelty.py on its tuning kinds).
NOVEL_THRESHOLD = 0.99
UNITS = ("frame", "region")


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    meaning: str  # what the ranked score says, one line
    label: str  # the name in tables and plots
    color: str  # matplotlib colour of its curve
    unit: str = "frame"  # "frame": buys whole frames; "region": regions inside frames
    needs: frozenset[str] = frozenset({"scores", "model"})
    client: bool = True  # offered by deal-client and the Python API
    region_map: str | None = None  # a region strategy's map: "ds" | "entropy"

    def __post_init__(self) -> None:
        if self.unit not in UNITS or not self.needs <= set(NEEDS):
            raise ValueError(f"strategy {self.name}: unit {self.unit!r}, needs {set(self.needs)}")
        if (self.region_map is not None) != ("maps" in self.needs) or self.region_map not in (
            None,
            *REGION_MAPS,
        ):
            raise ValueError(f"strategy {self.name}: region_map {self.region_map!r}")


def _info(name: str, meaning: str, label: str, color: str, **kw: object) -> StrategyInfo:
    return StrategyInfo(name, meaning, label, color, **kw)  # type: ignore[arg-type]


_ENTRIES = [
    _info(
        "ds",
        "ds = mean of the difficulty map: for dealseg's own models the expected share of the "
        "frame's pixels the model gets wrong",
        "DEAL (DS)",
        "tab:red",
    ),
    _info(
        "de",
        "de = entropy of the difficulty map's histogram: how mixed easy and hard regions are",
        "DEAL (DE)",
        "tab:orange",
    ),
    _info(
        "entropy",
        "entropy = mean per-pixel softmax entropy: how unsure the segmenter is",
        "Entropy",
        "tab:blue",
    ),
    _info(
        "random",
        "random = a seeded hash of the path: a reproducible random sample",
        "Random",
        "tab:gray",
        needs=frozenset(),
    ),
    _info(
        "coreset",
        "coreset = distance to the nearest picked or labelled frame: frames unlike those",
        "Core-set",
        "tab:purple",
        needs=frozenset({"embeddings", "model"}),
    ),
    *(
        _info(
            f"{score}+coreset",
            f"{score} of the frame, picked among the {what} by {score} so that no two are alike",
            f"{label} + core-set",
            color,
            needs=frozenset({"scores", "embeddings", "model"}),
        )
        for score, what, label, color in (
            ("ds", "hardest", "DEAL (DS)", "tab:brown"),
            ("de", "highest", "DEAL (DE)", "tab:pink"),
            ("entropy", "most uncertain", "Entropy", "tab:cyan"),
        )
    ),
    _info(
        "qbc",
        "qbc = vote entropy of MC-dropout passes: how much sampled models disagree",
        "QBC",
        "tab:green",
        client=False,
    ),
    _info(
        "region-random",
        "region-random = a seeded draw per region: a reproducible random sample of regions",
        "Random regions",
        "dimgray",
        unit="region",
        needs=frozenset(),
    ),
    _info(
        "region-ds",
        "region-ds = the region's mean difficulty: its expected share of wrong pixels",
        "Regions, top DS",
        "darkred",
        unit="region",
        needs=frozenset({"maps", "model"}),
        region_map="ds",
    ),
    _info(
        "region-entropy",
        "region-entropy = the region's mean softmax entropy",
        "Regions, top entropy",
        "navy",
        unit="region",
        needs=frozenset({"maps", "model"}),
        region_map="entropy",
    ),
    _info(
        "region-ds-sample",
        "region-ds-sample = regions drawn with probability proportional to mean difficulty",
        "Regions sampled by DS",
        "crimson",
        unit="region",
        needs=frozenset({"maps", "model"}),
        region_map="ds",
    ),
    _info(
        "region-entropy-sample",
        "region-entropy-sample = regions drawn with probability proportional to mean entropy",
        "Regions sampled by entropy",
        "royalblue",
        unit="region",
        needs=frozenset({"maps", "model"}),
        region_map="entropy",
    ),
    _info(
        "region-ds-balanced",
        "region-ds-balanced = regions drawn with probability proportional to mean difficulty "
        "over the share of the pool's regions predicted as the region's class",
        "Regions sampled by DS, class-balanced",
        "darkorange",
        unit="region",
        needs=frozenset({"maps", "classes", "model"}),
        region_map="ds",
    ),
]

DESCRIPTORS: Registry[StrategyInfo] = Registry("strategy", **{s.name: s for s in _ENTRIES})


def names(unit: str | None = None, client: bool | None = None) -> tuple[str, ...]:
    """The strategies' names in declaration order, of one unit and/or offered by the client."""
    return tuple(
        s.name
        for s in _ENTRIES
        if (unit is None or s.unit == unit) and (client is None or s.client == client)
    )


def label(name: str) -> str:
    """The strategy's name in tables and plots (an unknown name shows itself)."""
    return DESCRIPTORS[name].label if name in DESCRIPTORS else name


def color(name: str) -> str | None:
    return DESCRIPTORS[name].color if name in DESCRIPTORS else None
