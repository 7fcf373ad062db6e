"""Small drive logs for the tests and the bench, each with one damaged frame when asked: a video
(PyAV), an MCAP file of ROS 2 image messages (mcap-ros2-support) and a Parquet table of JPEGs."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

TOPIC = "/cam/front/compressed"
RAW_TOPIC = "/cam/front/image_raw"
COLUMN = "jpeg"
START_NS = 1_700_000_000_000_000_000  # the MCAP log's first frame
PERIOD_NS = 50_000_000  # 20 frames a second
GARBAGE = b"\x00\x00\x01\x65 not the picture this packet was" * 8

_HEADER = """std_msgs/Header header
"""
_DEPENDENCIES = """================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""
COMPRESSED_IMAGE = _HEADER + "string format\nuint8[] data\n" + _DEPENDENCIES
IMAGE = (
    _HEADER
    + "uint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\n"
    + "uint8[] data\n"
    + _DEPENDENCIES
)
STRING = "string data\n"


def street_frames(n: int, size: tuple[int, int] = (64, 80), seed: int = 0) -> list[np.ndarray]:
    """n uint8 RGB [H, W, 3] frames of a drive: sky, road and a few objects moving across."""
    rng = np.random.default_rng(seed)
    h, w = size
    objects = [(rng.integers(0, h - 8), rng.integers(1, 4), rng.integers(0, 256, 3)) for _ in "abc"]
    frames = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        horizon = h // 3 + (i % 7)
        img[:horizon] = (150 + i % 50, 180, 220)
        img[horizon:] = (70, 70 + (i * 3) % 60, 80)
        for top, speed, colour in objects:
            x = int((i * speed * 3) % (w - 10))
            img[top : top + 8, x : x + 10] = colour
        noise = rng.normal(0, 8, img.shape)
        frames.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    return frames


def drive_frames(n: int, size: tuple[int, int] = (180, 240), seed: int = 7) -> list[np.ndarray]:
    """n frames of one drive by the street renderer (the camera moves on each frame): pictures
    the shipped model knows, where `street_frames` are off its domain."""
    from dealseg.training.streets.render import Shot, render_scene

    return [
        render_scene(np.random.default_rng(seed), size, Shot(frame=i, frames=n))[0]
        for i in range(n)
    ]


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    corrupt: int | None = None,
    gop: int = 5,
    lossless: bool = False,
) -> Path:
    """An H.264 video (MP4 or MKV by the name; a key frame every `gop` frames, no B-frames) at
    20 fps; the packet of frame `corrupt` replaced by garbage; `lossless`: qp 0, so a picture
    held for several frames decodes the same each time."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "bf": "0", "keyint_min": str(gop), "sc_threshold": "0"}
        if lossless:
            stream.options = {**stream.options, "qp": "0"}
        for i, pixels in enumerate([*frames, None]):
            frame = None if pixels is None else av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                if corrupt is not None and packet.pts == corrupt:
                    bad = av.Packet(GARBAGE)
                    bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                    bad.stream = stream
                    packet = bad
                container.mux(packet)
            del i
    return path


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_mcap(path: Path, frames: Sequence[np.ndarray], corrupt: int | None = None) -> Path:
    """A ROS 2 MCAP log: `TOPIC` CompressedImage JPEGs (message `corrupt` holds garbage),
    `RAW_TOPIC` the same frames as rgb8 Images, and a /status string topic."""
    from mcap_ros2.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f, chunk_size=16 * 1024)
        compressed = writer.register_msgdef("sensor_msgs/msg/CompressedImage", COMPRESSED_IMAGE)
        raw = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE)
        status = writer.register_msgdef("std_msgs/msg/String", STRING)
        for i, pixels in enumerate(frames):
            t = START_NS + i * PERIOD_NS
            header = {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": "cam"}
            data = GARBAGE if i == corrupt else jpeg(pixels)
            message = {"header": header, "format": "jpeg", "data": data}
            writer.write_message(TOPIC, compressed, message, log_time=t, publish_time=t)
            h, w = pixels.shape[:2]
            image = {
                **{"header": header, "height": h, "width": w, "encoding": "rgb8"},
                **{"is_bigendian": 0, "step": 3 * w, "data": pixels.tobytes()},
            }
            writer.write_message(RAW_TOPIC, raw, image, log_time=t, publish_time=t)
            writer.write_message("/status", status, {"data": f"ok {i}"}, log_time=t)
        writer.finish()
    return path


def write_table(
    path: Path, frames: Sequence[np.ndarray], corrupt: int | None = None, group: int = 8
) -> Path:
    """A Parquet table: `COLUMN` JPEG bytes (row `corrupt` garbage), a `timestamp` column in
    seconds and a camera name; row groups of `group` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [GARBAGE if i == corrupt else jpeg(p) for i, p in enumerate(frames)]
    table = pa.table(
        {
            "timestamp": [i * 0.05 for i in range(len(frames))],
            "camera": ["front"] * len(frames),
            COLUMN: pa.array(data, pa.binary()),
        }
    )
    pq.write_table(table, path, row_group_size=group)
    return path
