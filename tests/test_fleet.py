"""The Ray path (`deal-client score --ray`) on a real local Ray cluster: the same selection as the
single-process client and shards+merge, error rows for bad files, resume, a killed actor.

One cluster for the module (`ray.init(num_cpus=2)`; starting one costs seconds). Every run here
uses --batch-size 1: an image's scores are then the same bits whatever else a batch holds, and
the paths compare byte for byte (batches of several images may move the last bit of a score).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import S3Server
from fleet_hooks import KillOnce
from helpers import (
    BUCKET,
    OFF_DOMAIN,
    K,
    deal_client,
    mixed_pool,
    selections,
    upload,
    write_streets_and_off_domain,
)

from dealseg.client.engines import EmbeddedEngine
from dealseg.client.fleet import RaySettings, score_on_ray
from dealseg.client.objects import ObjectPath
from dealseg.client.parquet import SCORES_PARQUET, part_files
from dealseg.client.scoring import list_paths
from dealseg.client.settings import ScoreSettings

ray = pytest.importorskip("ray")
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server) -> object:
    env = {"PYTHONPATH": str(TESTS), **s3_server.env()}  # fleet_hooks, the S3 server's keys
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_pool(tmp_path_factory.mktemp("pool"), 14)


def score(pool: Path, model: Path | None, out: Path, *args: object) -> str:
    engine = ["--model", model] if model is not None else []
    r = deal_client(
        "score",
        pool,
        "-k",
        3,
        *engine,
        "-o",
        out,
        "--batch-size",
        1,
        "--no-progress",
        *args,
    )
    assert r.exit_code == 3, r.stderr  # the bad files
    return r.stderr


@pytest.mark.slow
def test_ray_single_process_and_shards_select_the_same(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    on_ray = tmp_path / "ray"
    said = score(pool, tiny_onnx, on_ray, "--ray")
    assert "on Ray (local, an actor per 1 CPU)" in said and said.count("failed: ") == 2
    single = tmp_path / "single"
    score(pool, tiny_onnx, single)
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, out in enumerate(shards):
        r = deal_client(
            "score",
            pool,
            "-k",
            K,
            "--model",
            tiny_onnx,
            "-o",
            out,
            "--batch-size",
            1,
            "--shard",
            f"{i}/2",
            "--no-progress",
        )
        assert r.exit_code in (0, 3), r.stderr
    merged = tmp_path / "merged"
    assert deal_client("merge", *shards, "-o", merged, "-k", K).exit_code == 3
    want = selections(single, tmp_path / "s")
    assert selections(on_ray, tmp_path / "r") == want
    assert selections(merged, tmp_path / "m") == want
    assert (on_ray / "selection.txt").read_bytes() == (single / "selection.txt").read_bytes()
    again = score(pool, tiny_onnx, on_ray, "--ray")  # resumed: only the bad files are left
    assert "0 scored" in again and len(part_files(on_ray / SCORES_PARQUET)) == 2


def test_a_killed_actor_costs_no_image_and_scores_none_twice(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    paths = list_paths(str(pool))
    engine = EmbeddedEngine(tiny_onnx)
    report = score_on_ray(
        paths,
        engine.spec,
        functools.partial(EmbeddedEngine, str(tiny_onnx), 1),
        tmp_path / "out",
        ScoreSettings(batch_size=2, progress=False, format="parquet"),
        RaySettings(actors=2, cpus_per_actor=0.5),
        hook=KillOnce(marker, after=2),
    )
    assert marker.exists()  # an actor died holding its second batch
    rows = pq.read_table(tmp_path / "out" / SCORES_PARQUET).to_pylist()
    assert Counter(r["path"] for r in rows) == Counter(paths)  # every image once
    assert sum(r["status"] == "ok" for r in rows) == len(paths) - 2 == report.scored
    assert len(report.failed) == 2 and report.total == len(paths)


def test_an_s3_pool_scores_on_ray_as_in_one_process(
    cluster: object,
    s3_server: S3Server,
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    uris = upload(s3_server, pool / "cam0", "ray")
    listing = tmp_path / "pool.txt"
    listing.write_text("\n".join([*uris, f"s3://{BUCKET}/ray/missing.png"]) + "\n")
    on_ray, single = tmp_path / "ray", tmp_path / "single"
    score(listing, tiny_onnx, on_ray, "--ray")
    score(listing, tiny_onnx, single, "--format", "parquet")
    rows = pq.read_table(on_ray / SCORES_PARQUET).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([*uris, f"s3://{BUCKET}/ray/missing.png"])
    assert [r["error"][:14] for r in rows if r["status"] == "error"] == ["file not found"]
    assert (on_ray / "selection.txt").read_bytes() == (single / "selection.txt").read_bytes()


def test_actors_the_cluster_cannot_place_are_refused(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    r = deal_client(
        "score", pool, "-k", K, "--model", tiny_onnx, "-o", tmp_path, "--ray", "--actors", 3
    )
    assert r.exit_code == 1 and "need 3 CPUs, the cluster has 2" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.triton
def test_actors_with_triton_clients_give_the_single_process_selection(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo, target="python-cpu")
    with TritonServer(repo) as server:
        url = server.url_grpc
        on_ray, single = tmp_path / "ray", tmp_path / "single"
        said = score(
            pool,
            None,
            on_ray,
            "--url",
            url,
            "--url",
            url,
            "--ray",
            "--actors",
            2,
            "--cpus-per-actor",
            0.5,
        )
        assert "via Triton" in said and "2 actors" in said
        score(pool, None, single, "--url", url, "--format", "parquet")
    for strategy in ("de", "coreset"):
        a, b = tmp_path / f"a-{strategy}", tmp_path / f"b-{strategy}"
        assert deal_client("select", on_ray, "-s", strategy, "-k", K, "-o", a).exit_code == 0
        assert deal_client("select", single, "-s", strategy, "-k", K, "-o", b).exit_code == 0
        assert (a / "selection.txt").read_bytes() == (b / "selection.txt").read_bytes()


def test_ray_missing_is_one_line_naming_the_extra(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the ray extra were not installed
        "from dealseg.client.cli import main\n"
        f"main(['score', {str(pool)!r}, '-k', '2', '--model', {str(tiny_onnx)!r}, "
        f"'-o', {str(tmp_path)!r}, '--ray', '--no-progress'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --ray needs Ray: pip install 'dealseg[ray]' (ray==2.60.0)"
    )
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_ray_buys_the_regions_the_single_process_buys(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    regions = ("--regions", "5%", "--region-size", "8", "--model", tiny_onnx, "--no-progress")
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    for out, extra in ((single, ("--format", "parquet")), (on_ray, ("--ray",))):
        r = deal_client("score", pool, *regions, "-o", out, "--batch-size", 1, *extra)
        assert r.exit_code == 3, r.stderr  # the bad files
    for name in ("regions.jsonl", "selection.txt"):
        assert (on_ray / name).read_bytes() == (single / name).read_bytes()
    assert (on_ray / "regions.jsonl").read_bytes()  # something was bought
    again = ("--regions", "5%", "-s", "region-ds-balanced", "--seed", "4", "--force")
    for out in (single, on_ray):  # the cells' predicted classes came back from Ray too
        assert deal_client("select", out, *again, "--out", out).exit_code == 0
    assert (on_ray / "regions.jsonl").read_bytes() == (single / "regions.jsonl").read_bytes()


@pytest.mark.slow
def test_ray_carries_the_shipped_models_novelty(cluster: object, tmp_path: Path) -> None:
    """The shipped model on Ray: each frame's novelty as in one process, and the off-domain
    frames left out of the selection."""
    pool = write_streets_and_off_domain(tmp_path / "pool", streets=4)
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    for out, extra in ((single, ("--format", "parquet")), (on_ray, ("--ray",))):
        r = deal_client("score", pool, "-k", 3, "-o", out, "--batch-size", 1, *extra)
        assert r.exit_code == 0, r.stderr

    def novelty(out: Path) -> dict[str, float]:
        table = pq.read_table(out / SCORES_PARQUET)
        paths, values = table.column("path").to_pylist(), table.column("novelty").to_pylist()
        return dict(zip(paths, values, strict=True))

    assert novelty(on_ray) == novelty(single)
    off = {Path(p).stem for p, v in novelty(on_ray).items() if v > 0.99}
    assert off == set(OFF_DOMAIN)
    assert (on_ray / "selection.txt").read_bytes() == (single / "selection.txt").read_bytes()
    assert not off & {Path(p).stem for p in (on_ray / "selection.txt").read_text().split()}


def test_sigterm_stops_a_ray_run_as_the_single_process_does(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """SIGTERM once ended `score --ray` with exit 143 and Ray's stack dump (Ray's handler), no
    "interrupted" line; SIGINT was right. Its own local cluster, in a process of its own."""
    import os
    import signal
    import time

    marker = tmp_path / "scoring"
    args = ["score", str(pool), "-k", "3", "--model", str(tiny_onnx), "-o", str(tmp_path / "o")]
    code = (
        "import sys; from fleet_hooks import blocked_cli; "
        f"blocked_cli({str(marker)!r}, {[*args, '--ray', '--no-progress']!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300  # a failure guard; we poll for the actor's marker
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no actor started scoring"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "interrupted (SIGTERM): results so far are in" in text and "Traceback" not in text


def test_a_wrong_ray_address_fails_at_once_naming_it(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """A --ray ADDRESS where no cluster answers once retried for minutes. A process of its own:
    this one is connected to the module's cluster, which a run would use."""
    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    client = Path(sys.executable).with_name("deal-client")
    args = ["score", pool, "-k", 3, "--model", tiny_onnx, "-o", tmp_path / "o", "--ray", address]
    result = subprocess.run([client, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"Error: no Ray cluster at {address}: " in result.stderr


def test_a_ray_resume_sets_an_unreadable_part_aside_and_scores_its_images_again(
    cluster: object, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    score(pool, tiny_onnx, out, "--ray")
    (part,) = part_files(out / SCORES_PARQUET)
    lost = pq.read_table(part).column("status").to_pylist().count("ok")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a task killed mid-file
    said = score(pool, tiny_onnx, out, "--ray")
    assert f"{lost} scored" in said and "set aside" in said
    assert (part.parent / f".{part.name}.unreadable").exists()
    assert "unreadable_parts" not in (out / "selection.json").read_text()
    assert len(pq.read_table(out / SCORES_PARQUET)) == len(list_paths(str(pool)))


def test_ray_writes_its_parts_to_s3_and_resumes_from_them(
    cluster: object,
    s3_bucket: S3Server,
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out s3://: the workers put the parts, the driver meta.json and the selection; no local
    file is written; a resume reads the parts back (a torn one set aside, its images again)."""
    monkeypatch.chdir(tmp_path)
    client = s3_bucket.client()

    def objects() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix="fleet/run/")["Contents"]
        return {
            o["Key"].removeprefix("fleet/run/"): client.get_object(Bucket=BUCKET, Key=o["Key"])[
                "Body"
            ].read()
            for o in listed
        }

    out = f"s3://{BUCKET}/fleet/run"
    said = score(pool, tiny_onnx, out, "--ray")
    assert f"out {out}" in said and f"in {out}/selection.txt" in said
    single = tmp_path / "single"
    score(pool, tiny_onnx, single, "--format", "parquet")
    assert list(tmp_path.iterdir()) == [single]  # nothing local from the Ray run
    found = objects()
    parts = [k for k in found if k.startswith(f"{SCORES_PARQUET}/") and k.endswith(".parquet")]
    assert {"meta.json", "selection.json", "selection.txt"} <= set(found) and len(parts) == 1
    assert found["selection.txt"] == (single / "selection.txt").read_bytes()

    (part,) = parts
    lost = pq.read_table(pa.BufferReader(found[part])).column("status").to_pylist().count("ok")
    torn = found[part][: len(found[part]) // 2]  # as a copy cut short would leave it
    client.put_object(Bucket=BUCKET, Key=f"fleet/run/{part}", Body=torn)
    again = score(pool, tiny_onnx, out, "--ray")
    assert f"{lost} scored" in again and "set aside" in again, again
    now = objects()
    aside = part.replace(f"{SCORES_PARQUET}/", f"{SCORES_PARQUET}/.") + ".unreadable"
    assert now[aside] == torn and part not in now
    assert now["selection.txt"] == (single / "selection.txt").read_bytes()


def test_ray_writes_its_parts_to_gs_as_to_s3(
    cluster: object,
    gcs_server: str,
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gs:// on fake-gcs-server: the actors write with the driver's file system (its emulator
    address), the selection is the single process's."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    out, single = f"gs://{BUCKET}/fleet", tmp_path / "single"
    score(pool, tiny_onnx, out, "--ray")
    score(pool, tiny_onnx, single, "--format", "parquet")
    assert len(part_files(ObjectPath(out) / SCORES_PARQUET)) == 1
    picks = (ObjectPath(out) / "selection.txt").read_bytes()
    assert picks == (single / "selection.txt").read_bytes()


def test_blocks_are_consecutive_even_and_one_per_call_of_a_small_pools_actors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dealseg.client.fleet as fleet

    paths = [f"p{i}" for i in range(2500)]
    blocks = fleet._blocks(paths, actors=1)
    assert [len(b) for b in blocks] == [833, 834, 833] and sum(blocks, []) == paths
    assert [len(b) for b in fleet._blocks(paths[:200], actors=2)] == [50] * 4  # 2 calls each
    assert [len(b) for b in fleet._blocks(paths[:40], actors=2)] == [40]  # blocks of >= 32
    assert fleet._blocks(paths[:1], actors=4) == [["p0"]]
    monkeypatch.setattr(fleet, "BLOCK_PATHS", 8)
    assert [len(b) for b in fleet._blocks(paths[:24], actors=1)] == [8, 8, 8]


def test_actor_count_fills_the_cluster_one_per_cpu_unless_told() -> None:
    from dealseg.client.fleet import RayUnavailable, actor_count

    class Cluster:
        def __init__(self, **resources: float) -> None:
            self.resources = resources

        def cluster_resources(self) -> dict[str, float]:
            return self.resources

    eight = Cluster(CPU=8.0, GPU=2.0)
    assert actor_count(eight, RaySettings()) == 8
    assert actor_count(eight, RaySettings(cpus_per_actor=3)) == 2
    assert actor_count(eight, RaySettings(cpus_per_actor=0.5)) == 16  # Triton clients
    assert actor_count(eight, RaySettings(gpus_per_actor=1)) == 2
    assert actor_count(eight, RaySettings(actors=3, cpus_per_actor=2)) == 3
    with pytest.raises(RayUnavailable, match="1 actors x 2 CPUs need 2 CPUs, the cluster has 1"):
        actor_count(Cluster(CPU=1.0), RaySettings(cpus_per_actor=2))  # not even one fits
    with pytest.raises(RayUnavailable, match="need 6 CPUs, the cluster has 4"):
        actor_count(Cluster(CPU=4.0), RaySettings(actors=3, cpus_per_actor=2))
