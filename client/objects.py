"""Out dirs in object storage: `--out s3://bucket/prefix` (or gs://) as an `ObjectPath`.

An `ObjectPath` does the few things of `pathlib.Path` an out dir's code does (`/`, name,
parent, exists, read, write, list, rename), on pyarrow's file system of the URI
(`remote.filesystem`: credentials and endpoint from the AWS_* / GOOGLE_* variables), so
`outdir` and `parquet` read and write an out dir in a bucket as they do a local folder. A file
is written with one upload: an object appears whole or not at all, as `core.files.atomic_output`
makes a local file appear. Object storage has no folders: `mkdir` does nothing, and a "folder"
exists while an object lies under it.

Errors of the store end in one line: StoreError naming the URI (a missing bucket, refused
credentials, an unreachable endpoint); a missing object is FileNotFoundError, as for a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dealseg.core.files import atomic_write
from dealseg.core.pool import is_uri

from .records import StoreError
from .remote import access_message, filesystem, is_denied, one_line, scheme_of

OBJECT_SCHEMES = ("s3", "gs", "gcs")
NO_BUCKET = "no bucket {} (create it, or check the URI)"


@dataclass(frozen=True)
class ObjectPath:
    """An object, or a prefix ("folder"), at `uri` (scheme://bucket/key, no trailing /)."""

    uri: str
    # The file system to use instead of this process's (`pinned`); none: built from the URI
    # and this process's environment (endpoint, region, keys).
    pinned_fs: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        given = self.uri
        object.__setattr__(self, "uri", given.rstrip("/"))
        if not self.bucket:
            raise ValueError(f"{given}: no bucket in the URI (s3://BUCKET/PREFIX)")

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.uri}/{name}", self.pinned_fs)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.uri.rsplit("/", 1)[0], self.pinned_fs)

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def key(self) -> str:
        """bucket/key: the path in the file system (`fs`)."""
        return self.uri.partition("://")[2]

    @property
    def fs(self) -> Any:
        return self.pinned_fs if self.pinned_fs is not None else filesystem(self.uri)[0]

    def pinned(self) -> ObjectPath:
        """This path with this process's file system fixed in it: a process it is sent to (a
        Ray worker) reaches the store as this one does (the same endpoint, region and keys)."""
        return ObjectPath(self.uri, self.fs)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def absolute(self) -> ObjectPath:
        return self

    # ------------------------------------------------------------------------------ queries
    def _type(self) -> Any:
        return self._call("read", lambda: self.fs.get_file_info(self.key).type)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.Directory

    def iterdir(self) -> Iterator[ObjectPath]:
        """The objects and prefixes right under this prefix (none when there are none)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.key, allow_not_found=True)
        infos = self._call("list", lambda: self.fs.get_file_info(selector))
        scheme = scheme_of(self.uri)
        return (ObjectPath(f"{scheme}://{info.path}", self.pinned_fs) for info in infos)

    # --------------------------------------------------------------------------- read, write
    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.key) as f:
                return f.read()

        return self._call("read", read)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """The object, written whole in one upload (a reader sees the old one or this one)."""

        def write() -> None:
            with self.fs.open_output_stream(self.key) as f:
                f.write(data)

        self._call("write", write)

    def write_with(self, fill: Callable[[Any], object]) -> None:
        """The object as `fill` writes it into a pyarrow output stream, held in memory until
        `fill` returns (an upload that fails half-way would leave half an object)."""
        import pyarrow as pa

        buffer = pa.BufferOutputStream()
        fill(buffer)
        self.write_bytes(buffer.getvalue().to_pybytes())

    def open_input(self) -> Any:
        """A pyarrow random-access file of the object (for pyarrow.parquet)."""
        return self._call("read", lambda: self.fs.open_input_file(self.key))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: a prefix needs no folder (the bucket must exist: `check_bucket`)."""

    def rename(self, target: ObjectPath) -> ObjectPath:
        """Move the object to `target` (object stores copy it, then delete this one)."""
        self._call("move", lambda: self.fs.move(self.key, target.key))
        return target

    def check_bucket(self) -> None:
        """StoreError in one line unless the bucket exists and our credentials may list it."""
        import pyarrow.fs as pafs

        found = self._call("reach", lambda: self.fs.get_file_info(self.bucket).type)
        if found == pafs.FileType.NotFound:
            raise StoreError(f"{self.uri}: {NO_BUCKET.format(self.bucket)}")

    def _call(self, doing: str, run: Callable[[], Any]) -> Any:
        """run(), its store errors as one line (FileNotFoundError kept: a missing object)."""
        try:
            return run()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if is_denied(exc):
                raise StoreError(access_message(self.uri, exc)) from None
            text = one_line(exc)
            if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
                raise StoreError(f"{self.uri}: {NO_BUCKET.format(self.bucket)}") from None
            raise StoreError(f"{self.uri}: cannot {doing}: {text}") from None


Location = Path | ObjectPath  # where an out dir (or one of its files) is


def is_object_uri(where: object) -> bool:
    """Whether `where` names an object in storage (s3://, gs://), not a local path."""
    return isinstance(where, str) and is_uri(where) and scheme_of(where) in OBJECT_SCHEMES


def location(where: str | os.PathLike[str] | ObjectPath) -> Location:
    """An out dir (or a file of one) as given: an ObjectPath for an s3:// or gs:// URI, a
    local Path for anything else (as `Path(where)`)."""
    if isinstance(where, ObjectPath):
        return where
    if is_object_uri(where):
        return ObjectPath(str(where))
    return Path(where)


def write_file(path: Location, data: bytes) -> None:
    """`data` as the file or object `path`, atomically: `atomic_write`, or one upload."""
    if isinstance(path, ObjectPath):
        path.write_bytes(data)
    else:
        atomic_write(path, data)
