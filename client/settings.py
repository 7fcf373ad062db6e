"""The settings of a run, as frozen dataclasses built once and validated on construction.

`deal-client` builds them from its parsed options, the Python API (`dealseg.score`,
`dealseg.select`) from its keywords (`from_keywords`: an unknown keyword is a TypeError naming
the valid ones); either way the same checks run here, and a bad value is a `SettingsError`
naming the setting. Every later step takes these objects, never a dict of options.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dealseg.core.contract import MODEL_NAME
from dealseg.core.decode import DEFAULT_MAX_PIXELS, RESIZE_MODES
from dealseg.core.ranking import NOVEL_THRESHOLD, STRATEGIES
from dealseg.core.regions import REGION_STRATEGIES, parse_budget, parse_regions
from dealseg.core.strategies import DEFAULT_STRATEGY, names

SCORE_FORMATS = ("jsonl", "parquet")  # scores.jsonl + embeddings.f32 | scores.parquet/
PROTOCOLS = ("grpc", "http")
S = TypeVar("S")


class SettingsError(ValueError):
    """A setting out of its range or at odds with another; `name` is the setting's field."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _within(
    name: str, value: float, low: float, high: float = math.inf, whole: bool = False
) -> None:
    """`value` is a number (a whole one when `whole`) in low..high."""
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value:
        kind = "a whole number" if whole else "a number"
        raise SettingsError(name, f"{name} must be {kind}, got {value!r}")
    if not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in {low}..{high}"
        raise SettingsError(name, f"{name} must be {bound}, got {value}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(name, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def from_keywords(kinds: tuple[type, ...], keywords: Mapping[str, Any], caller: str) -> list:
    """One instance of each settings class in `kinds`, each from the keywords that are its
    fields; a keyword none of them has is a TypeError that lists the valid ones."""
    valid = {f.name: kind for kind in kinds for f in dataclasses.fields(kind)}
    unknown = sorted(set(keywords) - set(valid))
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(valid))}"
        )
    return [kind(**{k: v for k, v in keywords.items() if valid[k] is kind}) for kind in kinds]


@dataclass(frozen=True)
class ScoreSettings:
    """How a pool streams through the engine (--batch-size, --concurrency, ... ; the API's
    keywords of the same names)."""

    batch_size: int = 8  # images per inference request
    concurrency: int = 2  # inference requests in flight
    workers: int = 4  # decode threads
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard, width x height
    progress: bool = True  # tqdm bar on stderr
    resize: str = "stretch"  # how a picture becomes the model's frame: stretch|letterbox|crop
    format: str = "jsonl"  # the out dir's scores: jsonl (streamed line by line) | parquet
    regions: str | None = None  # cell:N: also keep each frame's cells and their mean difficulty
    # Drive logs in the pool (client/logs.py): which frames are listed, not how they score
    topic: str | None = None  # an MCAP file's image topic
    image_column: str | None = None  # a Parquet table's column of encoded images
    every: int | None = None  # every N-th frame of a log (by frame number)
    fps: float | None = None  # at most F frames a second of a log (by timestamp)

    def __post_init__(self) -> None:
        if self.every is not None:
            _within("every", self.every, 1, whole=True)
        if self.fps is not None:
            _within("fps", self.fps, 1e-6)
            if self.every is not None:
                raise SettingsError("fps", "give --every or --fps, not both")
        if self.regions is not None:
            try:
                spec = parse_regions(self.regions)
            except ValueError as exc:
                raise SettingsError("regions", str(exc)) from None
            if spec.kind != "cell":
                raise SettingsError(
                    "regions", f"the client cuts frames into cells (cell:N), not {spec}"
                )
        _within("batch_size", self.batch_size, 1, 1024, whole=True)
        _within("concurrency", self.concurrency, 1, 256, whole=True)
        _within("workers", self.workers, 1, 256, whole=True)
        _within("max_pixels", self.max_pixels, 1, whole=True)
        _one_of("resize", self.resize, RESIZE_MODES)
        _one_of("format", self.format, SCORE_FORMATS)

    @property
    def scoring(self) -> dict[str, Any]:
        """The settings that change a score (recorded in meta.json; a resume must match)."""
        return {"resize": self.resize, "regions": self.regions}


