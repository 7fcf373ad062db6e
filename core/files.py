"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Every writer of a finished file in dealseg (out-dir metadata and selections, checkpoints, ONNX
models, AL state, the server's state file) goes through `atomic_output`: write a temporary file
beside the target, flush it to disk, rename it over the target. If writing fails (disk full,
read-only folder, an exception in the caller) the temporary file is removed and the target is
left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], durable: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block succeeds.

    The temporary file is fsynced before the rename (unless not `durable`: pictures drawn again
    on demand, where thousands of fsyncs cost more than a power cut), and removed if anything
    fails; an OSError while writing names `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the caller's file
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    """`obj` as JSON (ASCII) written atomically to `path`."""
    text = json.dumps(obj, indent=indent, ensure_ascii=True)
    atomic_write(path, (text + "\n").encode("ascii"))
