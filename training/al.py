"""The active-learning protocol: labelled sets, the stage loop, resumable state.

For every seed the initial labelled set (`initial_labeled`, 10% by default) is the same for every
strategy. Each stage retrains from the ImageNet backbone on the labelled set (`train.fit`)
for the same number of samples seen (`samples_per_epoch`, the pool's size unless set, x
`epochs`: a small labelled set is repeated, not trained less), tests the best-val checkpoint,
and lets the strategy pick the next step x pool images.

Layout of `out`:

    initial/seed<k>/               stage 0, the same for every strategy of a seed: trained once
    <strategy>/seed<k>/stage<i>/   fit output (best.pt, last.pt, history.json) + result.json
    <strategy>/seed<k>/state.json  labelled sets, metrics, selections and timings per stage
    full/seed<k>/                  the optional full-data reference run (each seed)

A stage recorded in state.json is never redone; a fit in progress resumes from its last.pt.
"""

from __future__ import annotations

import json
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.files import atomic_write_json

from .config import Preset, TrainConfig, with_classes
from .data import PartialLabels
from .device import CPU, Runtime
from .model import ModelConfig

STATE_FILE = "state.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Protocol:
    """How the labelled set grows and how picks are scored; the defaults are the paper's CamVid
    protocol. Saved, with the plan and the preset, in every state.json and in results.json."""

    init: float = 0.10  # labelled fraction of the train split at stage 0
    step: float = 0.05  # fraction added per stage
    max_fraction: float = 0.40  # labelled fraction of the last stage
    subset: float | None = None  # share of the unlabelled pool scored per stage (the paper: 0.5)
    bins: int = 8  # DE histogram bins (the paper: CamVid 8, Cityscapes 10)
    passes: int = 10  # QBC MC-dropout passes
    score_batch_size: int = 8
    test_split: str = "test"


def initial_labeled(pool_size: int, fraction: float, seed: int) -> list[int]:
    """A seeded random `fraction` of the pool (at least one image), sorted indices."""
    if pool_size <= 0:
        raise ValueError("the training pool is empty")
    k = max(1, round(pool_size * fraction))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool_size, size=min(k, pool_size), replace=False))


def stage_sizes(pool_size: int, init: float, step: float, max_fraction: float) -> list[int]:
    """Labelled-set size per stage: round(pool x (init + i x step)) for init .. max_fraction."""
    if not 0 < init <= max_fraction <= 1:
        raise ValueError(f"need 0 < init <= max <= 1, got init={init}, max={max_fraction}")
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    count = math.floor((max_fraction - init) / step + 1e-9) + 1
    sizes = [max(1, round(pool_size * (init + i * step))) for i in range(count)]
    if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
        raise ValueError(f"step {step} adds no image to a pool of {pool_size}; raise --step")
    return sizes


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def _plain(data: Any) -> Any:
    """As it reads back from JSON (tuples become lists), so saved and fresh values compare."""
    return json.loads(json.dumps(data))