@dataclass(frozen=True)
class SelectSettings:
    """What a selection picks (--strategy, --top-k, --seed, ... ; `dealseg.select`'s
    arguments)."""

    strategy: str = DEFAULT_STRATEGY
    k: int = 100
    seed: int = 0
    diverse: float | None = None  # skip a pick's near-duplicates above this cosine
    labeled: Path | None = None  # already labelled: never picked, the core-set's first centres
    balance: dict[str, float] | None = None  # class name -> weight; {}: uniform; None: off
    per_group: int | None = None  # at most this many picks per group
    group_by: str | None = None  # regex whose match (first group) names a path's group
    budget: str | None = None  # regions: a share of the pool's pixels ("5%") or a region count
    temperature: float = 1.0  # region sampling: probability proportional to score ** (1 / T)
    max_per_frame: int | None = None  # regions: at most this many of one frame
    frame_cost: int = 0  # regions: pixels of labelling charged for opening a frame
    # off-domain picks (novelty above novel_threshold): at most this share of k; 0 = none (the
    # default, README Off-domain frames); None = no rule. A region budget opens none of them.
    novel_share: float | None = 0.0
    novel_threshold: float = NOVEL_THRESHOLD

    def __post_init__(self) -> None:
        _within("novel_threshold", self.novel_threshold, 0.0, 1.0)
        if self.novel_share is not None:
            _within("novel_share", self.novel_share, 0.0, 1.0)
        if self.budget is not None:
            self._check_regions()
            return
        if self.strategy in REGION_STRATEGIES:
            raise SettingsError(
                "strategy", f"{self.strategy} picks regions: give a budget (--regions 5%)"
            )
        _one_of("strategy", self.strategy, tuple(sorted(STRATEGIES)))
        _within("k", self.k, 1, whole=True)
        _within("seed", self.seed, -math.inf, whole=True)
        if self.diverse is not None:
            _within("diverse", self.diverse, 0.0, 1.0)
        for name, weight in (self.balance or {}).items():
            number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not (number and math.isfinite(weight) and weight >= 0):
                raise SettingsError("balance", f"the weight of {name!r} must be >= 0, got {weight}")
        if self.balance and not math.isfinite(sum(self.balance.values())):
            weights = " ".join(f"{name}={weight}" for name, weight in self.balance.items())
            raise SettingsError(
                "balance",
                f"the weights sum to more than a float holds ({weights}): scale them down",
            )
        if self.per_group is not None:
            _within("per_group", self.per_group, 1, whole=True)
        if self.group_by is not None:
            if self.per_group is None:
                raise SettingsError(
                    "group_by", "group_by names the groups of per_group N: give both"
                )
            if not isinstance(self.group_by, str):
                raise SettingsError(
                    "group_by", f"group_by must be a regular expression, got {self.group_by!r}"
                )
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise SettingsError(
                    "group_by", f"{self.group_by!r} is not a regular expression: {exc}"
                ) from None

    def _check_regions(self) -> None:
        _one_of("strategy", self.strategy, names(unit="region", client=True))
        try:
            parse_budget(self.budget, 1)
        except ValueError as exc:
            raise SettingsError("budget", str(exc)) from None
        _within("temperature", self.temperature, 1e-6)
        if self.max_per_frame is not None:
            _within("max_per_frame", self.max_per_frame, 1, whole=True)
        _within("frame_cost", self.frame_cost, 0, whole=True)
        for name in ("diverse", "labeled", "balance", "per_group"):
            if getattr(self, name) is not None:
                raise SettingsError(name, f"{name} selects frames; a region budget excludes it")
        if self.novel_share not in (None, 0.0):
            raise SettingsError(
                "novel_share",
                "a region budget opens no off-domain frame (the default) or any (--keep-novel); "
                "a share of them is a rule for frames",
            )

    @property
    def regions(self) -> bool:
        """Whether this selection buys regions (a budget) rather than k frames."""
        return self.budget is not None

    def describe(self) -> dict[str, Any]:
        """The settings as selection.json records them."""
        if self.regions:
            return {
                "strategy": self.strategy,
                "budget": self.budget,
                "seed": self.seed,
                "temperature": self.temperature,
                "max_per_frame": self.max_per_frame,
                "frame_cost": self.frame_cost,
                "novel_share": self.novel_share,
                "novel_threshold": self.novel_threshold,
            }
        return {
            "strategy": self.strategy,
            "k": self.k,
            "seed": self.seed,
            "diverse": self.diverse,
            "labeled": None if self.labeled is None else str(self.labeled),
            "balance": self.balance,
            "per_group": self.per_group,
            "group_by": self.group_by,
            "novel_share": self.novel_share,
            "novel_threshold": self.novel_threshold,
        }


