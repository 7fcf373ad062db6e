"""Drive logs: `deal-client score` on a video and an MCAP file vs the same frames as JPEG files,
and peak memory for a 10x longer log, one run.

    .venv/bin/python bench/logs.py [--quick] [--count N] [--reps R]

The frames are N street scenes at 960x720 (bench/pipeline.py's cached JPEGs). The same frames
become an H.264 MP4 (a key frame every 30 frames, 20 fps) and a ROS 2 MCAP file whose
CompressedImage messages hold the JPEG files' bytes. Timed in alternation, each a
`deal-client score` on the shipped model (its own img/s: scoring only):

    jpeg    the folder of JPEG files
    video   the MP4 (PyAV decodes every frame; no JPEG draft-mode shortcut)
    mcap    the MCAP file, --topic /cam/front/compressed

Same selection: the MCAP run against the JPEG folder (the same bytes), the video run against the
video's frames extracted losslessly to PNG files and scored as a folder (by frame number).
Peak RSS: `deal-client score` of the video of N/2 frames and of one 10x longer (the same frames
repeated), each in a fresh process (its VmHWM from the kernel's rusage of the child).
Targets: video and mcap >= 90% of jpeg's img/s; the 10x log's peak RSS within 10%.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import CACHE, PYTHON, ROOT, markdown_table, median, write_result
from pipeline import client_run, make_jpegs

sys.path.insert(0, str(ROOT / "tests"))
from drive_logs import TOPIC, write_video  # noqa: E402 - the tests' log writers

WORK = CACHE / "logs"
CLIENT = str(Path(PYTHON).parent / "deal-client")
GOP = 30


def pictures(paths: list[Path]) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def write_mcap_of_jpegs(path: Path, paths: list[Path]) -> Path:
    """A ROS 2 MCAP log whose CompressedImage messages hold the JPEG files' bytes, 20 fps."""
    from drive_logs import COMPRESSED_IMAGE, PERIOD_NS, START_NS
    from mcap_ros2.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        schema = writer.register_msgdef("sensor_msgs/msg/CompressedImage", COMPRESSED_IMAGE)
        for i, jpeg in enumerate(paths):
            t = START_NS + i * PERIOD_NS
            header = {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": "cam"}
            message = {"header": header, "format": "jpeg", "data": jpeg.read_bytes()}
            writer.write_message(TOPIC, schema, message, log_time=t, publish_time=t)
        writer.finish()
    return path


def extract_pngs(video: Path, folder: Path) -> Path:
    """The video's frames decoded by PyAV and saved losslessly, named by frame number."""
    import av

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(folder / f"{i:05d}.png")
    return folder


def picked_frames(out: Path) -> list[int]:
    """The frame numbers of a selection, in rank order (a log's addresses or numbered files)."""
    from dealseg.client.logs import frame_ref

    found = []
    for line in (out / "selection.txt").read_text().splitlines():
        ref = frame_ref(line)
        found.append(ref.index if ref is not None else int(Path(line).stem.split("_")[-1]))
    return found


def peak_rss_kib(pool: Path, out: Path) -> int:
    """VmHWM of one `deal-client score` of `pool`, run alone in a fresh child."""
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "assert done.returncode == 0, done.stderr.decode()[-2000:]\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [CLIENT, "score", str(pool), "-k", "10", "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [PYTHON, "-c", code, *command], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 frames, one repetition")
    parser.add_argument("--count", type=int, default=None, help="frames (default 200)")
    parser.add_argument("--reps", type=int, default=None, help="alternations (default 2)")
    args = parser.parse_args()
    count = args.count or (48 if args.quick else 200)
    reps = args.reps or (1 if args.quick else 2)
    WORK.mkdir(parents=True, exist_ok=True)

    jpegs = make_jpegs(count)
    folder = WORK / f"jpeg_{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for p in jpegs:
        (folder / p.name).symlink_to(p)
    frames = pictures(jpegs)
    video = write_video(WORK / f"drive_{count}.mp4", frames, gop=GOP)
    mcap = write_mcap_of_jpegs(WORK / f"drive_{count}.mcap", jpegs)
    cases = {
        "jpeg": (folder, []),
        "video": (video, []),
        "mcap": (mcap, ["--topic", TOPIC]),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, (pool, extra) in cases.items():
            rate, _ = client_run(pool, count, WORK / f"out_{name}", extra)
            rates[name].append(rate)
    pngs = extract_pngs(video, WORK / f"png_{count}")
    client_run(pngs, count, WORK / "out_png", [])
    same_mcap = picked_frames(WORK / "out_mcap") == picked_frames(WORK / "out_jpeg")
    same_video = picked_frames(WORK / "out_video") == picked_frames(WORK / "out_png")

    short = frames[: count // 2]
    short_video = write_video(WORK / f"long_1x_{len(short)}.mp4", short, gop=GOP)
    long_video = write_video(WORK / f"long_10x_{len(short)}.mp4", short * 10, gop=GOP)
    rss_short = peak_rss_kib(short_video, WORK / "out_rss_1x")
    rss_long = peak_rss_kib(long_video, WORK / "out_rss_10x")

    jpeg = median(rates["jpeg"])
    rows = [
        [
            name,
            f"{median(r):.2f}",
            f"{100 * median(r) / jpeg:.0f}%",
            " ".join(f"{v:.2f}" for v in r),
            {"jpeg": "-", "video": same_video, "mcap": same_mcap}[name],
        ]
        for name, r in rates.items()
    ]
    table = markdown_table(
        ["pool", "img/s (median)", "of jpeg", "runs", "same selection as extracted frames"], rows
    )
    memory = markdown_table(
        ["video log", "frames scored", "peak RSS MiB"],
        [
            ["1x", len(short), f"{rss_short / 1024:.1f}"],
            ["10x", 10 * len(short), f"{rss_long / 1024:.1f}"],
            ["10x / 1x", "", f"{rss_long / rss_short:.3f}"],
        ],
    )
    notes = [
        f"{count} street frames at 960x720; the shipped model; `deal-client score` defaults "
        "(batch 8, 4 decode threads, 2 requests in flight); cases alternated, "
        f"{reps} repetition(s); img/s is the client's own (scoring only).",
        "Targets: video and mcap >= 90% of jpeg's img/s; 10x log peak RSS within 10% of 1x.",
        "On a shared machine (another job's training study ran niced beside it: see the load "
        "average) absolute img/s drift between repetitions; the ratios are of alternated runs.",
    ]
    write_result("logs", "Drive logs vs JPEG files", table + "\n\n" + memory, notes)


if __name__ == "__main__":
    main()