def _with_new_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A recorded {"model": ..., "train": ...} record with the config fields added to the code
    since it was written filled in at their defaults: a field a newer dealseg added, at its
    default, changes nothing about a run, so a recorded run still resumes."""
    filled = dict(saved)
    for key, config in (("model", ModelConfig), ("train", TrainConfig)):
        if isinstance(saved.get(key), dict):
            filled[key] = {**_plain(asdict(config())), **saved[key]}
    return filled


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (`train.epochs`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def seeded_preset(preset: Preset, seed: int) -> Preset:
    """The preset with its training seed shifted by the AL seed (weights, augmentation)."""
    return Preset(preset.model, replace(preset.train, seed=preset.train.seed + seed))


def train_and_test(
    data: Path,
    run_dir: Path,
    preset: Preset,
    labeled: Sequence[int] | None,
    test_split: str = "test",
    quiet: bool = True,
    runtime: Runtime = CPU,
    partial: PartialLabels | None = None,
) -> dict[str, Any]:
    """Fit on `labeled` (None = the whole train split; `partial`: the bought regions of the
    frames it names), test mIoU of the best-val checkpoint.

    The result is kept in run_dir/result.json and reused while the labelled set and the
    configuration are unchanged; an interrupted fit resumes from run_dir/last.pt.
    """
    from .checkpoint import load_checkpoint
    from .data import SegmentationDataset
    from .evaluate import evaluate_model
    from .train import fit

    key = _plain(
        {
            "labeled": None if labeled is None else sorted(labeled),
            "model": preset.model.to_dict(),
            "train": preset.train.to_dict(),
            "test_split": test_split,
            **({"partial": partial.to_dict()} if partial is not None else {}),
        }
    )
    cache = run_dir / RESULT_FILE
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if _with_new_defaults(saved.get("key", {})) == key:
            return saved["result"]
    t0 = time.time()
    fitted = fit(
        data, run_dir, preset, labeled=labeled, quiet=quiet, runtime=runtime, partial=partial
    )
    t1 = time.time()
    best = load_checkpoint(fitted.best_path)
    model = best.build_model().to(runtime.device)
    test_set = SegmentationDataset(data, test_split, size=model.cfg.input_size)
    metrics = evaluate_model(model, test_set, model.cfg)
    result = {
        "val_miou": fitted.best_miou,
        "best_epoch": best.epoch,
        "test_miou": metrics["miou"],
        "test_iou_per_class": metrics["iou_per_class"],
        "test_pixel_accuracy": metrics["pixel_accuracy"],
        "test_difficulty_auroc": metrics.get("difficulty_auroc"),
        "fit_seconds": round(t1 - t0, 2),
        "test_seconds": round(time.time() - t1, 2),
        "history": fitted.history,
    }
    _write_json(cache, {"key": key, "result": result})
    return result


def train_full(
    data: Path,
    out: Path,
    preset: Preset,
    seed: int,
    test_split: str,
    quiet: bool,
    runtime: Runtime = CPU,
) -> None:
    """The full-data reference of `seed` (the whole train split, `preset` already seeded) in
    out/full/seed<k>/, reused while its configuration is unchanged."""
    r = train_and_test(
        data, out / "full" / f"seed{seed}", preset, None, test_split, runtime=runtime
    )
    _say(
        f"al full data seed {seed}: val {r['val_miou'] * 100:.1f} test "
        f"{r['test_miou'] * 100:.1f} mIoU, fit {r['fit_seconds']:.0f}s",
        quiet,
    )


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def load_state(
    path: Path,
    name: str,
    seed: int,
    settings: dict[str, Any],
    grows: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's state.json when it was recorded with `settings` (fields added to the configs
    since, and settings missing from the record that `defaults` names, at their defaults,
    change nothing; a list named in `grows` may have grown at its end: a study extended by
    later stages), else a fresh state; ValueError naming the settings that changed."""
    if not path.is_file():
        return {"strategy": name, "seed": seed, "settings": settings, "stages": []}
    saved = json.loads(path.read_text())
    recorded = {**_plain(defaults or {}), **_with_new_defaults(saved.get("settings", {}))}
    for key in grows:
        old, new = recorded.get(key), settings.get(key)
        if isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old:
            recorded[key] = new
    if recorded != settings:
        changed = _changed(recorded, settings)
        raise ValueError(
            f"{path} was recorded with other settings (changed: {', '.join(changed)}); "
            "use another --out or delete that folder"
        )
    return {**saved, "settings": settings}


