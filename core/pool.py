"""The pool: which image files to score.

POOL is a folder (searched recursively, symlinked folders followed once, hidden entries, whose
names start with '.', skipped and counted in a warning),
a text file with one path per line (relative paths are relative to that file's folder; URIs such
as s3://bucket/key are kept as they are, read by `dealseg.client.remote`), `-` for paths on
stdin, or a single image file. Paths are `str` decoded with the file-system encoding and
`surrogateescape`, so names that are not valid UTF-8 survive; `os.fsencode` gives the bytes back.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable

import numpy as np

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
# Drive logs (client/logs.py expands each into its frames): videos, MCAP files (ROS 2 bags are
# folders of them; their SQLite .db3 files are listed to be refused with a hint) and Parquet
# tables of encoded frames.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"})
LOG_EXTENSIONS = VIDEO_EXTENSIONS | {".mcap", ".db3", ".parquet"}
_SHARD_SEED = 0x5EED  # fixed: a path's shard never depends on anything but the path


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """Whether a pool entry is a URI (s3://, gs://, http(s)://...) rather than a local path."""
    return bool(_URI.match(path))


class PoolError(ValueError):
    """POOL does not name a folder, a list of paths, `-`, or an image."""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_log_name(name: str) -> bool:
    """Whether a file is a drive log by its name (`LOG_EXTENSIONS`)."""
    return os.path.splitext(name)[1].lower() in LOG_EXTENSIONS


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def walk_folder(root: str, on_problem: Callable[[str], None] = _warn) -> list[str]:
    """Every image file and drive log under `root`, sorted by path bytes.

    Entries with an image extension are listed even when they are broken (dangling or looping
    symlinks, unreadable files) so that each gets an error record. Folders reached twice through
    symlinks (loops) are visited once; unreadable folders are reported via `on_problem`, and so
    is the number of hidden images and folders skipped (macOS `._*` files, `.thumbnails/`).
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    hidden = {"image": 0, "folder": 0}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                on_problem(f"{folder}: folder already visited (symlink loop?), skipped")
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            on_problem(f"{folder}: cannot list folder: {exc.strerror or exc}")
            continue
        for entry in entries:
            kind = "folder" if _is_dir(entry) else "image" if _is_pool_file(entry.name) else None
            if kind is None:
                continue
            if entry.name.startswith("."):
                hidden[kind] += 1
            elif kind == "folder":
                stack.append(entry.path)
            else:
                found.append(entry.path)
    if any(hidden.values()):
        on_problem(
            f"{root}: skipped {hidden['image']} hidden image file(s) and {hidden['folder']} "
            "hidden folder(s) (names starting with '.'); list them in a POOL file to score them"
        )
    found.sort(key=os.fsencode)
    return found


def _is_pool_file(name: str) -> bool:
    return is_image_name(name) or is_log_name(name)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _lines(data: bytes) -> Iterable[str]:
    for raw in data.splitlines():
        line = os.fsdecode(raw.strip(b"\r\n\t "))
        if line and not line.startswith("#"):
            yield line


def read_pool(source: str, on_problem: Callable[[str], None] = _warn) -> list[str]:
    """The pool's image and log paths in a fixed order, duplicates removed (first kept)."""
    if source == "-":
        paths = list(_lines(sys.stdin.buffer.read()))
    elif os.path.isdir(source):
        return walk_folder(source, on_problem)
    elif _is_pool_file(source):
        paths = [source]
    elif os.path.isfile(source):
        base = os.path.dirname(source)
        with open(source, "rb") as f:
            paths = [p if is_uri(p) else os.path.join(base, p) for p in _lines(f.read())]
    else:
        raise PoolError(
            f"POOL {source!r} is not a folder, a text file of paths, an image, or '-' (stdin)"
        )
    return list(dict.fromkeys(paths))


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} is not 'i/n' (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= i < n, e.g. 0/2 and 1/2 for two shards")
    return i, n


def shard_of(paths: list[str], n: int) -> np.ndarray:
    """[N] shard number of each path: a hash of the path alone, so listings may differ."""
    from .ranking import path_hash

    return np.minimum((path_hash(paths, _SHARD_SEED) * n).astype(np.int64), n - 1)


def take_shard(paths: list[str], i: int, n: int) -> list[str]:
    """The deterministic slice `i` of `n` of `paths` (order kept); shards partition the pool."""
    if n == 1:
        return paths
    mine = shard_of(paths, n) == i
    return [p for p, keep in zip(paths, mine, strict=True) if keep]
