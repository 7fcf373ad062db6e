"""Shared helpers of the benchmarks: the machine, A/B timing, peak RSS, markdown result files.

Every benchmark prints one short markdown table and writes it, with the date, the machine and the
exact command, to `bench/results/<name>.md`. Ratios are measured side by side in one run: the
cases are timed in alternation (A B A B ...), so a background load slows all of them alike.
Generated inputs (JPEGs, exported test graphs) go to /tmp/dealseg-bench, never into the checkout.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("DEALSEG_BENCH_CACHE", "/tmp/dealseg-bench"))
SHIPPED_MODEL = ROOT / "model_repository" / "deal" / "1" / "model.onnx"
CHECKPOINT = ROOT / "runs" / "full" / "best.pt"
PYTHON = sys.executable


def cpu_model() -> str:
    """`lscpu`'s model name (falls back to /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.M)
        family = re.search(r"^CPU family:\s*(\d+)$", out, re.M)
        model = re.search(r"^Model:\s*(\d+)$", out, re.M)
        if match:
            name = match.group(1).strip()
            if family and model:
                name += f" (family {family.group(1)}, model {model.group(1)})"
            return name
    except (OSError, subprocess.CalledProcessError):
        pass
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"


def cpu_features() -> str:
    """The SIMD features that decide which kernels ONNX Runtime and oneDNN can use."""
    flags = set()
    match = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    if match:
        flags = set(match.group(1).split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "no AVX2"


def machine() -> str:
    """One line: CPU model, cores, SIMD features, runtime versions."""
    import numpy as np
    import onnxruntime as ort

    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({cpu_features()}), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}, numpy {np.__version__}"
    )


