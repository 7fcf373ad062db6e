"""Active learning in label cost: regions or whole frames bought under rising pixel budgets.

Every stage labels a budget of the pool's pixels (`LabelCostProtocol.budgets`, shares of the
pool's pixels at the model's input size). Stage 0 is a seeded random start at the first budget,
shared by the strategies of a unit and seed: random regions (`initial-region/seed<k>/`) for the
region strategies, random whole frames (`initial-frame/seed<k>/`) for the frame strategies.
Each later stage lets the strategy buy up to the next budget with the previous stage's
best-val model: a region strategy (`dealseg.core.regions`) picks regions of any frame, a frame
strategy (`training/acquisition.py`) whole frames. Every stage retrains from the ImageNet
backbone on what is labelled (regions: the rest of each frame void, `PartialLabels`) for the
same number of samples seen (`samples_per_epoch` x `epochs`, required), so stages and
strategies compare at one training budget.

Layout of `out` (beside `deal-train al`'s frame study):

    initial-region/seed<k>/, initial-frame/seed<k>/   stage 0 of each unit
    <strategy>/seed<k>/stage<i>/                     fit output + result.json
    <strategy>/seed<k>/state.json                    what was labelled, metrics, picks per stage
    full/seed<k>/                                    the full-data reference (`full`)

A stage recorded in state.json is never redone; a fit in progress resumes from its last.pt;
budgets added after the last recorded one extend a study (its last stage then selects).
Each selection records what its picks hold: labelled pixels, the pixels the choosing model got
wrong and the labelled pixels per class (for the rare-class share).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dealseg.core.regions import (
    REGION_STRATEGIES,
    Budget,
    RegionOptions,
    RegionPool,
    choose_regions,
    class_counts,
    majority,
    parse_regions,
    partition,
    region_means,
)

from .al import StageRun, _say, train_and_test, train_full
from .config import Preset, with_classes
from .data import IGNORE_INDEX, PartialLabels, SegmentationDataset
from .device import CPU, Runtime
from .losses import PSEUDO_OFFSET
from .model import DEALNet, normalise
from .scores import entropy_map


@dataclass(frozen=True)
class LabelCostProtocol:
    """The label-cost study's stages; saved in every state.json and in results.json."""

    budgets: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04)  # share of the pool's pixels
    regions: str = "cell:12"  # how frames are cut (`core.regions.parse_regions`)
    temperature: float = 1.0  # the sampling strategies' temperature
    # From stage 1: the previous stage's model's predictions where its softmax max reaches this,
    # as guessed labels of every pixel not bought (`pseudo_labels`); 0: none
    pseudo_threshold: float = 0.0
    score_batch_size: int = 8
    test_split: str = "test"


def is_region_strategy(name: str) -> bool:
    return name in REGION_STRATEGIES


def check_budgets(budgets: Sequence[float]) -> None:
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise ValueError(f"budgets are shares of the pool's pixels in (0, 1], got {budgets}")
    if any(b <= a for a, b in zip(budgets, budgets[1:], strict=False)):
        raise ValueError(f"budgets must rise from stage to stage, got {budgets}")


# ------------------------------------------------------------------------ scoring regions
@dataclass
class ScoredRegions:
    """Every region of the scored frames: the pool to choose from and what each region holds
    (errors of the scoring model, labelled pixels per class), aligned by index."""

    pool: RegionPool
    errors: np.ndarray  # [N] pixels the model gets wrong (label known, not void)
    classes: np.ndarray  # [N, C] labelled pixels per class


