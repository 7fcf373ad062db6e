"""Drive logs as pools: videos (PyAV), MCAP files and ROS 2 bags (`--topic`), and Parquet tables
of encoded frames (`--image-column`), read where they are stored.

A log expands into frame addresses, one a frame, that the rest of the client treats as paths:

    /data/drive.mp4#frame=17&t=0.566667
    /data/run.mcap#topic=/cam/front/compressed&frame=17&t=1700000000.566666667
    /data/frames.parquet#column=jpeg&frame=17

`frame` is the frame's number in the log (in presentation order, among the topic's messages, the
table's rows) before any sampling; `t` its timestamp in seconds as the log stores it (the
video's presentation time, the message's log time; a table's `timestamp` column when it has
one). An address is stable, so a re-run skips the frames an out dir holds, selection.txt lists
frames that can be found in their log, and a list of addresses is itself a POOL.

Listing reads the log's index or its packets, never a picture (`list_frames`); `--every N` and
`--fps F` sample there. Decoding goes through a `LogReader`: asked for frames in order, it seeks
once to the first of them (a video to the key frame before it) and then decodes forward, so a
resumed run decodes nothing before its first unscored frame, and a run of frames costs one pass.
A packet, message or row that does not decode is one `DecodeError` for its frame, and the reader
goes on with the next; a log that cannot be opened is listed as itself, and decoding it gives its
one error record. av, mcap and pyarrow are imported when a log is met.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    Frame,
    decode_frame,
    decode_stream,
    picture_frame,
)
from dealseg.core.pool import VIDEO_EXTENSIONS, PoolError, is_log_name, is_uri

from .settings import ScoreSettings

FRAMES = "frames"  # the out dir's folder of picked log frames as images
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
IMAGE_SCHEMAS = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
TIMESTAMP_COLUMN = "timestamp"  # a Parquet table's frame times, when it has this column
_RAW_ENCODINGS = {"rgb8": ("RGB", 3), "bgr8": ("RGB", 3), "rgba8": ("RGBA", 4)}
_RAW_ENCODINGS |= {"bgra8": ("RGBA", 4), "mono8": ("L", 1)}


class LogError(Exception):
    """A log that cannot be opened or read as asked; `reason` is its error record's text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------ addresses
@dataclass(frozen=True)
class FrameRef:
    """One frame of a log: its number, its timestamp as text (None: the log keeps none) and
    the MCAP topic or Parquet column it comes from."""

    log: str
    index: int
    stamp: str | None = None
    topic: str | None = None

    @property
    def kind(self) -> str:
        return log_kind(self.log)

    @property
    def address(self) -> str:
        fields = {"mcap": "topic", "table": "column"}
        parts = [f"{fields[self.kind]}={self.topic}"] if self.kind in fields else []
        parts.append(f"frame={self.index}")
        if self.stamp is not None:
            parts.append(f"t={self.stamp}")
        return f"{self.log}#{'&'.join(parts)}"

    @property
    def seconds(self) -> float | None:
        return None if self.stamp is None else float(self.stamp)


