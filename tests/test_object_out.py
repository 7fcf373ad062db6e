"""`--out s3://bucket/prefix` without Ray, on the real S3-compatible server (moto's server): the
out dir's files as objects, the same selection as a local out dir, resume, `select` from it, and
every refusal in one line (JSONL, maps, a missing bucket, refused credentials, report, export).
The Ray path into object storage is tested in test_fleet.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import S3Server, free_port
from helpers import BUCKET, deal_client, mixed_pool

from dealseg.client.engines import EmbeddedEngine
from dealseg.client.objects import ObjectPath
from dealseg.client.outdir import claim, write_meta
from dealseg.client.records import StoreError


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_pool(tmp_path_factory.mktemp("pool"), 6)


def keys(server: S3Server, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def read(server: S3Server, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def one_line_error(result: object) -> str:
    """The error line of a refused command (a usage error has click's usage lines above)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code in (1, 2) and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 or lines[:2] == result.stderr.splitlines()[:2], result.stderr
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], result.stderr
    return lines[-1]


def test_an_s3_out_holds_the_local_out_dirs_files_and_selection(
    s3_bucket: S3Server,
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written here
    out = f"s3://{BUCKET}/single/run"
    args = ["-k", 3, "--model", tiny_onnx, "--no-progress"]
    r = deal_client("score", pool, *args, "-o", out)
    assert r.exit_code == 3, r.stderr  # the two bad files
    assert f"top 3 by entropy in {out}/selection.txt" in r.stderr
    local = tmp_path / "local"
    assert deal_client("score", pool, *args, "-o", local, "--format", "parquet").exit_code == 3
    assert list(tmp_path.iterdir()) == [local]
    found = keys(s3_bucket, "single/run/")
    assert [k for k in found if not k.startswith("single/run/scores.parquet/")] == [
        "single/run/meta.json",
        "single/run/selection.json",
        "single/run/selection.txt",
    ]
    assert len([k for k in found if k.endswith(".parquet")]) == 1
    assert read(s3_bucket, "single/run/selection.txt") == (local / "selection.txt").read_bytes()
    doc = json.loads(read(s3_bucket, "single/run/selection.json"))
    assert doc["scores"] == f"{out}/scores.parquet" and doc["pool_failed"] == 2

    again = deal_client("score", pool, *args, "-o", out)  # resumed from the objects
    assert again.exit_code == 3 and "0 scored, 11 already done" in again.stderr, again.stderr
    parts = [k for k in keys(s3_bucket, "single/run/scores.parquet/") if k.endswith(".parquet")]
    assert len(parts) == 2 and set(found) < set(keys(s3_bucket, "single/run/"))  # the 2 bad again

    for strategy in ("ds", "coreset"):
        mine, theirs = tmp_path / f"mine-{strategy}", tmp_path / f"theirs-{strategy}"
        assert deal_client("select", out, "-s", strategy, "-k", 4, "-o", mine).exit_code == 0
        assert deal_client("select", local, "-s", strategy, "-k", 4, "-o", theirs).exit_code == 0
        assert (mine / "selection.txt").read_bytes() == (theirs / "selection.txt").read_bytes()
    assert deal_client("report", mine).exit_code == 0  # a local report of the s3 scores
    r = deal_client("select", out, "-k", 2, "--force")  # into the prefix itself
    assert r.exit_code == 0, r.stderr
    assert read(s3_bucket, "single/run/selection.txt").count(b"\n") == 2


def test_what_an_s3_out_cannot_hold_is_refused_in_one_line(
    s3_bucket: S3Server, pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = f"s3://{BUCKET}/refused"
    score = ["score", pool, "-k", 2, "--model", tiny_onnx, "-o", out, "--no-progress"]
    said = {
        "--format jsonl": one_line_error(deal_client(*score, "--format", "jsonl")),
        "--maps": one_line_error(deal_client(*score, "--maps")),
        "--regions": one_line_error(deal_client(*score[:2], "--regions", "5%", *score[4:])),
        "report": one_line_error(deal_client("report", out)),
        "merge": one_line_error(deal_client("merge", out, "-o", tmp_path, "-k", 2)),
        "merge -o": one_line_error(deal_client("merge", tmp_path, "-o", out, "-k", 2)),
        "eval -o": one_line_error(deal_client("eval", pool, "-l", pool, "-o", out)),
        "export": one_line_error(deal_client("export", out, "--format", "csv")),
    }
    assert "scores there are Parquet; drop --format jsonl" in said["--format jsonl"]
    assert f"select {out} --out DIR --report` draws them" in said["--maps"]
    assert "give a local --out" in said["--regions"]
    assert f"select {out} --out DIR --report` writes one" in said["report"]
    assert f"select {out} --out DIR`, then `deal-client export DIR`" in said["export"]
    assert "merge reads local out dirs" in said["merge"]
    assert "merge writes a local out dir" in said["merge -o"]
    assert "eval writes local files" in said["eval -o"]
    assert keys(s3_bucket, "refused/") == []  # nothing was written


def test_a_missing_bucket_refused_credentials_and_no_server_end_in_one_line(
    s3_bucket: S3Server,
    pool: Path,
    tiny_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    score = ["score", pool, "-k", 2, "--model", tiny_onnx, "--no-progress", "-o"]
    line = one_line_error(deal_client(*score, "s3://no-such-bucket/run"))
    assert line == (
        "Error: s3://no-such-bucket/run: no bucket no-such-bucket (create it, or check the URI)"
    )
    line = one_line_error(deal_client("select", "s3://no-such-bucket/run", "-k", 2))
    assert line.endswith("run: no bucket no-such-bucket (create it, or check the URI)")
    line = one_line_error(deal_client(*score, "s3://"))
    assert line.endswith("s3://: no bucket in the URI (s3://BUCKET/PREFIX)")
    for name, value in s3_bucket.env(secret="not-the-secret").items():
        monkeypatch.setenv(name, value)
    line = one_line_error(deal_client(*score, f"s3://{BUCKET}/denied"))
    assert "refused our credentials" in line and "AWS_SECRET_ACCESS_KEY" in line
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    line = one_line_error(deal_client(*score, f"s3://{BUCKET}/nowhere"))
    assert line.startswith(f"Error: s3://{BUCKET}/nowhere") and "connect" in line, line


def test_a_meta_json_another_run_rewrote_stops_the_run_before_its_selection(
    s3_bucket: S3Server, tiny_onnx: Path
) -> None:
    """Object storage has no lock: two runs into one prefix are the user's to avoid, and a run
    whose meta.json another run (another model or settings) replaced meanwhile says so."""
    spec = EmbeddedEngine(tiny_onnx).spec
    out = ObjectPath(f"s3://{BUCKET}/raced")
    raced = pytest.raises(StoreError, match="rewritten by another run meanwhile")
    with raced, claim(out, spec, "parquet", {"resize": "stretch"}):
        write_meta(out, spec, {"resize": "crop"})  # the other run's
    with claim(out, spec, "parquet", {"resize": "crop"}):
        pass  # the same meta.json: no complaint


def test_the_python_api_keeps_its_scores_under_an_s3_prefix(
    s3_bucket: S3Server, pool: Path, tiny_onnx: Path
) -> None:
    import dealseg

    out = f"s3://{BUCKET}/api"
    with pytest.raises(StoreError, match=r"scores there are Parquet \(--format parquet\)"):
        dealseg.score(pool, model=tiny_onnx, out=out)
    table = dealseg.score(pool, model=tiny_onnx, out=out, format="parquet")
    assert len(table) == 13 and table["error"].notna().sum() == 2
    assert "api/meta.json" in keys(s3_bucket, "api/")


def test_a_gs_out_holds_the_local_out_dirs_selection(
    gcs_server: str,
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gs:// through the same code, on fake-gcs-server (STORAGE_EMULATOR_HOST)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    out, local = f"gs://{BUCKET}/single", tmp_path / "local"
    args = ["-k", 3, "--model", tiny_onnx, "--no-progress"]
    assert deal_client("score", pool, *args, "-o", out).exit_code == 3
    assert deal_client("score", pool, *args, "-o", local, "--format", "parquet").exit_code == 3
    picks = ObjectPath(out) / "selection.txt"
    assert picks.read_bytes() == (local / "selection.txt").read_bytes()
    again = deal_client("score", pool, *args, "-o", out)
    assert "0 scored, 11 already done" in again.stderr, again.stderr
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    assert deal_client("select", out, "-s", "coreset", "-k", 4, "-o", mine).exit_code == 0
    assert deal_client("select", local, "-s", "coreset", "-k", 4, "-o", theirs).exit_code == 0
    assert (mine / "selection.txt").read_bytes() == (theirs / "selection.txt").read_bytes()
    line = one_line_error(deal_client("score", pool, *args, "-o", "gs://no-such-bucket/run"))
    assert line.endswith(
        "gs://no-such-bucket/run: no bucket no-such-bucket (create it, or check the URI)"
    )


def test_a_pinned_path_keeps_its_file_system_in_another_process(
    s3_bucket: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray worker writes with the driver's file system (`ObjectPath.pinned`): the path keeps
    it through `/`, `parent` and pickling, where an unpinned one builds its own from the
    environment of the process it is in."""
    import pickle

    pinned = ObjectPath(f"s3://{BUCKET}/pinned").pinned()
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # a process without the driver's settings
    sent = pickle.loads(pickle.dumps(pinned / "scores.parquet" / "part.parquet"))
    sent.write_bytes(b"rows")
    assert sent.parent.parent == pinned and sent.read_bytes() == b"rows"
    assert read(s3_bucket, "pinned/scores.parquet/part.parquet") == b"rows"