class StageRun(ABC):
    """One strategy and seed of a study: its state.json, advanced one stage at a time.

    `settings` is what state.json records and a resumed run must match. A subclass says what is
    labelled at a stage (`labeled_at`), where and how it trains (`run_dir`, `train`), what a
    stage record adds (`stage_fields`), how it selects (`_select`) and what it prints.
    """

    stage_count: int

    grows: tuple[str, ...] = ()  # settings that may grow at their end (`load_state`)
    defaults: dict[str, Any] = {}  # settings added since, at their defaults (`load_state`)

    def __init__(
        self, data: Path, out: Path, name: str, seed: int, settings: dict, runtime: Runtime
    ) -> None:
        self.data, self.out, self.name, self.seed = data, out, name, seed
        self.runtime = runtime  # where it trains and scores; not a setting a resume must match
        self.dir = out / name / f"seed{seed}"
        self.settings = _plain(settings)
        self.state = load_state(
            self.dir / STATE_FILE, name, seed, self.settings, self.grows, self.defaults
        )

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.state["stages"]

    def save(self) -> None:
        _write_json(self.dir / STATE_FILE, self.state)

    def advance(self, stage: int, preset: Preset, quiet: bool) -> None:
        """Train, test and select for `stage`, unless state.json already records it."""
        last = stage == self.stage_count - 1
        done = len(self.stages) > stage and (last or "selection" in self.stages[stage])
        # tested, not yet selected (stopped in between, or the last stage of a study since
        # extended): the record stands and selects, where its checkpoint is still there
        tested = (
            not done
            and len(self.stages) > stage
            and (self.out / self.stages[stage]["run_dir"] / "best.pt").is_file()
        )
        if tested:
            del self.stages[stage + 1 :]
            self.stages[stage]["selection"] = self._select(stage, self.stages[stage])
            self.save()
        elif not done:
            del self.stages[stage:]
            labeled = self.labeled_at(stage)
            run_dir = self.run_dir(stage)
            t0 = time.time()
            result = self.train(stage, run_dir, preset, labeled)
            record = {
                "stage": stage,
                **self.stage_fields(stage, labeled),
                "labeled": labeled,
                "run_dir": str(run_dir.relative_to(self.out)),
                **result,
                "stage_seconds": round(time.time() - t0, 2),
            }
            self.stages.append(record)
            self.save()
            if not last:
                record["selection"] = self._select(stage, record)
                self.save()
        self._progress(stage, quiet, resumed=done)

    @abstractmethod
    def labeled_at(self, stage: int) -> Any: ...

    @abstractmethod
    def run_dir(self, stage: int) -> Path: ...

    @abstractmethod
    def train(self, stage: int, run_dir: Path, preset: Preset, labeled: Any) -> dict[str, Any]: ...

    @abstractmethod
    def stage_fields(self, stage: int, labeled: Any) -> dict[str, Any]: ...

    @abstractmethod
    def _select(self, stage: int, record: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def _progress(self, stage: int, quiet: bool, resumed: bool) -> None: ...


class StrategyRun(StageRun):
    """The paper's protocol for one strategy and seed: labelled sets of frames growing by
    `step`; settings are the protocol, the plan (pool size, labelled-set sizes, train split),
    the preset, the strategy and the seed."""

    def __init__(
        self,
        data: Path,
        out: Path,
        name: str,
        seed: int,
        protocol: Protocol,
        plan: dict,
        runtime: Runtime = CPU,
    ) -> None:
        settings = {**asdict(protocol), **plan, "strategy": name, "seed": seed}
        super().__init__(data, out, name, seed, settings, runtime)
        self.protocol, self.sizes, self.pool_size = protocol, plan["sizes"], plan["pool_size"]
        self.stage_count = len(self.sizes)

    def labeled_at(self, stage: int) -> list[int]:
        """Stage 0: the seed's initial set; later: the previous set plus its selection."""
        if stage == 0:
            labeled = initial_labeled(self.pool_size, self.protocol.init, self.seed)
        else:
            prev = self.stages[stage - 1]
            labeled = sorted(prev["labeled"] + prev["selection"]["indices"])
        if len(labeled) != self.sizes[stage]:
            raise ValueError(
                f"{self.dir}: stage {stage} has {len(labeled)} labelled images, "
                f"expected {self.sizes[stage]}"
            )
        return labeled

    def run_dir(self, stage: int) -> Path:
        return (
            self.out / "initial" / f"seed{self.seed}" if stage == 0 else self.dir / f"stage{stage}"
        )

    def train(
        self, stage: int, run_dir: Path, preset: Preset, labeled: list[int]
    ) -> dict[str, Any]:
        return train_and_test(
            self.data, run_dir, preset, labeled, self.protocol.test_split, True, self.runtime
        )

    def stage_fields(self, stage: int, labeled: list[int]) -> dict[str, Any]:
        return {"fraction": self.sizes[stage] / self.pool_size}

    def _select(self, stage: int, record: dict[str, Any]) -> dict[str, Any]:
        """The strategy's next batch, scored with this stage's best-val model."""
        from .acquisition import StageContext, acquire, needs_model, pool_subset
        from .checkpoint import load_checkpoint

        k = self.sizes[stage + 1] - self.sizes[stage]
        labeled = set(record["labeled"])
        unlabeled = [i for i in range(self.pool_size) if i not in labeled]
        candidates = pool_subset(unlabeled, self.protocol.subset, k, self.seed, stage)
        t0 = time.time()
        model = None
        if needs_model(self.name):
            best = load_checkpoint(self.out / record["run_dir"] / "best.pt")
            model = best.build_model().to(self.runtime.device)
        ctx = StageContext(
            data=self.data,
            model=model,
            labeled=tuple(record["labeled"]),
            split=self.settings["train_split"],
            bins=self.protocol.bins,
            passes=self.protocol.passes,
            seed=self.seed,
            stage=stage,
            batch_size=self.protocol.score_batch_size,
        )
        picked = acquire(self.name, ctx, candidates, k)
        return {
            "k": k,
            "indices": picked.indices,
            "scores": picked.scores,
            "scored": picked.scored,
            "seconds": round(time.time() - t0, 2),
        }

    def _progress(self, stage: int, quiet: bool, resumed: bool) -> None:
        r = self.stages[stage]
        n, total = len(r["labeled"]), len(self.sizes)
        line = (
            f"al {self.name} seed {self.seed} stage {stage + 1}/{total}: "
            f"{n}/{self.pool_size} labelled ({r['fraction'] * 100:.0f}%), "
            f"val {r['val_miou'] * 100:.1f} test {r['test_miou'] * 100:.1f} mIoU, "
            f"fit {r['fit_seconds']:.0f}s"
        )
        if "selection" in r:
            s = r["selection"]
            line += f", picked {len(s['indices'])} of {s['scored']} in {s['seconds']:.0f}s"
        _say(line + (" (recorded)" if resumed else ""), quiet)


def run_al(
    data: Path,
    out: Path,
    preset: Preset,
    strategies: Sequence[str],
    seeds: Sequence[int],
    protocol: Protocol = Protocol(),
    full: bool = False,
    quiet: bool = False,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    """`protocol` for every strategy and seed; writes results.json/.md/.png in `out`.

    Stage-major per seed (every strategy finishes stage i before any starts stage i + 1), so an
    interrupted run still leaves a comparable table. `full` also trains the full-data reference
    of each seed, before its stages. Returns the collected results.
    """
    from .acquisition import STRATEGIES
    from .data import SegmentationDataset

    for name in strategies:
        STRATEGIES[name]  # noqa: B018 - an unknown name fails here, before any training
    if not strategies or not seeds:
        raise ValueError("need at least one strategy and one seed")
    train_set = SegmentationDataset(data, preset.train.train_split)
    pool_size = len(train_set)
    preset = with_classes(preset, train_set.num_classes)
    if preset.train.samples_per_epoch <= 0:  # every stage sees as many samples as the full data
        preset = Preset(preset.model, replace(preset.train, samples_per_epoch=pool_size))
    plan = {
        "pool_size": pool_size,
        "sizes": stage_sizes(pool_size, protocol.init, protocol.step, protocol.max_fraction),
        "train_split": preset.train.train_split,
    }
    out = Path(out)
    for seed in seeds:
        seeded = seeded_preset(preset, seed)
        if full:
            train_full(data, out, seeded, seed, protocol.test_split, quiet, runtime)
        configs = {"model": seeded.model.to_dict(), "train": seeded.train.to_dict()}
        runs = [
            StrategyRun(data, out, name, seed, protocol, {**plan, **configs}, runtime)
            for name in strategies
        ]
        for stage in range(len(plan["sizes"])):
            for run in runs:
                run.advance(stage, seeded, quiet)
    return report_al(out, strategies, seeds, data)


def report_al(
    out: Path, strategies: Sequence[str], seeds: Sequence[int], data: Path
) -> dict[str, Any]:
    """results.json/.md/.png in `out` from the stages its state.json files record."""
    from .report import collect, write_report

    results = collect(out, strategies, seeds, data)
    write_report(out, results)
    return results
