"""`deal-client` through the real bundled Triton server, against the embedded engine.

Uses only the serving package's public API: `write_repository` and the `TritonServer` context
manager (`url_grpc`, `url_http`, `pid`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    K,
    assert_same_selection,
    deal_client,
    embeddings,
    records,
    selection,
    start_gated,
    wait_for_records,
    write_pool,
)

from dealseg.core.contract import MIN_EMBEDDING_COSINE, TOL_DS, TOL_ENTROPY, ModelSpec

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def repo(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dealseg.serving.repository import write_repository

    repo = tmp_path_factory.mktemp("repo")
    write_repository(tiny_onnx, repo, target="python-cpu")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path):
    from dealseg.serving.server import TritonServer

    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool"), 20, seed=3)


@pytest.fixture(scope="module")
def embedded(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embedded")
    assert deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", out).exit_code == 0
    return out


def embeddings_by_path(out: Path) -> dict[str, np.ndarray]:
    emb = embeddings(out)
    return {r["path"]: emb[r["row"]] for r in records(out) if r["status"] == "ok"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_gives_the_embedded_selection(
    protocol: str, server, pool: Path, embedded: Path, tmp_path: Path
) -> None:
    url = server.url_grpc if protocol == "grpc" else server.url_http
    out = tmp_path / "out"
    result = deal_client(
        "score",
        pool,
        "-k",
        K,
        "--url",
        url,
        "--url",
        url,
        "--protocol",
        protocol,
        "--out",
        out,
        "--batch-size",
        3,
        "--concurrency",
        3,
        "--header",
        "x-request-source=test",
        "--maps",
    )
    assert result.exit_code == 0, result.stderr
    assert_same_selection(selection(out), selection(embedded))
    ours, theirs = {r["path"]: r for r in records(out)}, {r["path"]: r for r in records(embedded)}
    assert ours.keys() == theirs.keys()
    for path, r in ours.items():
        assert r["ds"] == pytest.approx(theirs[path]["ds"], abs=TOL_DS)
        assert r["entropy"] == pytest.approx(theirs[path]["entropy"], abs=TOL_ENTROPY)
    a, b = embeddings_by_path(out), embeddings_by_path(embedded)
    assert min(float(a[p] @ b[p]) for p in a) >= MIN_EMBEDDING_COSINE
    assert len(list((out / "maps").glob("*_??????????.png"))) == K  # the panels (and raw layers)


def test_health_reports_ready_and_the_model(server, embedded: Path) -> None:
    result = deal_client("health", "--url", server.url_http, "--protocol", "http")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    spec = ModelSpec.from_metadata(json.loads((embedded / "meta.json").read_text())["metadata"])
    assert doc["ready"] and doc["model"] == spec.model_id
    assert doc["input_size"] == list(spec.input_size)


def test_unreachable_server_fails_after_its_retries_with_one_message(
    pool: Path, tmp_path: Path
) -> None:
    result = deal_client(
        "score",
        pool,
        "-k",
        1,
        "--url",
        f"127.0.0.1:{free_port()}",
        "--timeout",
        2,
        "--retries",
        1,
        "--out",
        tmp_path,
    )
    assert result.exit_code == 1
    assert "readiness check failed after 2 attempts" in result.stderr
    assert not (tmp_path / "scores.jsonl").exists()


@pytest.mark.slow
def test_a_served_model_off_the_contract_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    config = write_repository(tiny_onnx, tmp_path / "repo") / "config.pbtxt"
    text = config.read_text()
    h, w = read_onnx_spec(tiny_onnx).input_size
    assert text.count(f'"{h}x{w}"') == 1
    config.write_text(text.replace(f'"{h}x{w}"', f'"{h}x{w + 1}"'))  # metadata off by one
    with TritonServer(tmp_path / "repo") as server:
        result = deal_client("health", "--url", server.url_grpc)
    assert result.exit_code == 1
    assert "does not match the dealseg contract" in result.stderr
    assert f"image: shape [-1, {h}, {w}, 3], contract says [B, *[{h}, {w + 1}, 3]]" in result.stderr


def served_ports() -> tuple[int, int, int]:
    from dealseg.serving.server import free_ports

    http, grpc, metrics = free_ports("127.0.0.1", 3)
    return http, grpc, metrics


def gated_score(pool: Path, url: str, protocol: str, out: Path, release: Path, retries: int):
    """A gated client (image 8 waits for `release`) scoring through Triton, one image per
    request and one in flight: images 0-6 (7 perhaps) are scored before the gate."""
    return start_gated(
        pool,
        8,
        release,
        "-k",
        K,
        "--url",
        url,
        "--protocol",
        protocol,
        "--out",
        out,
        "--batch-size",
        1,
        "--concurrency",
        1,
        "--workers",
        1,
        "--retries",
        retries,
        "--timeout",
        5,
        "--no-progress",
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.slow
def test_server_killed_mid_run_fails_after_retries_then_resumes(
    protocol: str, repo: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.serving.server import TritonServer

    pool = write_pool(tmp_path / "pool", 60, size=(40, 48), seed=4)
    out, release = tmp_path / "out", tmp_path / "release"
    with TritonServer(repo) as server:
        url = server.url_grpc if protocol == "grpc" else server.url_http
        client = gated_score(pool, url, protocol, out, release, retries=2)
        wait_for_records(out, 7, client)
        os.kill(server.pid, signal.SIGKILL)  # the server dies, not politely
        release.touch()  # image 8 and on go to a dead server
        _, err = client.communicate(timeout=300)
    assert client.returncode == 1, err.decode()
    assert b"failed after 3 attempts" in err and b"run the same command again" in err
    partial = records(out)
    assert 7 <= len(partial) <= 8 and all(r["status"] == "ok" for r in partial)
    with TritonServer(repo) as server:
        url = server.url_grpc if protocol == "grpc" else server.url_http
        rerun = deal_client(
            "score", pool, "-k", K, "--url", url, "--protocol", protocol, "--out", out
        )
    assert rerun.exit_code == 0, rerun.stderr
    assert len(records(out)) == len({r["path"] for r in records(out)}) == 60
    straight = tmp_path / "straight"
    result = deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", straight)
    assert result.exit_code == 0
    assert_same_selection(selection(out), selection(straight))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_run_rides_out_a_server_restart_on_the_same_ports(
    protocol: str, repo: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.serving.server import TritonServer

    pool = write_pool(tmp_path / "pool", 40, size=(40, 48), seed=5)
    out, release = tmp_path / "out", tmp_path / "release"
    http, grpc, metrics = served_ports()
    ports = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
    url = f"127.0.0.1:{grpc if protocol == 'grpc' else http}"
    server = TritonServer(repo, **ports).start()
    try:
        # retries with backoff capped at 10 s: over a minute to come back, well past a restart
        client = gated_score(pool, url, protocol, out, release, retries=12)
        wait_for_records(out, 7, client)
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        server = TritonServer(repo, **ports).start()  # the same ports, at once
        release.touch()
        _, err = client.communicate(timeout=300)
    finally:
        server.stop()
    assert client.returncode == 0, err.decode()
    assert len(records(out)) == len({r["path"] for r in records(out)}) == 40
    straight = tmp_path / "straight"
    assert (
        deal_client("score", pool, "-k", K, "--model", tiny_onnx, "--out", straight).exit_code == 0
    )
    assert_same_selection(selection(out), selection(straight))


def test_https_turns_tls_on(server, tmp_path: Path) -> None:
    """The plain server does not speak TLS: https:// must fail where http:// works."""
    plain = deal_client("health", "--url", f"http://{server.url_http}", "--protocol", "http")
    assert plain.exit_code == 0, plain.stderr
    tls = deal_client(
        "health", "--url", f"https://{server.url_http}", "--protocol", "http", "--retries", 0
    )
    assert tls.exit_code == 1
    assert "ssl" in tls.stderr.lower() and "Traceback" not in tls.stderr