def log_kind(path: str) -> str:
    """video | mcap | table | bag-sqlite, by the log's name."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return {".mcap": "mcap", ".parquet": "table", ".db3": "bag-sqlite"}[ext]


def frame_ref(path: str) -> FrameRef | None:
    """The frame a pool entry addresses, or None for an image (or a bare log)."""
    log, sep, fragment = path.rpartition("#")
    if not sep or not is_log_name(log):
        return None
    fields = dict(part.partition("=")[::2] for part in fragment.split("&"))
    try:
        index = int(fields["frame"])
    except (KeyError, ValueError):
        return None
    topic = fields.get("topic", fields.get("column"))
    return FrameRef(log, index, fields.get("t"), topic)


def frame_fields(path: str) -> dict[str, Any]:
    """What a record says of a log's frame so it can be found in the log: log, frame number,
    timestamp (seconds) and the topic (or column); nothing for an image."""
    ref = frame_ref(path)
    if ref is None:
        return {}
    return {"log": ref.log, "frame": ref.index, "timestamp": ref.seconds, "topic": ref.topic}


def frame_file_name(ref: FrameRef) -> str:
    """A file name for a log's frame extracted as an image, by log and timestamp (frame number
    when it has none), with a digest of the log's path and topic: two logs of one name in two
    folders never share one. /data/drive.mp4 at 1.5 s -> drive_mp4-<digest>_t1.500000.png."""
    import hashlib

    base = _SAFE.sub("_", os.path.basename(ref.log)).strip("_")[:48] or "log"
    digest = hashlib.sha1(os.fsencode(f"{ref.log}#{ref.topic}")).hexdigest()[:8]
    when = f"t{ref.stamp}" if ref.stamp is not None else f"frame{ref.index}"
    return f"{base}-{digest}_{when}.png"


def extracted_image(out: object, path: str) -> Path | None:
    """Where a picked frame of a log is extracted in the out dir `out` (None: not a frame, or
    an out dir in object storage, where no frames are extracted)."""
    ref = frame_ref(path)
    if ref is None or not isinstance(out, Path):
        return None
    return (out / FRAMES / frame_file_name(ref)).absolute()


def extract_picks(out: object, paths: Sequence[str]) -> dict[str, str]:
    """The picked log frames among `paths` as PNGs in OUT/frames/ (a labelling tool needs a
    file), at the log's own size; files of frames no longer picked are removed. Returns the
    frames that could not be extracted, with why. Nothing for an out dir in object storage."""
    from dealseg.core.files import atomic_write

    if not isinstance(out, Path):
        return {}
    wanted = {p: f for p in paths if (f := extracted_image(out, p)) is not None}
    folder = out / FRAMES
    if folder.is_dir():
        for old in folder.iterdir():
            if old.absolute() not in wanted.values():
                old.unlink()
    failed = {}
    for path, target in wanted.items():
        if target.is_file():
            continue
        try:
            png = frame_png(path)
        except DecodeError as exc:
            failed[path] = exc.reason
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, png)
    return failed


# -------------------------------------------------------------------------------------- listing
def expand_logs(paths: Sequence[str], settings: ScoreSettings) -> list[str]:
    """Pool entries with every log replaced by the addresses of its sampled frames; a log that
    cannot be opened stays as itself (its decode is its one error record). PoolError when
    MCAP logs are met without --topic or none has it, or tables without --image-column."""
    out: list[str] = []
    misses: dict[str, LogError] = {}  # log -> why its frames are not listed
    for path in paths:
        if frame_ref(path) is not None or not is_log_name(path):
            out.append(path)
            continue
        try:
            frames = sample(list_frames(path, settings), settings)
        except LogError as exc:
            misses[path] = exc
            out.append(path)
            continue
        out.extend(ref.address for ref in frames)
    _check_choice(paths, misses, settings)
    return out


def _check_choice(
    paths: Sequence[str], misses: dict[str, LogError], settings: ScoreSettings
) -> None:
    """A missing --topic / --image-column, or one that no log of its kind has, stops the run
    with the first log's listing (`NoSuchStream` reasons)."""
    for kind, flag in (("mcap", "--topic"), ("table", "--image-column")):
        logs = [p for p in paths if is_log_name(p) and frame_ref(p) is None and log_kind(p) == kind]
        wrong = [misses[p].reason for p in logs if isinstance(misses.get(p), NoSuchStream)]
        if logs and len(wrong) == len(logs):
            given = settings.topic if kind == "mcap" else settings.image_column
            raise PoolError(wrong[0] if given else f"give {flag}: {wrong[0]}")


class NoSuchStream(LogError):
    """A log without the asked topic or column; the reason lists the ones it has."""


def list_frames(log: str, settings: ScoreSettings) -> list[FrameRef]:
    """Every frame of `log` (the topic's or column's), in order, without decoding a picture."""
    kind = log_kind(log)
    if kind == "bag-sqlite":
        raise LogError(
            "a ROS 2 bag in SQLite (.db3) is not read: convert it to MCAP with "
            "`ros2 bag convert` (or record with --storage mcap)"
        )
    if not is_uri(log) and not os.path.isfile(log):
        raise LogError("file not found: no log at this path")
    lister = {"video": _video_frames, "mcap": _mcap_frames, "table": _table_frames}[kind]
    return lister(log, settings)