@torch.no_grad()
def score_regions(
    data: Path,
    split: str,
    indices: Sequence[int],
    spec_text: str,
    model: DEALNet | None,
    batch_size: int = 8,
    size: tuple[int, int] | None = None,
) -> ScoredRegions:
    """Cut each frame of `indices` into regions and score them with `model` (the mean of its
    difficulty map, "ds", and of its softmax-entropy map, "entropy", over each region, and the
    class its segmentation predicts on most of each: `RegionPool.classes`, as the client reads
    them from the graph); without a model only pixels and labels are counted (random
    picks)."""
    spec = parse_regions(spec_text)
    size = tuple(model.cfg.input_size) if model is not None else size
    dataset = SegmentationDataset(data, split, size=size, indices=indices)
    num_classes = dataset.num_classes
    device = next(model.parameters()).device if model is not None else None
    if model is not None:
        model.eval()
    frame, region, pixels, errors, predicted = [], [], [], [], []
    classes: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {"ds": [], "entropy": []} if model else {}
    position = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        maps: dict[str, torch.Tensor] = {}
        wrong = torch.zeros_like(labels, dtype=torch.bool)
        seg = None
        if model is not None:
            x = normalise(images.to(device), model.cfg.mean, model.cfg.std)
            out = model(x)
            h, w = labels.shape[-2:]
            ent = F.interpolate(
                entropy_map(out.logits)[:, None], size=(h, w), mode="bilinear", align_corners=False
            )[:, 0]
            maps = {"ds": out.difficulty().float().cpu(), "entropy": ent.float().cpu()}
            pred = out.full_logits().argmax(1).cpu()
            wrong = (pred != labels) & (labels != IGNORE_INDEX)
            # the graph's segmentation: the argmax at stride 4, nearest to the frame (as served)
            coarse = out.logits.argmax(1, keepdim=True).float()
            seg = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].to(torch.uint8).cpu()
        for b in range(len(images)):
            label = labels[b].numpy()
            image = None  # only superpixels look at the pixels
            if spec.kind == "slic":
                image = (images[b].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            ids = partition(spec, label.shape, image=image)
            extra = {"errors": wrong[b].numpy().astype(np.float64)}
            per_map = {k: v[b].numpy() for k, v in maps.items()}
            rid, npx, means = region_means(ids, {**per_map, **extra})
            frame.append(np.full(len(rid), position, dtype=np.int64))
            region.append(rid)
            pixels.append(npx)
            errors.append(np.rint(means.pop("errors") * npx).astype(np.int64))
            for k in scores:
                scores[k].append(means[k])
            classes.append(class_counts(ids, label, num_classes)[rid])
            if seg is not None:  # the class predicted on most of each region's pixels
                predicted.append(majority(class_counts(ids, seg[b].numpy(), num_classes))[rid])
            position += 1
    paths = [str(s.image) for s in dataset.samples]
    cat = np.concatenate
    pool = RegionPool(
        paths,
        cat(frame) if frame else np.zeros(0, np.int64),
        cat(region) if region else np.zeros(0, np.int32),
        cat(pixels) if pixels else np.zeros(0, np.int64),
        {k: cat(v) for k, v in scores.items()},
        cat(predicted) if predicted else None,
    )
    return ScoredRegions(
        pool,
        cat(errors) if errors else np.zeros(0, np.int64),
        cat(classes) if classes else np.zeros((0, num_classes), np.int64),
    )


@torch.no_grad()
def pseudo_labels(
    data: Path,
    split: str,
    indices: Sequence[int],
    model: DEALNet,
    threshold: float,
    batch_size: int = 8,
) -> dict[int, np.ndarray]:
    """`model`'s guesses for the frames of `indices` at its input size: per frame [H, W] uint8,
    the predicted class where the softmax's max is >= `threshold`, IGNORE_INDEX elsewhere."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the pseudo-label threshold is a probability in (0, 1], got {threshold}")
    if model.cfg.num_classes > PSEUDO_OFFSET - 1:
        raise ValueError(
            f"pseudo-labels need at most {PSEUDO_OFFSET - 1} classes, the model has "
            f"{model.cfg.num_classes}"
        )
    dataset = SegmentationDataset(data, split, size=tuple(model.cfg.input_size), indices=indices)
    device = next(model.parameters()).device
    model.eval()
    guesses: dict[int, np.ndarray] = {}
    position = 0
    for images, _ in DataLoader(dataset, batch_size=batch_size):
        x = normalise(images.to(device), model.cfg.mean, model.cfg.std)
        confidence, guess = model(x).full_logits().float().softmax(1).max(1)
        guess = torch.where(confidence >= threshold, guess, IGNORE_INDEX).to(torch.uint8).cpu()
        for b in range(len(images)):
            guesses[dataset.indices[position]] = guess[b].numpy()
            position += 1
    return guesses


def guess_quality(data: Path, split: str, partial: PartialLabels) -> dict[str, float]:
    """What the guesses of `partial` hold (the study knows every label): the share of the
    pool's pixels guessed, and of the guessed pixels with a label the share guessed right."""
    assert partial.pseudo is not None
    indices = sorted(partial.pseudo)
    size = next(iter(partial.pseudo.values())).shape
    truth = SegmentationDataset(data, split, size=size, indices=indices)
    marked = SegmentationDataset(data, split, size=size, indices=indices, partial=partial)
    pixels = guessed = labelled = right = 0
    for i in range(len(indices)):
        label, mark = truth[i][1], marked[i][1]
        guess = (mark >= PSEUDO_OFFSET) & (mark != IGNORE_INDEX)
        known = guess & (label != IGNORE_INDEX)
        pixels += mark.numel()
        guessed += int(guess.sum())
        labelled += int(known.sum())
        right += int((known & (mark - PSEUDO_OFFSET == label)).sum())
    return {"share": guessed / max(pixels, 1), "accuracy": right / max(labelled, 1)}


def _digest(guesses: dict[int, np.ndarray], threshold: float) -> str:
    """Names a set of guesses (a run's cache key): the threshold and a hash of the labels."""
    h = hashlib.sha256()
    for i in sorted(guesses):
        h.update(f"{i}:".encode() + guesses[i].tobytes())
    return f">= {threshold:g}, sha256 {h.hexdigest()[:16]}"


def _pick_record(scored: ScoredRegions, taken: np.ndarray, indices: Sequence[int]) -> dict:
    """What a selection bought: [frame index, region id] pairs and their pixel counts."""
    frames = np.asarray(indices)[scored.pool.frame[taken]]
    return {
        "picked": [
            [int(f), int(r)] for f, r in zip(frames, scored.pool.region[taken], strict=True)
        ],
        "pixels": int(scored.pool.pixels[taken].sum()),
        "error_pixels": int(scored.errors[taken].sum()),
        "class_pixels": [int(c) for c in scored.classes[taken].sum(0)],
    }


# ------------------------------------------------------------------------------ one run
class LabelCostRun(StageRun):
    """One strategy and seed of the label-cost study: its state.json, one stage at a time.
    Its budgets may grow at their end: the recorded stages stand, the last of them selects."""

    grows = ("budgets",)
    defaults = {"pseudo_threshold": LabelCostProtocol.pseudo_threshold}  # added since

    def __init__(
        self,
        data: Path,
        out: Path,
        name: str,
        seed: int,
        protocol: LabelCostProtocol,
        plan: dict[str, Any],
        runtime: Runtime = CPU,
    ) -> None:
        self.region = is_region_strategy(name)
        self.unit = "region" if self.region else "frame"
        settings = {**asdict(protocol), **plan, "strategy": name, "seed": seed, "unit": self.unit}
        super().__init__(data, out, name, seed, settings, runtime)
        self.protocol, self.plan = protocol, plan
        self.stage_count = len(protocol.budgets)

    def budget_pixels(self, stage: int) -> int:
        return math.floor(self.protocol.budgets[stage] * self.plan["pool_pixels"] + 1e-9)

    def labeled_at(self, stage: int) -> dict[str, Any]:
        """What is labelled at `stage`: {"frames": [...]} or {"regions": {frame: [ids]}}."""
        if stage == 0:
            return self._initial()
        prev = self.stages[stage - 1]
        if self.region:
            regions = {int(k): list(v) for k, v in prev["labeled"]["regions"].items()}
            for f, r in prev["selection"]["picked"]:
                regions.setdefault(int(f), []).append(int(r))
            return {"regions": {str(k): sorted(v) for k, v in sorted(regions.items())}}
        return {"frames": sorted(prev["labeled"]["frames"] + prev["selection"]["frames"])}

    def _initial(self) -> dict[str, Any]:
        """The seeded random start at the first budget (the same for every strategy of the
        unit and seed): regions by `region-random`, frames by a seeded draw."""
        budget = self.budget_pixels(0)
        n = self.plan["pool_size"]
        if self.region:
            scored = score_regions(
                self.data,
                self.plan["train_split"],
                range(n),
                self.protocol.regions,
                None,
                self.protocol.score_batch_size,
                tuple(self.plan["input_size"]),
            )
            picks = choose_regions(
                scored.pool, "region-random", Budget(pixels=budget), RegionOptions(seed=self.seed)
            )
            regions: dict[int, list[int]] = {}
            for i in picks.indices:
                regions.setdefault(int(scored.pool.frame[i]), []).append(int(scored.pool.region[i]))
            return {"regions": {str(k): sorted(v) for k, v in sorted(regions.items())}}
        k = max(1, budget // self.plan["frame_pixels"])
        rng = np.random.default_rng([self.seed, 7])
        return {"frames": sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))}

    def _partial(self, labeled: dict[str, Any]) -> PartialLabels | None:
        if not self.region:
            return None
        picked = {int(k): v for k, v in labeled["regions"].items()}
        return PartialLabels(parse_regions(self.protocol.regions), picked)

    def _labelled_pixels(self, labeled: dict[str, Any], sizes: dict[tuple[int, int], int]) -> int:
        if self.region:
            return sum(
                sizes[(int(f), int(r))] for f, ids in labeled["regions"].items() for r in ids
            )
        return len(labeled["frames"]) * self.plan["frame_pixels"]

    def run_dir(self, stage: int) -> Path:
        if stage == 0:
            return self.out / f"initial-{self.unit}" / f"seed{self.seed}"
        return self.dir / f"stage{stage}"

    def train(
        self, stage: int, run_dir: Path, preset: Preset, labeled: dict[str, Any]
    ) -> dict[str, Any]:
        frames = None if self.region else labeled["frames"]
        partial = self._partial(labeled)
        threshold = self.protocol.pseudo_threshold
        if threshold > 0 and stage > 0:
            # every frame of the pool trains: bought labels where bought, guesses elsewhere
            if partial is None:
                partial = PartialLabels(parse_regions("frame"), {i: [0] for i in frames})
            model = self._load_model(self.stages[stage - 1])
            guesses = pseudo_labels(
                self.data,
                self.plan["train_split"],
                range(self.plan["pool_size"]),
                model,
                threshold,
                self.protocol.score_batch_size,
            )
            partial = replace(partial, pseudo=guesses, pseudo_key=_digest(guesses, threshold))
            frames = None
        test = self.protocol.test_split
        result = train_and_test(
            self.data, run_dir, preset, frames, test, True, self.runtime, partial=partial
        )
        if partial is not None and partial.pseudo is not None:
            result["pseudo"] = guess_quality(self.data, self.plan["train_split"], partial)
        return result

    def stage_fields(self, stage: int, labeled: dict[str, Any]) -> dict[str, Any]:
        return {"budget": self.protocol.budgets[stage]}

    def _load_model(self, record: dict[str, Any]) -> DEALNet:
        from .checkpoint import load_checkpoint

        best = load_checkpoint(self.out / record["run_dir"] / "best.pt")
        return best.build_model().to(self.runtime.device)

    def _select(self, stage: int, record: dict[str, Any]) -> dict[str, Any]:
        """Buy up to the next budget with this stage's best-val model."""
        t0 = time.time()
        model = self._load_model(record)
        n = self.plan["pool_size"]
        scored = score_regions(
            self.data,
            self.plan["train_split"],
            range(n),
            self.protocol.regions if self.region else "frame",
            model,
            self.protocol.score_batch_size,
        )
        sizes = {
            (int(f), int(r)): int(p)
            for f, r, p in zip(
                scored.pool.frame, scored.pool.region, scored.pool.pixels, strict=True
            )
        }
        spent = self._labelled_pixels(record["labeled"], sizes)
        room = max(0, self.budget_pixels(stage + 1) - spent)
        if self.region:
            owned = {
                (int(f), int(r)) for f, ids in record["labeled"]["regions"].items() for r in ids
            }
            keep = np.array(
                [
                    (int(f), int(r)) not in owned
                    for f, r in zip(scored.pool.frame, scored.pool.region, strict=True)
                ],
                dtype=bool,
            )
            sub = np.flatnonzero(keep)
            pool = scored.pool.subset(sub)
            opts = RegionOptions(
                seed=self.seed * 1000 + stage, temperature=self.protocol.temperature
            )
            picks = choose_regions(pool, self.name, Budget(pixels=room), opts)
            taken = sub[picks.indices]
            selection = _pick_record(scored, taken, range(n))
        else:
            from .acquisition import StageContext, acquire

            labelled = set(record["labeled"]["frames"])
            unlabeled = [i for i in range(n) if i not in labelled]
            k = room // self.plan["frame_pixels"]
            ctx = StageContext(
                data=self.data,
                model=model,
                labeled=tuple(sorted(labelled)),
                split=self.plan["train_split"],
                seed=self.seed,
                stage=stage,
                batch_size=self.protocol.score_batch_size,
            )
            picked = acquire(self.name, ctx, unlabeled, k).indices
            # one region per frame (the unit "frame"): index i is frame i
            taken = np.asarray(picked, dtype=np.int64)
            selection = _pick_record(scored, taken, range(n))
            selection["frames"] = [int(i) for i in picked]
            del selection["picked"]
        selection["budget_pixels"] = self.budget_pixels(stage + 1)
        selection["seconds"] = round(time.time() - t0, 2)
        return selection

    def _progress(self, stage: int, quiet: bool, resumed: bool) -> None:
        r = self.stages[stage]
        line = (
            f"al {self.name} seed {self.seed} stage {stage + 1}/{len(self.protocol.budgets)}: "
            f"{r['budget'] * 100:g}% of the pool's pixels, val {r['val_miou'] * 100:.1f} "
            f"test {r['test_miou'] * 100:.1f} mIoU, fit {r['fit_seconds']:.0f}s"
        )
        _say(line + (" (recorded)" if resumed else ""), quiet)


