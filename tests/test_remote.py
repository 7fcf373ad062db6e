"""Pools in object storage: s3:// URIs on a real S3-compatible server (moto's, on loopback), with
credentials from the standard AWS_* variables, and http:// URIs on the standard library's HTTP
server; the embedded engine on the tiny model."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import BUCKET, SELECTIONS, K, deal_client, records, upload, write_pool

from dealseg.client.scoring import list_paths


@pytest.fixture(scope="module")
def local_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool"), 10)


@pytest.fixture
def s3_env(s3_server: object, monkeypatch: pytest.MonkeyPatch) -> object:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_an_s3_prefix_scores_end_to_end_like_the_local_files(
    s3_env: object, local_pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    uris = upload(s3_env, local_pool, "a")
    assert list_paths(f"s3://{BUCKET}/a/") == uris
    remote, local = tmp_path / "remote", tmp_path / "local"
    r = deal_client("score", f"s3://{BUCKET}/a/", "-k", K, "--model", tiny_onnx, "-o", remote)
    assert r.exit_code == 0, r.stderr
    assert (
        deal_client("score", local_pool, "-k", K, "--model", tiny_onnx, "-o", local).exit_code == 0
    )
    as_uri = {str(local_pool / u.split("/a/", 1)[1]): u for u in uris}
    want = {as_uri[r["path"]]: r for r in records(local)}
    got = {r["path"]: r for r in records(remote)}
    assert got.keys() == want.keys()
    for uri, rec in got.items():
        assert rec["status"] == "ok" and rec["de"] == want[uri]["de"]
    for strategy, extra in SELECTIONS:
        if strategy == "random":
            continue  # seeded by a hash of the path: other paths, another draw
        a = deal_client(
            "select",
            remote,
            "-s",
            strategy,
            "-k",
            4,
            "-o",
            tmp_path / "ra",
            "--json",
            "--force",
            *extra,
        )
        b = deal_client(
            "select",
            local,
            "-s",
            strategy,
            "-k",
            4,
            "-o",
            tmp_path / "la",
            "--json",
            "--force",
            *extra,
        )
        picked = [row["path"] for row in json.loads(a.stdout)["rows"]]
        assert picked == [as_uri[row["path"]] for row in json.loads(b.stdout)["rows"]]


def test_a_missing_object_in_a_uri_list_is_one_error_record(
    s3_env: object, local_pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    uris = upload(s3_env, local_pool, "b")[:3]
    missing = f"s3://{BUCKET}/b/missing.jpg"
    listing = tmp_path / "pool.txt"
    listing.write_text("\n".join([*uris, missing]) + "\n")
    out = tmp_path / "out"
    r = deal_client(
        "score", listing, "-k", 2, "--model", tiny_onnx, "-o", out, "--format", "parquet"
    )
    assert r.exit_code == 3, r.stderr
    assert f"failed: {missing}: file not found" in r.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "scores.parquet").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([*uris, missing])
    assert [r["path"] for r in rows if r["status"] == "error"] == [missing]


def test_credentials_the_store_refuses_end_in_one_line(
    s3_server: object, local_pool: Path, tiny_onnx: Path, tmp_path: Path, monkeypatch
) -> None:
    upload(s3_server, local_pool, "c")
    for name, value in s3_server.env(secret="not-the-secret").items():
        monkeypatch.setenv(name, value)
    for pool in (f"s3://{BUCKET}/c/", f"s3://{BUCKET}/c/cam0/frame_0000.png"):
        r = deal_client("score", pool, "-k", 2, "--model", tiny_onnx, "-o", tmp_path / "out")
        assert r.exit_code == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused our credentials" in lines[0], r.stderr
        assert "AWS_SECRET_ACCESS_KEY" in lines[0] and "Traceback" not in r.stderr


@pytest.fixture
def http_pool(local_pool: Path) -> Iterator[str]:
    """`local_pool` served over HTTP on a free loopback port (the standard library's server)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(local_pool))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_uris_in_a_list_score_and_a_404_is_one_error_record(
    http_pool: str, local_pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    files = sorted(p.relative_to(local_pool).as_posix() for p in local_pool.rglob("*.png"))[:3]
    uris = [f"{http_pool}/{name}" for name in files]
    missing = f"{http_pool}/cam0/missing.png"
    listing = tmp_path / "pool.txt"
    listing.write_text("\n".join([*uris, missing]) + "\n")
    out = tmp_path / "out"
    r = deal_client("score", listing, "-k", 2, "--model", tiny_onnx, "-o", out, "--no-progress")
    assert r.exit_code == 3, r.stderr
    assert f"failed: {missing}: file not found: the server answered 404" in r.stderr
    got = {rec["path"]: rec["status"] for rec in records(out)}
    assert got == {**dict.fromkeys(uris, "ok"), missing: "error"}


def test_the_python_api_scores_uris_as_they_are(
    s3_env: object, local_pool: Path, tiny_onnx: Path
) -> None:
    import dealseg

    uris = upload(s3_env, local_pool, "d")[:2]
    table = dealseg.score(uris, model=tiny_onnx)
    assert sorted(table["path"]) == sorted(uris) and table["error"].isna().all()