def sample(frames: Sequence[FrameRef], settings: ScoreSettings) -> list[FrameRef]:
    """The frames --every N (numbers 0, N, 2N, ...) or --fps F keeps (the first frame of each
    1/F second after the log's first timestamp); all without either."""
    if settings.every is not None:
        return [f for f in frames if f.index % settings.every == 0]
    if settings.fps is None:
        return list(frames)
    if frames and frames[0].stamp is None:
        raise LogError("--fps needs timestamps, and this log has none: use --every")
    kept, last = [], None
    start = Fraction(frames[0].stamp or 0) if frames else Fraction(0)
    rate = Fraction(settings.fps)
    for f in frames:  # exact: a log time of 1.7e9 s in a float has no nanoseconds left
        slot = int((Fraction(f.stamp or 0) - start) * rate)
        if slot != last:
            kept.append(f)
            last = slot
    return kept


# ------------------------------------------------------------------------------------- decoding
class LogReader:
    """Frames of one open log, asked for in order (`read`); one thread at a time."""

    def __init__(self, log: str) -> None:
        self.log = log

    def read(self, refs: Sequence[FrameRef]) -> Iterator[tuple[FrameRef, Any]]:
        """Each of `refs` (frames of this log, in order) with its picture: a Pillow image, the
        bytes of an encoded one, or a DecodeError."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def open_log(log: str, topic: str | None) -> LogReader:
    """A reader of `log` (`topic`: the MCAP topic or Parquet column); LogError if it cannot be
    opened (a bare log in the pool: its reason)."""
    kind = log_kind(log)
    if kind == "video":
        return VideoReader(log)
    if kind == "mcap":
        return McapReader(log, topic or "")
    if kind == "table":
        return TableReader(log, topic or "")
    list_frames(log, ScoreSettings())  # the reason it is not read
    raise LogError(f"not a log this client reads: {log}")


def as_frame(picture: Any, size: tuple[int, int], max_pixels: int, resize: str) -> Frame:
    """A reader's picture as the model's frame: encoded bytes as an image file would be."""
    if isinstance(picture, _LazyImage):
        picture = picture.image()
    if isinstance(picture, DecodeError):
        raise picture
    if isinstance(picture, bytes):
        return decode_stream(io.BytesIO(picture), size, max_pixels, resize)
    return picture_frame(picture, size, max_pixels, resize)


class LogFrames:
    """The readers of a run: decodes runs of addresses of one log (`decode`), keeping each log
    open between runs so that the next run of the same log goes on where the last one ended.
    A caller uses one log from one thread at a time."""

    def __init__(self, size: tuple[int, int], settings: ScoreSettings) -> None:
        self.size, self.settings = size, settings
        self.readers: dict[tuple[str, str | None], LogReader] = {}

    def decode(self, paths: Sequence[str]) -> list[Frame | DecodeError]:
        """The frames of `paths`, addresses of one log's frames in order (or one bare log)."""
        return self.frames(self.pictures(paths))

    def pictures(self, paths: Sequence[str]) -> list[Any]:
        """The pictures of `paths` as the log's reader gives them (`LogReader.read`), read in
        order: the step that must follow the log's previous run."""
        refs = [frame_ref(p) for p in paths]
        if refs[0] is None:  # a log that could not be listed: say why, once
            return [_opening_error(paths[0], self.settings)]
        key = (refs[0].log, refs[0].topic)
        try:
            reader = self.readers.get(key) or open_log(*key)
        except LogError as exc:
            return [DecodeError(f"cannot read the log: {exc.reason}")] * len(paths)
        self.readers[key] = reader
        return [picture for _, picture in reader.read([r for r in refs if r is not None])]

    def frames(self, pictures: Sequence[Any]) -> list[Frame | DecodeError]:
        """Pictures as the model's frames (colour conversion, JPEG decoding, resizing): the
        step that runs beside the reading of the log's next run."""
        found: list[Frame | DecodeError] = []
        for picture in pictures:
            try:
                found.append(
                    as_frame(picture, self.size, self.settings.max_pixels, self.settings.resize)
                )
            except DecodeError as exc:
                found.append(exc)
        return found

    def done_with(self, log: str) -> None:
        """Close the readers of `log`: the run has no more of its frames."""
        for key in [k for k in list(self.readers) if k[0] == log]:  # others' logs may open
            self.readers.pop(key).close()

    def close(self) -> None:
        for key in list(self.readers):
            self.readers.pop(key).close()


