"""Peers: our graph against what a user would run instead, on the same held-out frames, one run.

    .venv/bin/python bench/peers.py [--quick] [--frames N]

The frames: N street scenes of the project's generator at a seed the shipped model never saw
(`deal-train synth --n N --size <model's> --seed 202`), decoded once. Every variant scores all of
them in batches of 8 with 2 threads; the variants take turns batch by batch (A B C ... A B C),
so a background load slows each alike:

    ours      the shipped graph in ONNX Runtime in this process: the client's outputs (DS, DE,
              entropy, class fractions, embedding), computed in the graph
    triton    the same graph through the real bundled tritonserver (python-cpu repository,
              gRPC on loopback, `TritonEngine`, 2 ORT threads in the server)
    eager     the research code's loop: the model in eager PyTorch, full-resolution softmax and
              difficulty map to numpy, DS, DE and entropy in numpy
    mc-eager  MC dropout as Baal does it: T = 10 passes of the segmenter (encoder, decoder,
              segmentation head) with dropout sampling and batch norm in eval, argmax votes at
              stride 4, vote entropy (`training.acquisition.vote_entropy`)
    mc-ort    the same T = 10 passes in ONNX Runtime: the segmenter exported with each Dropout
              replaced by a sampled mask (RandomUniformLike >= p, scaled by 1 / (1 - p): a fresh
              mask every run), the votes out as uint8, vote entropy in numpy
    logits    the Lightly / FiftyOne pattern: the segmenter in ONNX Runtime returns FP32 logits
              at full resolution; softmax, entropy, least confidence and margin in numpy

The eager and exported peers use the shipped model's own weights (`common.shipped_eager`,
checked against the shipped graph before timing). Peak memory is each variant alone in a fresh
process (its VmHWM after model load and 4 batches), so variants do not share a heap; Triton's
is the client process plus the server's processes (VmHWM of tritonserver and its stub, summed).
Spearman against ours where a variant computes the same score.
Targets: ours >= 10x mc-eager and >= 2x eager in images/s; logits move >= 1000x our bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os

# The alternated engines must not spin on each other's cores (see bench/engine.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import (
    CACHE,
    PYTHON,
    ROOT,
    SHIPPED_MODEL,
    feeds,
    markdown_table,
    mib,
    ort_session,
    process_tree,
    python_cpu_server,
    shipped_eager,
    status_kib,
    write_result,
)

from dealseg.core.metrics import spearman

THREADS = 2
BATCH = 8
PASSES = 10  # MC dropout passes (Baal's default)
SEED = 202  # generator seed of the held-out frames
PROBE_FRAMES = 4 * BATCH  # frames each memory probe scores
WORK = CACHE / "peers"
VARIANTS = ("ours", "triton", "eager", "mc-eager", "mc-ort", "logits")
LABELS = {
    "ours": "(a) ours: the graph in ONNX Runtime, scores in-graph",
    "triton": "(a) ours through Triton (gRPC, python-cpu)",
    "eager": "(b) eager PyTorch, full-res softmax to numpy, scores in numpy",
    "mc-eager": f"(c) MC dropout T={PASSES}, vote entropy, eager PyTorch",
    "mc-ort": f"(c) MC dropout T={PASSES}, vote entropy, ONNX Runtime (sampled dropout)",
    "logits": "(d) full-res FP32 logits out of ONNX Runtime, scores in numpy",
}


# ------------------------------------------------------------------------------ frames
def held_out(count: int, size: tuple[int, int]) -> np.ndarray:
    """`count` fresh street scenes (generator seed 202) decoded to the model's size."""
    from dealseg.core.decode import decode_image

    root = WORK / f"streets_seed{SEED}_n{count}_{size[0]}x{size[1]}"
    if not (root / "summary.json").is_file():
        subprocess.run(
            [
                str(Path(PYTHON).parent / "deal-train"),
                "synth",
                "--out",
                str(root),
                "--n",
                str(count),
                "--size",
                f"{size[0]}x{size[1]}",
                "--seed",
                str(SEED),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    paths = sorted(p for split in ("train", "val", "test") for p in (root / split).glob("*.png"))
    return np.stack([decode_image(str(p), size) for p in paths[:count]])


# ------------------------------------------------------------------------------ numpy scores
def entropy_np(prob: np.ndarray) -> np.ndarray:
    """Mean per-pixel ln-entropy of probabilities [B, C, H, W] -> [B]."""
    return -(prob * np.log(np.maximum(prob, 1e-12))).sum(axis=1).mean(axis=(1, 2))


def least_confidence_np(prob: np.ndarray) -> np.ndarray:
    return (1.0 - prob.max(axis=1)).mean(axis=(1, 2))


def margin_np(prob: np.ndarray) -> np.ndarray:
    top2 = np.partition(prob, -2, axis=1)[:, -2:]  # [B, 2, H, W]
    return (1.0 - np.abs(top2[:, 1] - top2[:, 0])).mean(axis=(1, 2))


def ds_de_np(difficulty: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """DS (mean) and DE (ln-entropy of a `bins` histogram over each map's own range) of
    difficulty maps [B, H, W], as the research code computes them."""
    ds, de = difficulty.mean(axis=(1, 2)), np.zeros(len(difficulty))
    for i, d in enumerate(difficulty):
        counts, _ = np.histogram(d, bins=bins, range=(d.min(), d.max()))
        p = counts[counts > 0] / d.size
        de[i] = -(p * np.log(p)).sum()
    return ds, de


def vote_entropy_np(votes: np.ndarray, classes: int) -> np.ndarray:
    """Per-pixel ln-entropy of the class votes [T, B, h, w] (uint8), image mean -> [B]."""
    counts = np.stack([(votes == c).sum(axis=0) for c in range(classes)])  # [C, B, h, w]
    p = counts / votes.shape[0]
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=0).mean(axis=(1, 2))


# ------------------------------------------------------------------------------ exports
def segmenter_graph(kind: str) -> Path:
    """The shipped model's segmenter as ONNX (cached): "logits" -> FP32 [B, C, H, W] at full
    resolution; "votes" -> uint8 argmax [B, H/4, W/4] with dropout sampling on every run."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    path = WORK / f"segmenter-{kind}.onnx"
    if path.is_file() and path.stat().st_mtime > SHIPPED_MODEL.stat().st_mtime:
        return path

    class SampledDropout(nn.Module):
        """Dropout that samples at inference: a fresh Bernoulli keep-mask each run."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keep = (torch.rand_like(x) >= self.p).to(x.dtype)
            return x * keep / (1.0 - self.p)

    class Segmenter(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            cfg = net.cfg  # type: ignore[attr-defined]
            self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
            net = self.net
            low, high = net.encoder(x)  # type: ignore[operator]
            logits = net.segmentation_head(net.decoder(low, high)[0])  # type: ignore[operator]
            if kind == "votes":
                return logits.argmax(dim=1).to(torch.uint8)
            return F.interpolate(logits, size=image.shape[1:3], mode="bilinear")

    net = copy.deepcopy(shipped_eager())
    if kind == "votes":
        for module in list(net.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(module, name, SampledDropout(child.p))
    graph = Segmenter(net).eval()
    h, w = net.cfg.input_size
    batch = torch.export.Dim("batch", min=1, max=16)
    WORK.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.zeros(2, h, w, 3, dtype=torch.uint8),),
            str(path),
            input_names=["image"],
            output_names=[kind],
            dynamic_shapes={"image": {0: batch}},
            opset_version=18,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


# ------------------------------------------------------------------------------ variants
Scores = dict[str, np.ndarray]


class Variant:
    """One way of scoring a batch: `run(images) -> scores`, with the seconds spent after the
    model (scores in numpy) and the bytes per image the model hands back."""

    def __init__(self, run: Callable[[np.ndarray], Scores]) -> None:
        self._run = run
        self.post_s = 0.0
        self.moved = 0.0  # bytes per image out of the model

    def __call__(self, images: np.ndarray) -> Scores:
        return self._run(images)


def build(name: str, url: str | None, bins: int, classes: int) -> Variant:
    """The variant `name`, loaded and ready (ORT variants import no torch)."""
    from dealseg.core.contract import SCORE_OUTPUTS

    if name == "ours":
        session = ort_session(SHIPPED_MODEL, THREADS)

        def ours(images: np.ndarray) -> Scores:
            values = session.run(list(SCORE_OUTPUTS), feeds(session, images))
            out = dict(zip(SCORE_OUTPUTS, values, strict=True))
            v.moved = sum(a.nbytes for a in out.values()) / len(images)
            return {k: out[k] for k in ("ds", "de", "entropy")}

        v = Variant(ours)
        return v
    if name == "triton":
        from dealseg.client.engines import TritonEngine

        engine = TritonEngine([url or ""], "grpc")

        def triton(images: np.ndarray) -> Scores:
            out = engine.infer(images, SCORE_OUTPUTS)
            return {k: out[k] for k in ("ds", "de", "entropy")}

        return Variant(triton)
    if name in ("mc-ort", "logits"):
        session = ort_session(segmenter_graph("votes" if name == "mc-ort" else "logits"), THREADS)

        def mc_ort(images: np.ndarray) -> Scores:
            votes = np.stack([session.run(None, {"image": images})[0] for _ in range(PASSES)])
            start = time.perf_counter()
            score = vote_entropy_np(votes, classes)
            v.post_s += time.perf_counter() - start
            return {"vote_entropy": score}

        def logits(images: np.ndarray) -> Scores:
            z = session.run(None, {"image": images})[0]
            v.moved = z.nbytes / len(images)
            start = time.perf_counter()
            e = np.exp(z - z.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            out = {
                "entropy": entropy_np(prob),
                "least_confidence": least_confidence_np(prob),
                "margin": margin_np(prob),
            }
            v.post_s += time.perf_counter() - start
            return out

        v = Variant(mc_ort if name == "mc-ort" else logits)
        return v
    return eager_variant(name, bins, classes)


def eager_variant(name: str, bins: int, classes: int) -> Variant:
    """The research code's eager loops: "eager" (DS, DE, entropy) and "mc-eager"."""
    import torch

    from dealseg.training.acquisition import mc_dropout, vote_entropy
    from dealseg.training.model import normalise

    torch.set_num_threads(THREADS)
    net = shipped_eager()
    cfg = net.cfg

    def tensor(images: np.ndarray) -> torch.Tensor:  # the research loader's normalised batch
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return normalise(x, cfg.mean, cfg.std)

    def eager(images: np.ndarray) -> Scores:
        with torch.inference_mode():
            out = net(tensor(images))
            prob = torch.softmax(out.full_logits(), dim=1).numpy()
            difficulty = out.difficulty().numpy()
        start = time.perf_counter()
        ds, de = ds_de_np(difficulty, bins)
        scores = {"ds": ds, "de": de, "entropy": entropy_np(prob)}
        v.post_s += time.perf_counter() - start
        return scores

    def mc_eager(images: np.ndarray) -> Scores:
        with torch.inference_mode(), mc_dropout(net):
            x = tensor(images)
            votes = [
                net.segmentation_head(net.decoder(*net.encoder(x))[0]).argmax(1)
                for _ in range(PASSES)
            ]
            return {"vote_entropy": vote_entropy(torch.stack(votes), classes).numpy()}

    v = Variant(eager if name == "eager" else mc_eager)
    return v


# ------------------------------------------------------------------------------ memory
def probe(name: str, url: str | None, frames: int) -> None:
    """(child process) Load `name`, score PROBE_FRAMES frames, print the peak RSS in KiB.

    VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a child would report
    its parent's peak."""
    from dealseg.core.modelfile import read_onnx_spec

    spec = read_onnx_spec(SHIPPED_MODEL)
    images = held_out(frames, spec.input_size)[:PROBE_FRAMES]
    variant = build(name, url, spec.bins, spec.num_classes)
    for s in range(0, len(images), BATCH):
        variant(images[s : s + BATCH])
    print(json.dumps({"peak_kib": float(status_kib("self", "VmHWM"))}))


def peak_of(name: str, url: str | None, frames: int) -> float:
    cmd = [PYTHON, __file__, "--probe", name, "--frames", str(frames)]
    cmd += ["--url", url] if url else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {name} failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"])


def tree_peak_kib(pid: int) -> float:
    """Summed VmHWM of a process and its descendants (Linux /proc)."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            total += status_kib(p, "VmHWM")
    return total


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 frames (a smoke run)")
    parser.add_argument("--frames", type=int, default=None, help="held-out frames (default 500)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    frames = args.frames or (48 if args.quick else 500)
    if args.probe:
        probe(args.probe, args.url, frames)
        return

    import torch

    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.export.graph import DEALGraph

    spec = read_onnx_spec(SHIPPED_MODEL)
    requested = frames
    images = held_out(requested, spec.input_size)
    frames = len(images) - len(images) % BATCH  # whole batches
    images = images[:frames]

    # The eager model is the shipped one: check it against the graph before timing anything.
    check = ort_session(SHIPPED_MODEL, THREADS)
    ref = check.run(["ds", "entropy"], feeds(check, images[:BATCH]))
    with torch.inference_mode():
        mine = DEALGraph(shipped_eager(), spec.bins)(torch.from_numpy(images[:BATCH]))
    parity = max(
        float(np.abs(ref[0] - mine[0].numpy()).max()),  # DS
        float(np.abs(ref[1] - mine[2].numpy()).max()),  # entropy
    )
    if parity > 1e-4:
        raise RuntimeError(f"the eager model differs from the shipped graph: {parity:.2e}")
    for kind in ("votes", "logits"):
        segmenter_graph(kind)

    server = python_cpu_server("peers").start()
    try:
        url = server.url_grpc
        variants = {n: build(n, url, spec.bins, spec.num_classes) for n in VARIANTS}
        for v in variants.values():  # warm-up
            v(images[:BATCH])
            v.post_s = 0.0
        seconds = dict.fromkeys(VARIANTS, 0.0)
        scores: dict[str, list[Scores]] = {n: [] for n in VARIANTS}
        for r, s in enumerate(range(0, frames, BATCH)):
            batch = images[s : s + BATCH]
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]  # rotate
            for name in order:
                start = time.perf_counter()
                scores[name].append(variants[name](batch))
                seconds[name] += time.perf_counter() - start
            if r % 10 == 0:
                print(f"round {r + 1}/{frames // BATCH}", flush=True)
        server_kib = tree_peak_kib(server.pid)
        peaks = {n: peak_of(n, url if n == "triton" else None, frames) for n in VARIANTS}
    finally:
        server.stop()

    joined = {n: {k: np.concatenate([b[k] for b in bs]) for k in bs[0]} for n, bs in scores.items()}
    rate = {n: frames / seconds[n] for n in VARIANTS}
    ours = joined["ours"]
    same = {
        "triton": ("ds", "de", "entropy"),
        "eager": ("ds", "de", "entropy"),
        "logits": ("entropy",),
    }
    agreement = {
        n: ", ".join(f"{k} {spearman(ours[k], joined[n][k]):.4f}" for k in keys)
        for n, keys in same.items()
    }
    mc = spearman(joined["mc-eager"]["vote_entropy"], joined["mc-ort"]["vote_entropy"])
    for n in ("mc-eager", "mc-ort"):
        other = "mc-ort" if n == "mc-eager" else "mc-eager"
        agreement[n] = (
            f"no same score (vote entropy); vs {other} {mc:.4f}, vs our entropy "
            f"{spearman(ours['entropy'], joined[n]['vote_entropy']):.4f}"
        )
    split = f" ({mib(peaks['triton'])} client + {mib(server_kib)} server)"
    rows = []
    for n in VARIANTS:
        peak = peaks[n] + (server_kib if n == "triton" else 0.0)
        post = variants[n].post_s
        rows.append(
            [
                LABELS[n],
                f"{rate[n]:.1f}",
                "1.00x" if n == "ours" else f"{rate['ours'] / rate[n]:.2f}x",
                mib(peak) + (split if n == "triton" else ""),
                f"{100 * post / seconds[n]:.0f}%" if post else "",
                agreement.get(n, ""),
            ]
        )
    ours_bytes, logit_bytes = variants["ours"].moved, variants["logits"].moved
    moved = logit_bytes / ours_bytes
    per_image = {n: 1e3 * seconds[n] / frames for n in VARIANTS}
    logit_post = 1e3 * variants["logits"].post_s / frames
    targets = {
        "ours >= 10x mc-eager": rate["ours"] / rate["mc-eager"] >= 10,
        "ours >= 10x mc-ort": rate["ours"] / rate["mc-ort"] >= 10,
        "ours >= 2x eager": rate["ours"] / rate["eager"] >= 2,
        "logits move >= 1000x our bytes": moved >= 1000,
    }
    notes = [
        f"{frames} held-out street scenes (whole batches of `deal-train synth --n {requested} "
        f"--seed {SEED}`, "
        f"{spec.input_size[0]}x{spec.input_size[1]}), batches of {BATCH}, {THREADS} threads "
        "each (torch and ORT; Triton's server 2 ORT threads), variants alternated batch by batch "
        "in rotating order after one warm-up batch each; images/s = frames / summed seconds",
        "ours ÷ this: how many times our images/s this variant's is; in numpy: the share of its "
        "time spent after the model (scores from the model's output)",
        f"bytes per image out of the model: ours {ours_bytes:,.0f} B (ds, de, entropy, class "
        f"fractions, embedding), logits {logit_bytes:,.0f} B (FP32 {spec.num_classes} x "
        f"{spec.input_size[0]} x {spec.input_size[1]}): {moved:,.0f}x; what it costs: "
        f"{per_image['logits']:.1f} ms per image, of which {logit_post:.1f} ms in numpy on the "
        f"logits, against ours {per_image['ours']:.1f} ms (the logits graph is the segmenter "
        "alone: no difficulty head, no scores, which is what such a user would export)",
        "peak memory: VmHWM of a fresh process that loads the variant and scores "
        f"{PROBE_FRAMES} frames (ORT variants import no torch); Triton adds the server's "
        "processes (VmHWM summed: shared pages counted in each)",
        "eager weights: the shipped graph's initializers back in the PyTorch model "
        f"(`common.shipped_eager`; DS and entropy within {parity:.1e} of the graph on "
        f"{BATCH} frames). MC dropout samples the decoder's three Dropout layers (p 0.5, 0.5, "
        "0.2), batch norm in eval; ORT's graph replaces each with RandomUniformLike >= p "
        "times 1 / (1 - p), a fresh mask every run",
        "Spearman vs ours where the score is the same: eager and logits compute entropy at "
        "full resolution from the upsampled logits, ours on the stride-4 grid; vote entropy "
        "has no counterpart in ours (its two implementations differ by their random masks)",
        *[f"target {k}: {'met' if ok else 'not met'}" for k, ok in targets.items()],
    ]
    table = markdown_table(
        ["variant", "images/s", "ours ÷ this", "peak MiB", "in numpy", "Spearman vs ours"], rows
    )
    write_result("peers", "Peers: our graph vs what users would run instead", table, notes)


if __name__ == "__main__":
    sys.exit(main())
