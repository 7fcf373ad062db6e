"""Drive logs as pools (client/logs.py): a video, an MCAP file and a Parquet table, each with one
damaged frame, scored embedded, through the real Triton server and on a real local Ray cluster;
sampling, the --topic / --image-column listings, records that lead back to the log, and a run
interrupted in the middle of a log that decodes nothing scored when it resumes.

Runs compared byte for byte use --batch-size 1 (a frame's scores are then the same bits
whatever else a batch holds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from drive_logs import (
    COLUMN,
    RAW_TOPIC,
    TOPIC,
    drive_frames,
    street_frames,
    write_mcap,
    write_table,
    write_video,
)
from helpers import deal_client, records, selection

import dealseg.client.logs as logs
import dealseg.client.scoring as scoring
from dealseg.client.engines import EmbeddedEngine
from dealseg.client.logs import frame_ref
from dealseg.client.scoring import list_paths, score_into
from dealseg.client.settings import ScoreSettings

N = 24  # frames a log
BAD = {"drive.mp4": 9, "run.mcap": 12, "table.parquet": 20}  # the damaged frame of each log
GOP = 5  # the video's key frame interval
LOGS = ["--topic", TOPIC, "--image-column", COLUMN]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three logs, two photos of the same drive and a file that is no video."""
    folder = tmp_path_factory.mktemp("drive")
    frames = street_frames(N)
    write_video(folder / "drive.mp4", frames, corrupt=BAD["drive.mp4"], gop=GOP)
    write_mcap(folder / "run.mcap", street_frames(N, seed=1), corrupt=BAD["run.mcap"])
    write_table(folder / "table.parquet", street_frames(N, seed=2), corrupt=BAD["table.parquet"])
    from PIL import Image

    for i in (3, 17):
        Image.fromarray(frames[i]).save(folder / f"still_{i}.png")
    (folder / "broken.mkv").write_bytes(b"not a video at all" * 10)
    return folder


def score(pool: Path, out: Path, *args: object) -> str:
    r = deal_client("score", pool, "-k", 6, "-o", out, "--no-progress", "--batch-size", 1, *args)
    assert r.exit_code == 3, r.stderr  # the damaged frames and the broken log
    return r.stderr