def _opening_error(log: str, settings: ScoreSettings) -> DecodeError:
    """The error record of a log its listing left as itself: why it cannot be listed."""
    try:
        sample(list_frames(log, settings), settings)
    except LogError as exc:
        return DecodeError(f"cannot read the log: {exc.reason}")
    return DecodeError("a log, not a frame: list it as a POOL to score its frames")


def read_frame(path: str, size: tuple[int, int], max_pixels: int, resize: str) -> Frame:
    """One address's frame (maps, the report, exports): the log opened for it alone."""
    frames = LogFrames(size, ScoreSettings(max_pixels=max_pixels, resize=resize))
    try:
        (found,) = frames.decode([path])
    finally:
        frames.close()
    if isinstance(found, DecodeError):
        raise found
    return found


def frame_png(path: str) -> bytes:
    """One address's picture as PNG bytes, at the log's own size (a file for a labelling tool)."""
    ref = frame_ref(path)
    if ref is None:
        raise _opening_error(path, ScoreSettings())
    try:
        reader = open_log(ref.log, ref.topic)
    except LogError as exc:
        raise DecodeError(f"cannot read the log: {exc.reason}") from None
    try:
        ((_, picture),) = reader.read([ref])
    finally:
        reader.close()
    if isinstance(picture, _LazyImage):
        picture = picture.image()
    if isinstance(picture, DecodeError):
        raise picture
    if isinstance(picture, bytes):
        from PIL import Image

        picture = Image.open(io.BytesIO(picture)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_any(
    path: str,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: str = "stretch",
) -> Frame:
    """A pool entry as the model's frame: a local file (`decode_frame`), an object in storage
    (`decode_uri`) or a frame of a drive log (`read_frame`). Scoring, maps, the report and
    exports all read images here."""
    from .remote import decode_uri

    if frame_ref(path) is not None:
        return read_frame(path, size, max_pixels, resize)
    if is_uri(path):
        return decode_uri(path, size, max_pixels, resize)
    return decode_frame(path, size, max_pixels, resize)


def image_source(path: str) -> str | io.BytesIO:
    """What Pillow opens for a pool entry: the local path, or an object's bytes or a log's
    frame as PNG in memory (DecodeError when it cannot be read)."""
    from .remote import read_bytes

    if frame_ref(path) is not None:
        return io.BytesIO(frame_png(path))
    return io.BytesIO(read_bytes(path)) if is_uri(path) else path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Ordered(LogReader):
    """A reader over a stream of (stamp, picture-or-error) items from a position: `read` matches
    the asked frames against it, seeking (`_items`) when a frame lies behind the stream."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.items: Iterator[tuple[Any, Any]] | None = None
        self.peeked: tuple[Any, Any] | None = None
        self.last: Any = None  # the position of the last item taken

    def _items(self, ref: FrameRef) -> Iterator[tuple[Any, Any]]:
        """(position, picture | DecodeError) from `ref` on; positions sort like frames."""
        raise NotImplementedError

    def _position(self, ref: FrameRef) -> Any:
        raise NotImplementedError

    def read(self, refs: Sequence[FrameRef]) -> Iterator[tuple[FrameRef, Any]]:
        for ref in refs:
            yield ref, self._one(ref)

    def _one(self, ref: FrameRef) -> Any:
        want = self._position(ref)
        if self.items is None or (self.last is not None and want <= self.last):
            self.items, self.peeked, self.last = self._items(ref), None, None
        while True:
            try:
                item = self.peeked or next(self.items)
            except StopIteration:
                self.items = None
                return DecodeError("no such frame: the log ends before it")
            except Exception as exc:  # damaged container or chunk: this frame, then seek on
                self.items = None
                return DecodeError(f"unreadable log data: {_one_line(exc)}")
            self.peeked = None
            if item[0] < want:
                continue
            if item[0] > want:
                self.peeked = item
                return DecodeError("no picture for this frame: its data did not decode")
            self.last = item[0]
            return item[1]


# ---------------------------------------------------------------------------------------- video
@functools.cache
def _av() -> Any:
    import av

    av.logging.set_level(None)  # a damaged packet is its frame's error record, not stderr noise
    return av


def _stamp(pts: int, time_base: Fraction) -> str:
    return f"{float(pts * time_base):.6f}"


def _open_input(log: str) -> Any:
    """A log in object storage as a seekable file (`remote.open_object`); LogError in one line
    when it cannot be read (refused credentials stop the run, as for an image)."""
    from .remote import open_object

    try:
        return open_object(log)
    except DecodeError as exc:
        raise LogError(exc.reason) from None


class _Video:
    """An open video: PyAV's container and stream, and the object file it reads, if any."""

    def __init__(self, log: str) -> None:
        av = _av()
        self.file = _open_input(log) if is_uri(log) else None
        try:
            self.container = av.open(self.file if self.file is not None else log)
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._close_file()
            raise LogError(f"not a video PyAV opens ({_one_line(exc)})") from None
        if not self.container.streams.video:
            self.close()
            raise LogError("no video stream in this file")
        self.stream = self.container.streams.video[0]
        if self.stream.time_base is None:
            self.close()
            raise LogError("its video stream has no time base: frames cannot be timed")

    def _close_file(self) -> None:
        if self.file is not None:
            self.file.close()

    def close(self) -> None:
        self.container.close()
        self._close_file()


def _video_frames(log: str, settings: ScoreSettings) -> list[FrameRef]:
    """The video's frames by their packets' presentation times (demuxed, not decoded)."""
    video = _Video(log)
    stream = video.stream
    time_base = Fraction(stream.time_base)  # read while open: a closed stream's is freed memory
    try:
        pts = sorted({p.pts for p in video.container.demux(stream) if p.pts is not None})
    except _av().FFmpegError as exc:
        raise LogError(f"unreadable video: {_one_line(exc)}") from None
    finally:
        video.close()
    return [FrameRef(log, i, _stamp(p, time_base)) for i, p in enumerate(pts)]


def decoded_frames(packet: Any) -> list[Any]:
    """The frames the decoder returns for one packet (raises on damaged data)."""
    return list(packet.decode())


class VideoReader(_Ordered):
    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.video = _Video(log)
        self.container, self.stream = self.video.container, self.video.stream
        self.stream.thread_type = "SLICE"  # frame threads would blame a later frame
        self.stream.codec_context.options = {"err_detect": "explode"}  # damage raises

    def _position(self, ref: FrameRef) -> Fraction:
        if ref.stamp is None:
            raise DecodeError("a video frame's address needs its time (t=)")
        return Fraction(ref.stamp)

    def _items(self, ref: FrameRef) -> Iterator[tuple[Fraction, Any]]:
        """Decoded frames from the key frame before `ref` on, as (time, image)."""
        tb = self.stream.time_base
        target = round(Fraction(ref.stamp or 0) / tb)
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        for packet in self.container.demux(self.stream):
            try:
                frames = decoded_frames(packet)
            except _av().FFmpegError as exc:
                if packet.pts is not None:
                    when = Fraction(_stamp(packet.pts, tb))
                    yield when, DecodeError(f"corrupt video frame: {_one_line(exc)}")
                continue
            for frame in frames:
                if frame.pts is not None:
                    yield Fraction(_stamp(frame.pts, tb)), _LazyImage(frame)

    def close(self) -> None:
        self.video.close()


class _LazyImage:
    """A decoded video frame, converted to RGB only when it is asked for (`as_frame`, on the
    thread that frames it, while the log's reader decodes on)."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def image(self) -> Any:
        """The frame in RGB: FFmpeg's conversion into an array, as a Pillow image. The same
        pixels as PyAV's `to_image`, which took 4.6 ms a 960x720 frame here against 0.7."""
        from PIL import Image

        try:
            return Image.fromarray(self.frame.to_ndarray(format="rgb24"))
        except Exception as exc:
            return DecodeError(f"corrupt video frame: {_one_line(exc)}")


# ----------------------------------------------------------------------------------------- MCAP
def _ns(stamp: str) -> int:
    whole, _, part = stamp.partition(".")
    return int(whole) * 1_000_000_000 + int((part + "000000000")[:9])


def _ns_stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _open_mcap(log: str) -> tuple[Any, Any]:
    from mcap.reader import make_reader

    f = _open_input(log) if is_uri(log) else open(log, "rb")  # noqa: SIM115 - the reader's
    try:
        reader = make_reader(f)
        reader.get_header()
        return f, reader
    except Exception as exc:  # mcap raises its own errors, struct.error, EndOfFile, ...
        f.close()
        raise LogError(f"not an MCAP file ({_one_line(exc)})") from None


def image_topics(reader: Any) -> dict[str, str]:
    """topic -> message type of the log's sensor_msgs Image and CompressedImage channels."""
    summary = reader.get_summary()
    if summary is not None:
        channels = summary.channels.values()
        schemas = summary.schemas
        pairs = [(c.topic, schemas[c.schema_id].name) for c in channels if c.schema_id in schemas]
    else:  # a log without its summary (an interrupted recording): read through once
        pairs = [(c.topic, s.name) for s, c, _ in reader.iter_messages() if s is not None]
    return {topic: kind for topic, kind in sorted(set(pairs)) if kind in IMAGE_SCHEMAS}


def _mcap_frames(log: str, settings: ScoreSettings) -> list[FrameRef]:
    f, reader = _open_mcap(log)
    try:
        topics = image_topics(reader)
        if settings.topic not in topics:
            have = ", ".join(topics) or "none"
            asked = f"topic {settings.topic}" if settings.topic else "--topic"
            raise NoSuchStream(f"no {asked} in {log}; its image topics: {have}")
        times = [m.log_time for _, _, m in reader.iter_messages(topics=[settings.topic])]
    except LogError:
        raise
    except Exception as exc:
        raise LogError(f"unreadable MCAP file: {_one_line(exc)}") from None
    finally:
        f.close()
    return [FrameRef(log, i, _ns_stamp(t), settings.topic) for i, t in enumerate(times)]


def decoded_message(decode: Any, data: bytes) -> Any:
    """A ROS 2 message from its CDR bytes."""
    return decode(data)


class McapReader(_Ordered):
    def __init__(self, log: str, topic: str) -> None:
        from mcap_ros2.decoder import DecoderFactory

        super().__init__(log)
        self.file, self.reader = _open_mcap(log)
        self.topic, self.factory = topic, DecoderFactory()

    def _position(self, ref: FrameRef) -> int:
        if ref.stamp is None:
            raise DecodeError("an MCAP frame's address needs its time (t=)")
        return _ns(ref.stamp)

    def _items(self, ref: FrameRef) -> Iterator[tuple[int, Any]]:
        start = self._position(ref)
        for schema, channel, message in self.reader.iter_messages(
            topics=[self.topic], starting_at=start
        ):
            yield message.log_time, self._picture(schema, channel, message.data)

    def _picture(self, schema: Any, channel: Any, data: bytes) -> Any:
        try:
            decode = self.factory.decoder_for(channel.message_encoding, schema)
            if decode is None:
                return DecodeError(f"not a ROS 2 message ({channel.message_encoding})")
            return ros_picture(decoded_message(decode, data))
        except DecodeError as exc:
            return exc
        except Exception as exc:
            return DecodeError(f"corrupt message: {_one_line(exc)}")

    def close(self) -> None:
        self.file.close()


def ros_picture(msg: Any) -> Any:
    """A sensor_msgs CompressedImage's bytes, or an Image's pixels as a Pillow image."""
    if hasattr(msg, "format"):
        return bytes(msg.data)
    from PIL import Image

    encoding = str(msg.encoding).lower()
    if encoding not in _RAW_ENCODINGS:
        known = ", ".join(_RAW_ENCODINGS)
        raise DecodeError(f"image encoding {msg.encoding} is not read (only {known})")
    mode, channels = _RAW_ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * channels or data.size < h * step:
        raise DecodeError(f"corrupt image message: {data.size} bytes for {w}x{h} {encoding}")
    pixels = data[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if encoding.startswith("bgr"):
        pixels = pixels[..., [2, 1, 0, *([3] if channels == 4 else [])]]
    pixels = pixels[..., 0] if channels == 1 else pixels
    return Image.fromarray(np.ascontiguousarray(pixels), mode)


# -------------------------------------------------------------------------------------- Parquet
def _open_table(log: str) -> Any:
    """The table's ParquetFile (closing it closes the object file it reads, if any)."""
    import pyarrow.parquet as pq

    source = _open_input(log) if is_uri(log) else log
    try:
        return pq.ParquetFile(source)
    except Exception as exc:
        if not isinstance(source, str):
            source.close()
        raise LogError(f"not a Parquet file ({_one_line(exc)})") from None


def image_columns(table: Any) -> list[str]:
    """The table's columns that may hold encoded images: binary, or a struct with `bytes`."""
    import pyarrow as pa

    schema = table.schema_arrow
    found = []
    for field in schema:
        kind = field.type
        encoded = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
        if encoded or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
            found.append(field.name)
    return found


def _table_frames(log: str, settings: ScoreSettings) -> list[FrameRef]:
    table = _open_table(log)
    try:
        columns = image_columns(table)
        if settings.image_column not in columns:
            asked = f"column {settings.image_column}" if settings.image_column else "--image-column"
            raise NoSuchStream(
                f"no {asked} in {log}; its image columns: {', '.join(columns) or 'none'}"
            )
        stamps: list[str | None] = [None] * table.metadata.num_rows
        if TIMESTAMP_COLUMN in table.schema_arrow.names:
            stamps = _table_stamps(table)
    finally:
        table.close(force=True)
    return [FrameRef(log, i, s, settings.image_column) for i, s in enumerate(stamps)]


def _table_stamps(table: Any) -> list[str | None]:
    """A `timestamp` column as seconds: a timestamp type, or a number of seconds."""
    import pyarrow as pa

    column = table.read(columns=[TIMESTAMP_COLUMN]).column(0)
    if pa.types.is_timestamp(column.type):
        ns = column.cast(pa.timestamp("ns")).cast(pa.int64()).to_pylist()
        return [None if v is None else _ns_stamp(v) for v in ns]
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return [None if v is None else f"{float(v):.6f}" for v in column.to_pylist()]
    return [None] * len(column)


class TableReader(LogReader):
    """Rows of one image column, read a row group at a time."""

    def __init__(self, log: str, column: str) -> None:
        super().__init__(log)
        self.table, self.column = _open_table(log), column
        groups = range(self.table.num_row_groups)
        sizes = [self.table.metadata.row_group(g).num_rows for g in groups]
        self.starts = np.cumsum([0, *sizes])
        self.group: tuple[int, list[Any]] | None = None

    def read(self, refs: Sequence[FrameRef]) -> Iterator[tuple[FrameRef, Any]]:
        for ref in refs:
            yield ref, self._row(ref.index)

    def _row(self, index: int) -> Any:
        g = int(np.searchsorted(self.starts, index, side="right")) - 1
        if not 0 <= index < self.starts[-1]:
            return DecodeError(f"no such frame: the table has {self.starts[-1]} rows")
        if self.group is None or self.group[0] != g:
            try:
                rows = self.table.read_row_group(g, columns=[self.column]).column(0).to_pylist()
            except Exception as exc:
                return DecodeError(f"unreadable row group {g}: {_one_line(exc)}")
            self.group = (g, rows)
        value = self.group[1][index - int(self.starts[g])]
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            return DecodeError(f"no image in column {self.column} of this row")
        return bytes(value)

    def close(self) -> None:
        self.group = None
        self.table.close(force=True)
