"""Serving against the real bundled tritonserver, started here on free loopback ports.

One module-scoped server runs the tiny exported model with the python-cpu target; the CLI tests
start (and stop) their own servers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dealseg.core import contract
from dealseg.core.contract import (
    MODEL_NAME,
    OUTPUT_NAMES,
    SPECS,
    ModelSpec,
    check_io,
    full_boxes,
    version_metadata,
    version_parameters,
)
from dealseg.core.modelfile import read_onnx_spec
from dealseg.serving.repository import (
    BACKEND_MODEL_PY,
    TARGETS,
    config_metadata,
    parse_config,
    write_repository,
)
from dealseg.serving.server import (
    SHM_DIR,
    ServerError,
    ServerState,
    TritonServer,
    _cmdline,
    _mapped_shm_regions,
    _port_free,
    _process_alive,
    _stub_processes,
    free_ports,
)

BATCHING = {"max_batch_size": 16, "preferred_batch_sizes": (4, 8, 16), "max_queue_delay_us": 20000}
CLIENTS = {"grpc": grpcclient, "http": httpclient}


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec(tiny_onnx: Path) -> ModelSpec:
    return read_onnx_spec(tiny_onnx)


@pytest.fixture(scope="module")
def images(spec: ModelSpec) -> np.ndarray:
    """Five images [5, H, W, 3]: noise, smooth gradients and a constant one."""
    h, w = spec.input_size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    ramp = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.uint8)
    flat = np.full((h, w, 3), 128, np.uint8)
    return np.concatenate([noise, ramp[None], 255 - ramp[None], flat[None]])


@pytest.fixture(scope="module")
def reference(tiny_onnx: Path, spec: ModelSpec):
    """The same model run in-process by ONNX Runtime: images -> {output name: array}."""
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        arrays = session.run(list(OUTPUT_NAMES), contract.model_inputs(spec, batch))
        return dict(zip(OUTPUT_NAMES, arrays, strict=True))

    return run


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    write_repository(tiny_onnx, repo, "python-cpu", **BATCHING)
    with TritonServer(repo, timeout=90) as srv:
        yield srv


def make_client(server: TritonServer, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.url_grpc)
    return httpclient.InferenceServerClient(server.url_http, concurrency=32)


def infer(
    client: Any, protocol: str, batch: np.ndarray, outputs: tuple[str, ...] = OUTPUT_NAMES
) -> dict[str, np.ndarray]:
    module = CLIENTS[protocol]
    image = module.InferInput(contract.INPUT_NAME, list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    requested = [module.InferRequestedOutput(name) for name in outputs]
    result = client.infer(MODEL_NAME, [image, whole_frames(module, batch)], outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}


def whole_frames(module: Any, batch: np.ndarray) -> Any:
    """The valid_box input of `batch`: every frame is all picture."""
    boxes = module.InferInput(contract.VALID_BOX_NAME, [len(batch), 4], "INT32")
    boxes.set_data_from_numpy(full_boxes(len(batch), batch.shape[1:3]))
    return boxes


def served_io(metadata: dict[str, Any]) -> tuple[dict, dict]:
    """Triton model metadata in `check_io` form; Triton serves the contract's [B] as [B, 1]."""
    wire = {"UINT8": "uint8", "INT32": "int32", "FP32": "float32"}

    def convert(tensors: list[dict[str, Any]]) -> dict[str, tuple[str, tuple[int, ...]]]:
        io = {}
        for t in tensors:
            shape = tuple(int(d) for d in t["shape"])
            if not SPECS[t["name"]].dims and shape[1:] == (1,):
                shape = shape[:1]
            io[t["name"]] = (wire.get(t["datatype"], t["datatype"]), shape)
        return io

    return convert(metadata["inputs"]), convert(metadata["outputs"])