@pytest.fixture(scope="module")
def embedded(pool: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embedded")
    score(pool, out, "--model", tiny_onnx, *LOGS)
    return out


def test_a_folder_of_logs_and_images_scores_every_frame(pool: Path, embedded: Path) -> None:
    found = records(embedded)
    by_log: dict[str, list[dict]] = {}
    for r in found:
        by_log.setdefault(Path(r.get("log", r["path"])).name, []).append(r)
    assert {n: len(rs) for n, rs in by_log.items()} == {
        "drive.mp4": N,
        "run.mcap": N,
        "table.parquet": N,
        "still_3.png": 1,
        "still_17.png": 1,
        "broken.mkv": 1,
    }
    errors = {Path(r["path"].split("#")[0]).name: r for r in found if r["status"] == "error"}
    assert set(errors) == {*BAD, "broken.mkv"}
    for name, index in BAD.items():
        assert errors[name]["frame"] == index, errors[name]
    assert "cannot read the log: not a video PyAV opens" in errors["broken.mkv"]["error"]
    video = sorted((r for r in by_log["drive.mp4"]), key=lambda r: r["frame"])
    assert [r["frame"] for r in video] == list(range(N))
    assert [r["timestamp"] for r in video] == pytest.approx([i / 20 for i in range(N)])
    mcap = {r["frame"]: r for r in by_log["run.mcap"]}
    assert mcap[3]["topic"] == TOPIC and mcap[3]["timestamp"] == pytest.approx(1.7e9 + 0.15)
    assert by_log["table.parquet"][5]["topic"] == COLUMN
    doc = selection(embedded)
    assert doc["pool_failed"] == 4
    for row in doc["rows"]:  # every pick says where it is
        ref = frame_ref(row["path"])
        if ref is not None:
            assert (row["log"], row["frame"]) == (ref.log, ref.index)


def test_a_video_scores_as_its_frames_saved_as_pngs(
    pool: Path, embedded: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """The video's frames decoded once by PyAV and saved losslessly score to the same bits."""
    import av

    folder = tmp_path / "extracted"
    folder.mkdir()
    with av.open(str(pool / "drive.mp4")) as container:
        for packet in container.demux(video=0):
            try:
                decoded = packet.decode()
            except av.InvalidDataError:  # the damaged frame
                continue
            for frame in decoded:
                frame.to_image().save(folder / f"{round(frame.time * 20):03d}.png")
    out = tmp_path / "out"
    r = deal_client("score", folder, "-k", 6, "-o", out, "--model", tiny_onnx, "--batch-size", 1)
    assert r.exit_code == 0, r.stderr
    as_files = {Path(r["path"]).stem: r for r in records(out)}
    video = [r for r in records(embedded) if r.get("log", "").endswith("drive.mp4")]
    assert len(as_files) == N - 1  # the damaged frame never decoded
    for r in video:
        if r["status"] == "ok":
            assert r["ds"] == as_files[f"{r['frame']:03d}"]["ds"]
            assert r["entropy"] == as_files[f"{r['frame']:03d}"]["entropy"]


def test_a_videos_frame_times_are_read_while_it_is_open(pool: Path) -> None:
    """The listing once read the stream's time base after closing the container (freed
    memory): now and then every timestamp was garbage and the frames failed as missing."""
    settings = ScoreSettings()
    for _ in range(20):
        frames = logs.list_frames(str(pool / "drive.mp4"), settings)
        assert [f.stamp for f in frames] == [f"{i / 20:.6f}" for i in range(N)]


def test_logs_in_object_storage_score_as_the_local_ones(
    pool: Path, embedded: Path, tiny_onnx: Path, s3_bucket: object, tmp_path: Path
) -> None:
    """The same logs as objects under an s3:// prefix (read in ranges by pyarrow's file
    system): the same frames, errors and scores as the local folder's; a missing log object is
    its one error record."""
    from helpers import BUCKET, upload

    upload(s3_bucket, pool, "drive")
    out = tmp_path / "out"
    score(f"s3://{BUCKET}/drive/", out, "--model", tiny_onnx, *LOGS)

    def key(r: dict) -> tuple:
        return (Path(r.get("log", r["path"])).name, r.get("frame"), r["status"])

    local = {key(r): r for r in records(embedded)}
    remote = {key(r): r for r in records(out)}
    assert remote.keys() == local.keys()
    for k, r in remote.items():
        assert (r.get("ds"), r.get("entropy")) == (local[k].get("ds"), local[k].get("entropy"))
    assert all(r["path"].startswith(f"s3://{BUCKET}/drive/") for r in remote.values())
    listed = tmp_path / "list.txt"
    listed.write_text(f"s3://{BUCKET}/drive/run.mcap\ns3://{BUCKET}/drive/gone.mp4\n")
    out2 = tmp_path / "out2"
    r = deal_client("score", listed, "-k", 2, "-o", out2, "--model", tiny_onnx, "--topic", TOPIC)
    assert r.exit_code == 3, r.stderr
    gone = [x for x in records(out2) if x["path"].endswith("gone.mp4")]
    assert len(gone) == 1 and "no object at this URI" in gone[0]["error"]


def test_topic_and_image_column_missing_or_wrong_list_the_choices(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    mcap = pool / "run.mcap"
    r = deal_client("score", mcap, "-k", 2, "-o", tmp_path / "a", "--model", tiny_onnx)
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()[-1:]
    assert f"give --topic: no --topic in {mcap}; its image topics: {TOPIC}, {RAW_TOPIC}" in line
    r = deal_client("score", mcap, "-k", 2, "-o", tmp_path / "b", "--topic", "/status")
    assert r.exit_code == 2 and f"no topic /status in {mcap}; its image topics" in r.stderr
    table = pool / "table.parquet"
    r = deal_client("score", table, "-k", 2, "-o", tmp_path / "c", "--image-column", "camera")
    assert r.exit_code == 2
    assert f"no column camera in {table}; its image columns: {COLUMN}" in r.stderr
    assert "Traceback" not in r.stderr


def test_diverse_skips_a_logs_repeated_consecutive_frames(tiny_onnx: Path, tmp_path: Path) -> None:
    """A parked car's camera: each picture held for three frames; --diverse keeps one of each."""
    held = [street_frames(1, seed=s)[0] for s in range(8) for _ in range(3)]
    video = write_video(tmp_path / "parked.mp4", held, gop=GOP, lossless=True)
    out = tmp_path / "out"
    r = deal_client("score", video, "-k", 8, "-o", out, "--model", tiny_onnx, "--diverse", 0.99999)
    assert r.exit_code == 0, r.stderr
    doc = selection(out)
    picked = [frame_ref(row["path"]).index // 3 for row in doc["rows"]]
    assert sorted(picked) == list(range(8))  # one frame of each held picture
    for skip in doc["near_duplicates"]:  # skipped for a neighbour of the same picture
        assert frame_ref(skip["path"]).index // 3 == frame_ref(skip["of"]).index // 3


def test_raw_image_topic_and_sampling(pool: Path) -> None:
    raw = list_paths(str(pool / "run.mcap"), settings=ScoreSettings(topic=RAW_TOPIC))
    assert [frame_ref(p).index for p in raw] == list(range(N))
    frames = logs.LogFrames((64, 80), ScoreSettings(topic=RAW_TOPIC)).decode(raw[:4])
    assert all(f.image.shape == (64, 80, 3) for f in frames)
    every = list_paths(str(pool / "drive.mp4"), settings=ScoreSettings(every=5))
    assert [frame_ref(p).index for p in every] == [0, 5, 10, 15, 20]
    table = ScoreSettings(fps=4, image_column=COLUMN)
    fps = list_paths(str(pool / "table.parquet"), settings=table)
    assert [frame_ref(p).index for p in fps] == [0, 5, 10, 15, 20]  # 20 fps -> 4 fps
    with pytest.raises(ValueError, match="not both"):
        ScoreSettings(every=2, fps=1.0)


def test_fps_on_a_table_without_timestamps_is_its_error_record(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dealseg.core.decode import DecodeError

    table = tmp_path / "untimed.parquet"
    pq.write_table(pa.table({COLUMN: pa.array([b"x"], pa.binary())}), table)
    how = ScoreSettings(fps=2.0, image_column=COLUMN)
    (entry,) = list_paths(str(table), settings=how)
    assert entry == str(table)  # left as itself
    (error,) = logs.LogFrames((64, 80), how).decode([entry])
    assert isinstance(error, DecodeError) and "--fps needs timestamps" in error.reason


class Interrupt:
    """`scoring.read_log_run` that stops the run (as Ctrl-C) at the first run of frames from
    `stop` on, and counts what the log readers decode: video packets' frames, MCAP messages,
    and pictures made into model frames."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop: int | None) -> None:
        self.stop, self.decoded = stop, 0
        real_run, real_packet, real_message = (
            scoring.read_log_run,
            logs.decoded_frames,
            logs.decoded_message,
        )
        real_as_frame = logs.as_frame

        def run(frames: logs.LogFrames, paths: list[str]) -> list:
            if self.stop is not None and frame_ref(paths[-1]).index >= self.stop:
                raise KeyboardInterrupt
            return real_run(frames, paths)

        def packet(p: object) -> list:
            found = real_packet(p)
            self.decoded += len(found)
            return found

        def message(decode: object, data: bytes) -> object:
            self.decoded += 1
            return real_message(decode, data)

        def as_frame(picture: object, *args: object) -> object:
            self.decoded += isinstance(picture, bytes) and self.kind == "table"
            return real_as_frame(picture, *args)

        self.kind = ""
        monkeypatch.setattr(scoring, "read_log_run", run)
        monkeypatch.setattr(logs, "decoded_frames", packet)
        monkeypatch.setattr(logs, "decoded_message", message)
        monkeypatch.setattr(logs, "as_frame", as_frame)


@pytest.mark.parametrize(
    ("name", "kind", "settings"),
    [
        ("drive.mp4", "video", {}),
        ("run.mcap", "mcap", {"topic": TOPIC}),
        ("table.parquet", "table", {"image_column": COLUMN}),
    ],
)
def test_a_run_interrupted_mid_log_resumes_without_decoding_what_it_scored(
    pool: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    kind: str,
    settings: dict,
) -> None:
    how = ScoreSettings(batch_size=4, concurrency=1, workers=2, progress=False, **settings)
    paths = list_paths(str(pool / name), settings=how)
    engine = EmbeddedEngine(tiny_onnx)
    out = tmp_path / "out"
    stop = Interrupt(monkeypatch, stop=scoring.LOG_RUN)  # the log's second run of frames
    with pytest.raises(KeyboardInterrupt):
        score_into(paths, engine, out, how)
    scored = {r["frame"] for r in records(out) if r["status"] == "ok"}
    assert scored and max(scored) < scoring.LOG_RUN  # stopped in the middle of the log
    first = min(set(range(N)) - scored)
    stop.stop, stop.decoded, stop.kind = None, 0, kind
    report, table = score_into(paths, engine, out, how)
    assert report.resumed == len(scored)
    assert len(table) + len(table.errors) == N
    # From the first unscored frame on (a video from the key frame before it), nothing before.
    start = first - first % GOP if kind == "video" else first
    assert stop.decoded == N - start - (kind == "video")  # the damaged packet gives no frame


@pytest.mark.triton
def test_triton_selects_the_embedded_frames(
    pool: Path, embedded: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    from dealseg.serving.repository import write_repository
    from dealseg.serving.server import TritonServer

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo, target="python-cpu")
    with TritonServer(repo) as server:
        score(pool, tmp_path / "triton", "--url", server.url_grpc, *LOGS)
    assert (tmp_path / "triton" / "selection.txt").read_bytes() == (
        embedded / "selection.txt"
    ).read_bytes()


@pytest.mark.slow
def test_ray_splits_logs_into_ranges_and_selects_the_embedded_frames(
    pool: Path, embedded: Path, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    import dealseg.client.fleet as fleet

    monkeypatch.setattr(fleet, "BLOCK_PATHS", 8)  # a log of 24 frames in ranges of 8
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        out = tmp_path / "ray"
        score(pool, out, "--model", tiny_onnx, "--ray", "--actors", 2, *LOGS)
    finally:
        ray.shutdown()
    assert (out / "selection.txt").read_bytes() == (embedded / "selection.txt").read_bytes()
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "scores.parquet").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in records(embedded))
    assert json.loads((out / "selection.json").read_text())["pool_failed"] == 4
    np.testing.assert_equal(len(rows), 3 * N + 3)


def readme_commands() -> str:
    """The shell block of the README's "Score drive logs" section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Score drive logs") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("\n```", start)]


def test_the_readme_drive_log_commands_run(tmp_path: Path) -> None:
    """As the README says, on the shipped model: a video, a bag, and a folder of both with a
    table and a photo; the picks are extracted as images beside the selection."""
    import os
    import subprocess
    import sys

    from PIL import Image

    frames = drive_frames(N)
    write_video(tmp_path / "drive.mp4", frames, gop=GOP)
    write_mcap(tmp_path / "run.mcap", frames)
    drives = tmp_path / "drives"
    drives.mkdir()
    write_video(drives / "drive.mp4", frames, gop=GOP)
    write_mcap(drives / "run.mcap", drive_frames(N, seed=8))
    write_table(drives / "table.parquet", drive_frames(N, seed=9))
    Image.fromarray(frames[0]).save(drives / "photo.png")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "LC_ALL": "C",
    }
    done = subprocess.run(
        ["bash", "-ec", readme_commands()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    video = selection(tmp_path / "out-video")
    assert {frame_ref(r["path"]).index % 4 for r in video["rows"]} == {0}
    bag = records(tmp_path / "out-bag")
    assert sorted(r["frame"] for r in bag) == [0, 4, 8, 12, 16, 20]  # 5 of 20 frames a second
    picked = selection(tmp_path / "out-drives")["rows"]
    files = sorted(Path(r["image"]).name for r in picked if "image" in r)
    shown = done.stdout.splitlines()[-3 - len(files) :]  # head's lines, then ls's
    assert shown == [r["path"] for r in picked[:3]] + files
    for name in files:
        with Image.open(tmp_path / "out-drives" / "frames" / name) as im:
            assert im.size == (240, 180)