def load_note() -> str:
    """Load average at the start: a busy machine slows every case of a run alike."""
    one, five, _ = os.getloadavg()
    return f"load average at start {one:.2f} (1 min), {five:.2f} (5 min)"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(
    name: str, title: str, body: str, notes: Sequence[str] = (), result: str | None = None
) -> Path:
    """Print `body` (+ notes) and write bench/results/<result or name>.md with date, machine and
    the command (bench/<name>.py)."""
    command = " ".join([".venv/bin/python", f"bench/{name}.py", *map(shlex.quote, sys.argv[1:])])
    text = (
        "\n".join(
            [
                f"# {title}",
                "",
                f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
                f"- machine: {machine()}",
                f"- {load_note()}",
                f"- command: `{command}`",
                "",
                body,
                "",
                *[f"- {n}" for n in notes],
            ]
        ).rstrip()
        + "\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result or name}.md"
    path.write_text(text)
    print(body)
    for note in notes:
        print(f"- {note}")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def alternate(
    cases: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each case, the cases run in turn (A B C A B C ...) `reps` times."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def feeds(session: Any, images: Any) -> dict[str, Any]:
    """The input tensors of `images` for a DEAL model session (with whole-frame valid boxes for
    a contract 2 model); build them outside timed code."""
    from dealseg.core.contract import model_inputs, session_spec

    return model_inputs(session_spec(session), images)


def ort_session(
    path: Path | str, threads: int = 2, spin: bool = False, profile_prefix: Path | None = None
) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads (all optimisations on),
    profiling into `profile_prefix`* when given (read with `profile_events`).

    Spinning is off by default: ORT's idle worker threads otherwise busy-wait after each run,
    and when two engines are timed in alternation in one process they steal each other's cores
    (measured here: both engines 20-45% slower than alone).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile_prefix is not None:
        profile_prefix.parent.mkdir(parents=True, exist_ok=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_events(session: Any) -> list[dict[str, Any]]:
    """End a profiling session and return its trace's events (the trace file is removed).

    Kernels are the events of category "Node" whose name ends in "_kernel_time"."""
    import json

    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    return events


# ------------------------------------------------------------------------------ memory
def status_kib(pid: int | str, key: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM, ...); OSError when the process is gone."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(key + r":\s+(\d+) kB", text)
    if found is None:
        raise OSError(f"/proc/{pid}/status has no {key}")
    return int(found.group(1))


def process_tree(root: int) -> list[int]:
    """`root` and the processes descended from it that are alive now (Linux /proc)."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return tree


RSS_PROBE = r'''
import re

def _status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))

def reset_peak():
    """Start a fresh peak: VmHWM := VmRSS (Linux >= 4.0, clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")

def peak_kib():
    return _status("VmHWM")
'''


def run_probe(code: str, timeout: float = 600.0, env: dict[str, str] | None = None) -> str:
    """Run `code` (which can call reset_peak() / peak_kib()) in a fresh Python; its stdout."""
    done = subprocess.run(
        [PYTHON, "-c", RSS_PROBE + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def python_cpu_server(name: str) -> Any:
    """A TritonServer (not started) on free loopback ports for a fresh python-cpu repository of
    the shipped model under CACHE/`name`/repo."""
    import shutil

    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    repo = CACHE / name / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    write_repository(SHIPPED_MODEL, repo, "python-cpu", intra_op_threads=2)
    return TritonServer(repo, host="127.0.0.1")


# ------------------------------------------------------------------------------ eager model
def shipped_eager(path: Path = SHIPPED_MODEL, size: tuple[int, int] | None = None) -> Any:
    """The model of an exported graph back in PyTorch (`export.reexport.eager_from_graph`): a
    DEALNet (eval mode) with its weights; `size` overrides the input size. Callers check parity
    against the graph."""
    from dealseg.export.reexport import ReexportError, eager_from_graph

    try:
        return eager_from_graph(path, size)
    except ReexportError as exc:
        raise SystemExit(str(exc)) from None


def profile_ops(model: Path | str, images: Any, runs: int, threads: int = 2) -> dict[str, float]:
    """ORT's own profiler over `runs` runs of `images` after a warm-up: kernel op type (Conv,
    QLinearConv, Softmax, ...) -> seconds per image. Convolutions are split by kind:
    "Conv (depthwise)", "QLinearConv (1x1)", "Conv (kxk)", from their weight's shape."""
    session = ort_session(model, threads, spin=True, profile_prefix=CACHE / "profile" / "ops")
    feed = feeds(session, images)
    for _ in range(runs + 1):
        session.run(None, feed)
    events = profile_events(session)
    first = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1]
    weights = conv_weights(model)
    ops: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            op = _conv_kind(e["args"], e["name"], weights)
            ops[op] = ops.get(op, 0.0) + e["dur"] * 1e-6 / (runs * len(images))
    return ops


def conv_weights(model: Path | str) -> dict[str, list[int]]:
    """Conv node name -> its weight's dims [Cout, Cin/groups, kh, kw], through a
    DequantizeLinear in a QDQ model."""
    import onnx

    graph = onnx.load(str(model)).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    dims.update(
        {
            n.output[0]: dims.get(n.input[0], [])
            for n in graph.node
            if n.op_type == "DequantizeLinear"
        }
    )
    return {n.name: dims.get(n.input[1], []) for n in graph.node if n.op_type == "Conv"}


def _conv_kind(args: dict[str, Any], event: str, weights: dict[str, list[int]]) -> str:
    """A profiled kernel's op type, with the kind of convolution for Conv-like kernels: the
    weight's shape from the kernel's inputs (FP32) or from the graph's node of that name (a
    QLinearConv's weights are prepacked; its kernel is named `<Conv node>_token_<n>`)."""
    op = args["op_name"]
    if "Conv" not in op:
        return op
    shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    weight = next((s for s in shapes[1:] if len(s) == 4), None)  # [Cout, Cin/groups, kh, kw]
    if weight is None:
        weight = weights.get(re.sub(r"(_token_\d+)?_kernel_time$", "", event))
    if not weight or len(weight) != 4:
        return op
    if weight[1] == 1 and weight[0] > 1:
        return f"{op} (depthwise)"
    return f"{op} ({'1x1' if weight[2] * weight[3] == 1 else 'kxk'})"