def assert_matches_reference(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Triton's outputs equal embedded ONNX Runtime's within the contract's tolerances."""
    n = len(want["ds"])
    for name, array in got.items():
        assert array.dtype == want[name].dtype, name
        assert array.reshape(n, -1).shape == want[name].reshape(n, -1).shape, name
    checks = {
        "ds": contract.TOL_DS,
        "entropy": contract.TOL_ENTROPY,
        "de": contract.TOL_DS,
        "class_fraction": contract.TOL_CLASS_FRACTION,
    }
    for name, tol in checks.items():
        if name in got:
            np.testing.assert_allclose(
                got[name].reshape(n, -1), want[name].reshape(n, -1), atol=tol, err_msg=name
            )
    if "embedding" in got:
        cosine = np.sum(got["embedding"] * want["embedding"], axis=1) / (
            np.linalg.norm(got["embedding"], axis=1) * np.linalg.norm(want["embedding"], axis=1)
        )
        assert cosine.min() >= contract.MIN_EMBEDDING_COSINE
    if "difficulty" in got:
        assert np.abs(got["difficulty"].astype(int) - want["difficulty"]).max() <= 1
    if "segmentation" in got:
        assert (got["segmentation"] == want["segmentation"]).mean() >= 0.99


# -- repository configs (no server) ------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_written_config_matches_the_contract(
    target: str, tiny_onnx: Path, spec: ModelSpec, tmp_path: Path
) -> None:
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"not really an engine")
    model_dir = write_repository(
        tiny_onnx,
        tmp_path / "repo",
        target,
        **BATCHING,
        instances=2,
        trt_accelerator=target == "onnxruntime",
        plan=plan if target == "tensorrt" else None,
    )
    config = parse_config(model_dir / "config.pbtxt")

    assert config["name"] == MODEL_NAME
    assert config["max_batch_size"] == BATCHING["max_batch_size"]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == list(BATCHING["preferred_batch_sizes"])
    assert int(batching["max_queue_delay_microseconds"]) == BATCHING["max_queue_delay_us"]
    (group,) = config["instance_group"]
    assert group["count"] == 2
    assert group["kind"] == ("KIND_CPU" if target == "python-cpu" else "KIND_GPU")
    assert ModelSpec.from_metadata(version_metadata(config_metadata(config), "1")) == spec
    assert config_metadata(config) | version_parameters(spec, "1") == config_metadata(config)
    assert "all" in config["version_policy"]

    declared = {t["name"]: t for t in config["input"] + config["output"]}
    assert sorted(declared) == sorted(SPECS)
    for name, tensor in declared.items():
        dims = tuple(int(d) for d in tensor["dims"])
        assert dims == (spec.shape(name) or (1,)), name  # batch implicit; [B] served as [B, 1]
        assert tensor["data_type"] == SPECS[name].triton_dtype
        assert ("reshape" in tensor) == (not spec.shape(name))

    files = sorted(p.name for p in (model_dir / "1").iterdir())
    if target == "python-cpu":
        assert config["backend"] == "python" and files == ["model.onnx", "model.py"]
        assert int(config_metadata(config)["intra_op_thread_count"]) == 0
    elif target == "onnxruntime":
        assert config["platform"] == "onnxruntime_onnx" and files == ["model.onnx"]
        (accelerator,) = config["optimization"]["execution_accelerators"][
            "gpu_execution_accelerator"
        ]
        assert accelerator["name"] == "tensorrt"
        assert accelerator["parameters"]["precision_mode"] == "FP16"
    else:
        assert config["platform"] == "tensorrt_plan" and "model.plan" in files


def test_write_repository_rejects_a_model_outside_the_contract(tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"garbage")
    with pytest.raises(contract.ContractError, match="not a loadable ONNX model"):
        write_repository(garbage, tmp_path / "repo")


# -- the running server ------------------------------------------------------------------------
@pytest.mark.triton
def test_server_ready_and_served_model_equals_the_contract(
    server: TritonServer, spec: ModelSpec
) -> None:
    client = httpclient.InferenceServerClient(server.url_http)
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
        metadata = client.get_model_metadata(MODEL_NAME)
        config = client.get_model_config(MODEL_NAME)
    finally:
        client.close()

    check_io(spec, *served_io(metadata))  # raises ContractError listing any difference
    assert ModelSpec.from_metadata(version_metadata(config_metadata(config), "1")) == spec
    assert config["max_batch_size"] == BATCHING["max_batch_size"]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inference_equals_embedded_onnxruntime(
    server: TritonServer, protocol: str, images: np.ndarray, reference
) -> None:
    client = make_client(server, protocol)
    try:
        batch = infer(client, protocol, images)
        single = infer(client, protocol, images[2:3], ("ds", "embedding"))
    finally:
        client.close()

    assert_matches_reference(batch, reference(images))
    assert sorted(single) == ["ds", "embedding"]
    assert_matches_reference(single, reference(images[2:3]))