@dataclass(frozen=True)
class TritonSettings:
    """How to reach a model on Triton (--protocol, --model-name, ... ; the API's keywords)."""

    protocol: str = "grpc"
    model_name: str | None = None  # default: MODEL_NAME
    model_version: int | None = None  # default: the highest version the server has loaded
    ssl: bool = False
    root_certs: str | None = None  # PEM file for TLS (implies ssl)
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0  # seconds per request
    retries: int = 3  # retries of a request after a transient error
    shm: bool = False  # tensors through system shared memory

    def __post_init__(self) -> None:
        _one_of("protocol", self.protocol, PROTOCOLS)
        if self.model_version is not None:
            _within("model_version", self.model_version, 1, whole=True)
        _within("timeout", self.timeout, 0.1)
        _within("retries", self.retries, 0, whole=True)

    @property
    def given(self) -> list[str]:
        """The settings that differ from the defaults."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(TritonSettings(), f.name)
        ]


@dataclass(frozen=True)
class EngineSettings:
    """Which engine scores: the ONNX model `model` in-process (default: the shipped one), or
    the Triton server(s) at `urls` as `triton` says."""

    model: Path | None = None
    urls: tuple[str, ...] = ()
    triton: TritonSettings = field(default_factory=TritonSettings)

    def __post_init__(self) -> None:
        if self.model is not None and self.urls:
            raise SettingsError("model", "a model file and a url exclude each other: use one")
        if self.urls:
            return
        if self.triton.shm:
            raise SettingsError("shm", "shm is a transport to a Triton server: give its url")
        if self.triton.model_name or self.triton.model_version:
            raise SettingsError(
                "model_name",
                "model_name and model_version pick a model on the Triton server at url; "
                "in-process, give the model file",
            )
        extra = self.triton.given
        if extra:
            raise SettingsError(extra[0], f"{', '.join(extra)} are Triton settings: give a url")

    def triton_factory(self) -> Callable[[], Any]:
        """A picklable maker of the Triton engine of `urls` (the Ray path builds one per
        actor)."""
        from .engines import TritonEngine

        t = self.triton
        return functools.partial(
            TritonEngine,
            self.urls,
            t.protocol,
            model_name=t.model_name or MODEL_NAME,
            model_version=None if t.model_version is None else str(t.model_version),
            ssl=t.ssl,
            root_certs=t.root_certs,
            headers=dict(t.headers),
            timeout=t.timeout,
            retries=t.retries,
            shm=t.shm,
        )

    def open(self) -> Any:
        """The engine these settings name (an `engines.Engine`); the caller closes it."""
        from .engines import EmbeddedEngine

        return self.triton_factory()() if self.urls else EmbeddedEngine(self.model)
