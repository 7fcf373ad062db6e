"""PAM: peak memory and time of the blocked (exported) vs the naive N x N attention, per image.

    .venv/bin/python bench/pam.py [--quick]

The probability attention module on an 11-class softmax P [1, 11, N] at N = 60x80 = 4800 (the
paper's CamVid grid) and 86x86 = 7396 (Cityscapes). Each case runs in a fresh Python process: its
peak RSS (VmHWM, reset just before the first call with /proc/self/clear_refs) minus its RSS at
that point is the memory the computation needed, whatever allocated it (torch's allocator, ONNX
Runtime's arena). In torch: `pam_naive`, `pam_blocked` (512 query rows per block, what the graph
exports; with glibc's default and with a fixed mmap threshold), `pam_sdpa` (training) and the
same attention on a 3-D tensor. In ONNX Runtime: two small graphs exported from
`pam_naive` and `pam_blocked` alone. Issue 3's acceptance: in ORT, blocked peaks at <= 1/10 of
naive at 86x86.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

from common import CACHE, markdown_table, mib, run_probe, write_result

GRIDS = {"60x80": 4800, "86x86": 7396}
CLASSES = 11
BLOCK = 512
THREADS = 2

TORCH_PROBE = """
import json, time, torch
import torch.nn.functional as F
from dealseg.training.model import pam_blocked, pam_naive, pam_sdpa

def sdpa_3d(p):
    q = p.transpose(1, 2).contiguous()  # [B, N, C]: torch's CPU kernel takes the math path
    return F.scaled_dot_product_attention(q, q, q, scale=1.0).transpose(1, 2)

torch.set_num_threads({threads})
fn = {{"naive": pam_naive, "blocked": lambda p: pam_blocked(p, {block}), "sdpa": pam_sdpa,
       "sdpa_3d": sdpa_3d}}["{impl}"]
g = torch.Generator().manual_seed(0)
p = torch.softmax(torch.randn(1, {classes}, {n}, generator=g), dim=1)
times = []
with torch.inference_mode():
    base = reset_peak()
    for _ in range({reps} + 1):
        start = time.perf_counter()
        fn(p)
        times.append(time.perf_counter() - start)
    peak = peak_kib()
print(json.dumps({{"delta_kib": peak - base, "times": times[1:]}}))
"""

ORT_PROBE = """
import json, time
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
session = ort.InferenceSession("{path}", options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, {classes}, {n})).astype(np.float32)
p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
times = []
base = reset_peak()
for _ in range({reps} + 1):
    start = time.perf_counter()
    session.run(None, {{"p": p}})
    times.append(time.perf_counter() - start)
peak = peak_kib()
print(json.dumps({{"delta_kib": peak - base, "times": times[1:]}}))
"""


def export_pam(impl: str, n: int) -> Path:
    """A graph computing only the PAM of P [1, 11, n] with `impl` (cached)."""
    import torch

    from dealseg.training.model import pam_blocked, pam_naive

    path = CACHE / "pam" / f"pam_{impl}_{n}.onnx"
    if path.exists():
        return path

    class PAM(torch.nn.Module):
        def forward(self, p: torch.Tensor) -> torch.Tensor:
            return pam_naive(p) if impl == "naive" else pam_blocked(p, BLOCK)

    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PAM(),
            (torch.rand(1, CLASSES, n),),
            str(path),
            input_names=["p"],
            output_names=["q"],
            opset_version=18,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


# (runtime, impl, label, extra environment); glibc's default mmap threshold grows with the
# largest freed block, so torch's per-block buffers end up on the heap and RSS keeps growing;
# a fixed threshold gives each block buffer back to the OS when it is freed.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
CASES: list[tuple[str, str, str, dict[str, str]]] = [
    ("torch", "naive", "naive", {}),
    ("torch", "blocked", f"blocked ({BLOCK})", {}),
    ("torch", "blocked", f"blocked ({BLOCK}), MALLOC_MMAP_THRESHOLD_=1048576", FIXED_MMAP),
    ("torch", "sdpa", "pam_sdpa (training: fused attention on [B, 1, N, C])", {}),
    ("torch", "sdpa_3d", "the same attention on a 3-D [B, N, C] tensor", {}),
    ("onnxruntime", "naive", "naive", {}),
    ("onnxruntime", "blocked", f"blocked ({BLOCK}), as exported", {}),
]


def measure(runtime: str, impl: str, n: int, reps: int, env: dict[str, str]) -> dict:
    """{'delta_kib', 'times'} of one case in a fresh process."""
    fields = {
        "threads": THREADS,
        "classes": CLASSES,
        "n": n,
        "reps": reps,
        "impl": impl,
        "block": BLOCK,
    }
    if runtime == "torch":
        return json.loads(run_probe(TORCH_PROBE.format(**fields), env=env))
    return json.loads(run_probe(ORT_PROBE.format(path=export_pam(impl, n), **fields)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed calls per case")
    args = parser.parse_args()
    reps = 2 if args.quick else 10
    results: dict[tuple[str, str, str], dict] = {}
    for grid, n in GRIDS.items():
        for runtime, impl, label, env in CASES:
            results[label, runtime, grid] = measure(runtime, impl, n, reps, env)
    rows = []
    for runtime, _, label, _ in CASES:
        row = [runtime, label]
        for grid in GRIDS:
            r, naive = results[label, runtime, grid], results["naive", runtime, grid]
            row += [
                mib(r["delta_kib"]),
                f"{1000 * sorted(r['times'])[len(r['times']) // 2]:.1f}",
                f"{r['delta_kib'] / naive['delta_kib']:.3f}",
            ]
        rows.append(row)
    headers = ["runtime", "PAM"]
    for grid, n in GRIDS.items():
        headers += [f"{grid} (N={n}) peak MiB", "ms", "peak / naive"]
    ratio = (
        results[CASES[-1][2], "onnxruntime", "86x86"]["delta_kib"]
        / results["naive", "onnxruntime", "86x86"]["delta_kib"]
    )
    nn_mib = 7396 * 7396 * 4 / 2**20
    notes = [
        f"one image, P = softmax of [1, {CLASSES}, N] fp32, {THREADS} threads; peak = VmHWM - "
        f"VmRSS in a fresh process per case (first call included); ms = median of {reps} calls",
        f"one N x N fp32 matrix is {4800**2 * 4 / 2**20:.0f} MiB at 60x80 and {nn_mib:.0f} MiB at "
        "86x86; the blocked form holds a 512 x N block (and its softmax) at a time",
        "torch's CPU scaled_dot_product_attention runs its fused kernel (a few MiB) only on a "
        "4-D input, as training's `pam_sdpa` now passes it; on a 3-D tensor it silently takes "
        "the N x N math path (last torch row)",
        f"issue 3 acceptance, ORT blocked <= 1/10 of naive at 86x86: "
        f"{'met' if ratio <= 0.1 else 'not met'} (ratio {ratio:.3f}, 1/{1 / ratio:.0f})",
    ]
    write_result(
        "pam",
        "PAM: blocked vs naive attention, peak memory and time",
        markdown_table(headers, rows),
        notes,
    )


if __name__ == "__main__":
    main()