# The backend model behind a gate: `execute` records how many requests it was given, then waits
# until the gate file exists. Tests see the server's queue fill while one execution is held.
GATED_MODEL_PY = """
import importlib.util, os, time
_spec = importlib.util.spec_from_file_location("deal_backend", {backend!r})
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)

class TritonPythonModel(_real.TritonPythonModel):
    def execute(self, requests):
        with open({log!r}, "a") as f:
            f.write(f"{{len(requests)}}\\n")
        while not os.path.exists({gate!r}):
            time.sleep(0.01)
        return super().execute(requests)
"""


def metric(server: TritonServer, name: str) -> float:
    """A `deal` model metric from the server's Prometheus endpoint (0 if absent)."""
    import urllib.request

    with urllib.request.urlopen(server.state.url_metrics, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{model="{MODEL_NAME}",version="1"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.triton
def test_dynamic_batching_batches_concurrent_requests(
    tiny_onnx: Path, images: np.ndarray, reference, tmp_path: Path
) -> None:
    repo, gate, log = tmp_path / "repo", tmp_path / "gate", tmp_path / "executions"
    model_dir = write_repository(tiny_onnx, repo, "python-cpu", **BATCHING)
    backend = model_dir / "1" / "model.py"
    text = GATED_MODEL_PY.format(backend=str(BACKEND_MODEL_PY), log=str(log), gate=str(gate))
    backend.write_text(text)
    picks = [i % len(images) for i in range(32)]
    with TritonServer(repo, timeout=90) as server:
        client = make_client(server, "grpc")
        try:
            with ThreadPoolExecutor(32) as pool:
                sent = [
                    pool.submit(infer, client, "grpc", images[i : i + 1], ("ds",)) for i in picks
                ]
                # one execution is held at the gate; wait until the other requests are queued
                deadline = time.monotonic() + 120  # a failure guard, not a timing
                while not log.exists() or metric(
                    server, "nv_inference_pending_request_count"
                ) < 32 - int(log.read_text().split()[0]):
                    assert time.monotonic() < deadline, "the requests never queued up"
                    time.sleep(0.05)
                gate.touch()
                results = [f.result() for f in sent]
        finally:
            client.close()
    executions = [int(n) for n in log.read_text().split()]
    assert sum(executions) == 32
    assert len(executions) < 32 and max(executions) > 1  # the dynamic batcher merged requests
    assert len(executions) <= 1 + 31 // 4 + 3  # queued requests go in batches of 4, 8 or 16
    expected = reference(images)["ds"]
    got = np.array([r["ds"].item() for r in results])
    np.testing.assert_allclose(got, expected[picks], atol=contract.TOL_DS)  # split back right


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_malformed_requests_get_errors_and_the_server_keeps_serving(
    server: TritonServer, protocol: str, images: np.ndarray, reference
) -> None:
    module = CLIENTS[protocol]
    h, w = images.shape[1:3]
    wrong_dtype = module.InferInput(contract.INPUT_NAME, [1, h, w, 3], "FP32")
    wrong_dtype.set_data_from_numpy(images[:1].astype(np.float32))
    wrong_shape = module.InferInput(contract.INPUT_NAME, [1, h // 2, w, 3], "UINT8")
    wrong_shape.set_data_from_numpy(images[:1, : h // 2])
    client = make_client(server, protocol)
    try:
        box = whole_frames(module, images[:1])
        for inputs, message in [
            ([wrong_dtype, box], "data-type is 'FP32'"),
            ([wrong_shape, box], "unexpected shape"),
            ([], "missing required input(s) ['image'"),
        ]:
            with pytest.raises(InferenceServerException, match=re.escape(message)):
                client.infer(MODEL_NAME, inputs)
            good = infer(client, protocol, images[:1], ("ds",))
            assert_matches_reference(good, reference(images[:1]))
    finally:
        client.close()


# -- the CLI: start, status, stop, and failures ------------------------------------------------
def deal_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dealseg.serving.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def our_processes(marker: str) -> list[int]:
    """Live tritonserver/stub processes whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        args = _cmdline(entry.name) if entry.name.isdigit() else []
        if (
            args
            and any(marker in a for a in args)
            and (args[0].endswith("tritonserver") or args[0].endswith("triton_python_backend_stub"))
        ):
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.append(int(entry.name))
    return found


@pytest.mark.triton
def test_cli_background_start_status_stop_leaves_nothing_behind(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    repo = tmp_path.resolve() / "repo"
    write_repository(tiny_onnx, repo, "python-cpu", **BATCHING)
    state_file = tmp_path / "serve.json"
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    common = ["--state-file", str(state_file)]

    started = deal_serve(
        "start", "--model-repository", str(repo), *ports, *common, "--background", "--timeout", "90"
    )
    assert started.returncode == 0, started.stderr + started.stdout
    assert "Triton ready" in started.stdout
    try:
        status = deal_serve("status", *common)
        report = json.loads(status.stdout)
        assert status.returncode == 0 and report["ready"] and report["model_ready"]
        assert report["http"].startswith("127.0.0.1:") and report["grpc"].startswith("127.0.0.1:")
        state = json.loads(state_file.read_text())
        stubs = _stub_processes(ServerState(**state))
        regions = {r for r in stubs.values() if r}
        assert stubs and regions and all((SHM_DIR / r).exists() for r in regions)
        assert our_processes(str(repo))
    finally:
        stopped = deal_serve("stop", *common)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped pid" in stopped.stdout

    assert our_processes(str(repo)) == []
    assert not any((SHM_DIR / r).exists() for r in regions)
    assert not Path(state["workdir"]).exists() and not state_file.exists()
    after = deal_serve("status", *common)
    assert after.returncode == 1 and json.loads(after.stdout)["running"] is False


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", ""])
def test_port_checks_see_a_loopback_listener_from_any_host_form(host: str) -> None:
    """A wildcard bind clashes with a listener on 127.0.0.1: the check must too."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not _port_free(host, held.getsockname()[1])
    ports = free_ports(host, 3)
    assert len(set(ports)) == 3 and all(_port_free(host, port) for port in ports)


def time_wait_on(port: int) -> bool:
    """Whether a TCP socket on 127.0.0.1:`port` is in TIME_WAIT (state 06 of /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == local and r.split()[3] == "06" for r in rows)


def test_a_port_whose_old_connections_linger_in_time_wait_is_free() -> None:
    """What a stopped or crashed server leaves: its side of a connection it closed first
    (tritonserver's listeners, like this one, set SO_REUSEADDR)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: it goes to TIME_WAIT
        client.recv(1)
        client.close()
    assert time_wait_on(port)
    assert _port_free("127.0.0.1", port) and _port_free("0.0.0.0", port)
    with socket.socket() as held:  # a listener still holds its port
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", port))
        held.listen()
        assert not _port_free("127.0.0.1", port)
        with pytest.raises(ServerError, match=f"http port {port} on 127.0.0.1 is in use"):
            TritonServer(Path("."), http_port=port)._pick_ports()


def test_stop_removes_only_a_workdir_deal_serve_created(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    state = ServerState(int(dead), "127.0.0.1", 1, 2, 3, str(tmp_path), "", str(victim))
    state_file = tmp_path / "serve.json"
    state.save(state_file)
    result = deal_serve("stop", "--state-file", str(state_file))
    assert result.returncode == 0, result.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert "is not a folder deal-serve created; left as it is" in result.stdout
    # one that looks like ours but lacks our marker with the server's id is kept too
    fake = Path(tempfile.mkdtemp(prefix="dealseg-triton-"))
    try:
        (fake / ".dealseg-triton").write_text("another-id")
        ServerState(
            int(dead), "127.0.0.1", 1, 2, 3, str(tmp_path), "", str(fake), server_id="this-id"
        ).save(state_file)
        assert deal_serve("stop", "--state-file", str(state_file)).returncode == 0
        assert fake.exists()
    finally:
        shutil.rmtree(fake)


@pytest.mark.triton
def test_start_refuses_model_files_that_do_not_match_the_config(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    config = write_repository(tiny_onnx, repo, "python-cpu") / "config.pbtxt"
    h, w = read_onnx_spec(tiny_onnx).input_size
    text = config.read_text()
    # the config (dims and metadata alike) says one size, model.onnx takes another
    text = text.replace(f"dims: {h}\n  dims: {w}\n", f"dims: {h}\n  dims: {w + 8}\n")
    config.write_text(text.replace(f'"{h}x{w}"', f'"{h}x{w + 8}"'))
    with pytest.raises(ServerError, match="do not match its config.pbtxt") as caught:
        TritonServer(repo).start()
    assert f"image: config.pbtxt says uint8 [B, {h}, {w + 8}, 3]" in str(caught.value)
    assert f"has uint8 [B, {h}, {w}, 3]" in str(caught.value)
    assert our_processes(str(repo.resolve())) == []


@pytest.mark.triton
def test_start_cleans_up_after_a_killed_server_and_status_says_what_it_left(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    repo = tmp_path.resolve() / "repo"
    write_repository(tiny_onnx, repo, "python-cpu")
    common = ["--state-file", str(tmp_path / "serve.json")]
    start = [
        "start",
        "--model-repository",
        str(repo),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--background",
        "--timeout",
        "90",
        *common,
    ]
    assert deal_serve(*start).returncode == 0
    old = ServerState.load(tmp_path / "serve.json")
    stubs = _stub_processes(old)
    regions = {r for r in stubs.values() if r}
    assert regions and all((SHM_DIR / r).stat().st_mode & 0o077 == 0 for r in regions)
    os.kill(old.pid, signal.SIGKILL)  # the stub and its shared memory stay behind
    status = deal_serve("status", *common)
    report = json.loads(status.stdout)
    assert status.returncode == 1 and report["alive"] is False
    assert report["leftovers"]["stubs"] == sorted(stubs)
    assert report["leftovers"]["shm_regions"] == sorted(regions)
    restarted = deal_serve(*start)
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert "cleaned up after a server that is no longer running" in restarted.stderr
        assert not any(_process_alive(pid) for pid in stubs)
        assert not any((SHM_DIR / r).exists() for r in regions)
        assert not Path(old.workdir).exists()
    finally:
        assert deal_serve("stop", *common).returncode == 0
    assert our_processes(str(repo)) == []


@pytest.mark.triton
def test_start_names_the_stop_command_of_its_state_file(tiny_onnx: Path, tmp_path: Path) -> None:
    """`start --state-file X` once said "stop with `deal-serve stop`", which reads another file."""
    repo = tmp_path.resolve() / "repo"
    write_repository(tiny_onnx, repo, "python-cpu")
    state_file = tmp_path / "my state.json"
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    started = deal_serve(
        "start",
        "--model-repository",
        str(repo),
        *ports,
        "--background",
        "--state-file",
        str(state_file),
        "--timeout",
        "90",
    )
    try:
        assert started.returncode == 0, started.stderr
        said = re.search(r"\(stop with `deal-serve (stop[^`]*)`\)", started.stdout)
        assert said is not None, started.stdout
        assert said.group(1) == f"stop --state-file {shlex.quote(str(state_file))}"
        stopped = deal_serve(*shlex.split(said.group(1)))  # the command as printed
        assert stopped.returncode == 0, stopped.stderr
        assert not state_file.exists() and our_processes(str(repo)) == []
    finally:
        deal_serve("stop", "--state-file", str(state_file))


def test_a_repository_that_is_a_symlink_loop_is_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "repo"
    os.symlink(loop, loop)
    args = ["start", "--model-repository", str(loop), "--state-file", str(tmp_path / "s.json")]
    result = deal_serve(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: model repository {loop} cannot be resolved" in result.stderr
    with pytest.raises(ServerError, match="cannot be resolved"):
        TritonServer(loop)


@pytest.mark.parametrize("host", ["::", "::1", "localhost"])
def test_hosts_triton_cannot_bind_are_refused_before_launch(host: str, tmp_path: Path) -> None:
    """tritonserver 2.51 binds HTTP and metrics on 255.255.255.255 for these: refuse them."""
    with pytest.raises(ServerError, match="IPv4 only"):
        TritonServer(tmp_path, host=host).start()
    result = deal_serve(
        "start",
        "--model-repository",
        str(tmp_path),
        "--host",
        host,
        "--state-file",
        str(tmp_path / "serve.json"),
    )
    assert result.returncode == 1 and "is not an IPv4 address" in result.stderr
    assert not (tmp_path / "serve.json").exists()


@pytest.mark.triton
def test_stop_after_the_server_was_killed_still_cleans_up(tiny_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path.resolve() / "repo"
    write_repository(tiny_onnx, repo, "python-cpu")
    server = TritonServer(repo, timeout=90).start()
    try:
        state = server.state
        regions = {r for r in _stub_processes(state).values() if r}
        assert regions
        os.kill(server.pid, signal.SIGKILL)  # its Python-backend stub is left behind
    finally:
        server.stop()
    assert our_processes(str(repo)) == []
    assert not any((SHM_DIR / r).exists() for r in regions)
    assert not Path(state.workdir).exists()


@pytest.mark.triton
def test_stop_leaves_another_servers_new_region_alone(tiny_onnx: Path, tmp_path: Path) -> None:
    """stop once removed every region new since our start that no process mapped at that
    moment: another server's region, created but not yet mapped, went with ours."""
    repo = tmp_path.resolve() / "repo"
    write_repository(tiny_onnx, repo, "python-cpu")
    server = TritonServer(repo, timeout=90).start()
    foreign = SHM_DIR / f"triton_python_backend_shm_region_{secrets.token_hex(8)}"
    try:
        ours = set(server.state.shm_regions)
        assert ours and ours == {r for r in _stub_processes(server.state).values() if r}
        foreign.write_bytes(bytes(64))  # another server's, brand new: mapped by no one yet
    finally:
        server.stop()
    try:
        assert foreign.exists()
        assert not any((SHM_DIR / r).exists() for r in ours)
    finally:
        foreign.unlink(missing_ok=True)


@pytest.mark.triton
def test_start_with_a_broken_model_fails_naming_the_model(tiny_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path.resolve() / "broken"
    model_dir = write_repository(tiny_onnx, repo, "python-cpu")
    (model_dir / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    regions_before = {p.name for p in SHM_DIR.glob("triton_python_backend_shm_region_*")}

    result = deal_serve(
        "start",
        "--model-repository",
        str(repo),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--state-file",
        str(tmp_path / "serve.json"),
        "--timeout",
        "90",
    )

    assert result.returncode == 1
    assert "model 'deal' failed to load" in result.stderr
    assert "last lines of" in result.stderr  # the server log's tail
    assert our_processes(str(repo)) == []
    regions_after = {p.name for p in SHM_DIR.glob("triton_python_backend_shm_region_*")}
    assert regions_after - regions_before <= _mapped_shm_regions()  # only other servers' regions


def test_cli_docker_prints_the_ngc_command(tmp_path: Path, tiny_onnx: Path) -> None:
    write_repository(tiny_onnx, tmp_path, "onnxruntime")
    result = deal_serve("start", "--model-repository", str(tmp_path), "--docker")
    assert result.returncode == 0
    assert result.stdout.startswith("docker run --gpus all --rm -p8000:8000 -p8001:8001")
    assert f"-v {tmp_path.resolve()}:/models nvcr.io/nvidia/tritonserver:" in result.stdout
    assert "tritonserver --model-repository=/models" in result.stdout


@pytest.mark.gpu
@pytest.mark.triton
def test_python_backend_runs_on_cuda_when_present(tiny_onnx: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    write_repository(tiny_onnx, tmp_path, "python-cpu", instance_kind="gpu")
    log = tmp_path / "triton.log"
    with TritonServer(tmp_path, log_path=log, timeout=120):
        assert "serving model.onnx with CUDAExecutionProvider" in log.read_text()


COMMITTED = Path(__file__).resolve().parents[1] / "model_repository" / MODEL_NAME


@pytest.mark.skipif(
    not (COMMITTED / "config.pbtxt").is_file(), reason="no committed model_repository/deal yet"
)
def test_committed_repository_matches_its_model_and_the_backend() -> None:
    config = parse_config(COMMITTED / "config.pbtxt")
    spec = read_onnx_spec(COMMITTED / "1" / "model.onnx")
    assert config["backend"] == "python"
    assert ModelSpec.from_metadata(version_metadata(config_metadata(config), "1")) == spec
    for tensor in config["input"] + config["output"]:
        assert tuple(int(d) for d in tensor["dims"]) == (spec.shape(tensor["name"]) or (1,))
    assert (COMMITTED / "1" / "model.py").read_text() == BACKEND_MODEL_PY.read_text()