def test_a_batch_larger_than_the_server_takes_is_a_usage_error(
    server, pool: Path, tmp_path: Path
) -> None:
    result = deal_client(
        "score",
        pool,
        "-k",
        K,
        "--url",
        server.url_grpc,
        "--batch-size",
        32,
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.stderr
    assert "max_batch_size 16" in result.stderr and "--batch-size 16" in result.stderr
    assert "run the same command again" not in result.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_carries_the_same_tensors_and_is_released(
    protocol: str, server, pool: Path, tmp_path: Path
) -> None:
    url = server.url_grpc if protocol == "grpc" else server.url_http
    outs = {}
    for how in ("socket", "shm"):
        outs[how] = tmp_path / how
        extra = ["--shm"] if how == "shm" else []
        r = deal_client(
            "score",
            pool,
            "-k",
            K,
            "--url",
            url,
            "--protocol",
            protocol,
            "--out",
            outs[how],
            "--batch-size",
            3,
            "--concurrency",
            1,
            "--maps",
            *extra,
        )
        assert r.exit_code == 0, r.stderr
    # one request at a time: the server batches the same images both ways, so equal bits
    assert records(outs["shm"]) == records(outs["socket"])
    assert np.array_equal(embeddings(outs["shm"]), embeddings(outs["socket"]))
    maps = sorted(p.name for p in (outs["shm"] / "maps").iterdir())
    assert maps == sorted(p.name for p in (outs["socket"] / "maps").iterdir())
    for name in maps:
        assert (outs["shm"] / "maps" / name).read_bytes() == (
            outs["socket"] / "maps" / name
        ).read_bytes()
    left = [p.name for p in Path("/dev/shm").glob(f"dealseg_{os.getpid()}_*")]
    assert left == []  # every region unregistered and removed at close


def test_shm_without_a_server_is_a_usage_error(pool: Path, tmp_path: Path) -> None:
    r = deal_client("score", pool, "-k", K, "--shm", "--out", tmp_path)
    assert r.exit_code == 2 and "--shm" in r.stderr