def label_cost_plan(data: Path, preset: Preset) -> dict[str, Any]:
    """Pool size, pixels and the train split: what every run of the study must agree on."""
    train_set = SegmentationDataset(data, preset.train.train_split)
    h, w = preset.model.input_size
    n = len(train_set)
    return {
        "pool_size": n,
        "input_size": [h, w],
        "frame_pixels": h * w,
        "pool_pixels": n * h * w,
        "train_split": preset.train.train_split,
    }


def run_label_cost(
    data: Path,
    out: Path,
    preset: Preset,
    strategies: Sequence[str],
    seeds: Sequence[int],
    protocol: LabelCostProtocol = LabelCostProtocol(),
    full: bool = False,
    quiet: bool = False,
    runtime: Runtime = CPU,
    through: float | None = None,
) -> None:
    """Every strategy and seed through the budgets, stage-major per seed (every strategy
    finishes stage i before any starts stage i + 1); `full` first trains the full-data
    reference of every seed with the same recipe. `through` (one of the budgets) stops every
    seed after that stage, so that all seeds reach a budget before any goes further; it is not
    a setting, and a later run without it goes on from there."""
    from .acquisition import STRATEGIES

    check_budgets(protocol.budgets)
    stages = len(protocol.budgets)
    if through is not None:
        matches = [i for i, b in enumerate(protocol.budgets) if math.isclose(b, through)]
        if not matches:
            raise ValueError(
                f"--through {through * 100:g}% is not one of the budgets "
                f"({', '.join(f'{b * 100:g}%' for b in protocol.budgets)})"
            )
        stages = matches[0] + 1
    parse_regions(protocol.regions)
    for name in strategies:
        if not is_region_strategy(name):
            STRATEGIES[name]  # noqa: B018 - an unknown name fails here, before any training
    if not strategies or not seeds:
        raise ValueError("need at least one strategy and one seed")
    if preset.train.samples_per_epoch <= 0:
        raise ValueError(
            "the label-cost study trains every stage for the same number of samples: set "
            "samples_per_epoch=N (e.g. the pool's size)"
        )
    train_set = SegmentationDataset(data, preset.train.train_split)
    preset = with_classes(preset, train_set.num_classes)
    preset = Preset(preset.model, replace(preset.train, partial_labels=True))
    plan = label_cost_plan(data, preset)
    out = Path(out)
    for seed in seeds:
        seeded = Preset(preset.model, replace(preset.train, seed=preset.train.seed + seed))
        if full:
            train_full(data, out, seeded, seed, protocol.test_split, quiet, runtime)
        configs = {"model": seeded.model.to_dict(), "train": seeded.train.to_dict()}
        runs = [
            LabelCostRun(data, out, name, seed, protocol, {**plan, **configs}, runtime)
            for name in strategies
        ]
        for stage in range(stages):
            for run in runs:
                run.advance(stage, seeded, quiet)
