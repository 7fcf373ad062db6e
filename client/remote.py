"""Pools in object storage: s3://, gs:// (pyarrow's file systems) and http(s):// (urllib).

POOL may be a prefix (`s3://bucket/frames/`, listed recursively), one image's URI, or a list
file (local or `.txt` in object storage) of URIs; records keep the URI as their path. An object
that is missing or unreadable costs its one error record (`DecodeError`); credentials that the
store refuses stop the run with one line (`AccessDenied`), checked on the first object before
scoring starts.

Credentials and endpoints come from the standard environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (an
S3-compatible server such as MinIO); GOOGLE_APPLICATION_CREDENTIALS for gs://, or
STORAGE_EMULATOR_HOST (a GCS-compatible server such as fake-gcs-server, spoken to without
credentials, as Google's own clients do). On a Ray cluster every worker reads its own
environment.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from dealseg.core.decode import (
    DecodeError,
    Frame,
    decode_stream,
)
from dealseg.core.pool import PoolError, is_image_name, is_log_name, is_uri

HTTP_TIMEOUT = 30.0  # seconds per http(s) request
_DENIED = (  # how S3 (and pyarrow's AWS SDK errors) say that it refuses the credentials
    "AccessDenied",
    "ACCESS_DENIED",
    "InvalidAccessKeyId",
    "INVALID_ACCESS_KEY_ID",
    "SignatureDoesNotMatch",
    "SIGNATURE_DOES_NOT_MATCH",
    "HTTP response code 403",
)


class AccessDenied(RuntimeError):
    """The object store refused our credentials: no object of the pool can be read."""


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def _s3() -> Any:
    """pyarrow's S3 file system for the environment's credentials and endpoint (one for each
    set of them: a process may change its environment)."""
    env = os.environ.get
    return _s3_for(
        env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
        env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        env("AWS_SESSION_TOKEN"),
    )


@functools.lru_cache(maxsize=8)
def _s3_for(
    endpoint: str | None,
    region: str | None,
    key: str | None,
    secret: str | None,
    token: str | None,
) -> Any:
    import pyarrow.fs as pafs

    options: dict[str, Any] = {"region": region}
    if key:  # else the AWS SDK's own chain: ~/.aws, an instance profile, ...
        options.update(access_key=key, secret_key=secret or "", session_token=token)
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        options.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


@functools.lru_cache(maxsize=4)
def _gcs_for(emulator: str | None) -> Any:
    """pyarrow's GCS file system: Google's default credentials, or the GCS-compatible server at
    `emulator` (STORAGE_EMULATOR_HOST, http://host:port) without any."""
    import pyarrow.fs as pafs

    if not emulator:
        return pafs.GcsFileSystem()
    scheme, _, host = emulator.rpartition("://")
    return pafs.GcsFileSystem(
        anonymous=True, scheme=scheme or "http", endpoint_override=host.rstrip("/")
    )


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow file system, path in it) of an s3:// or gs:// URI."""
    scheme = scheme_of(uri)
    path = uri.split("://", 1)[1]
    if scheme == "s3":
        return _s3(), path
    if scheme in ("gs", "gcs"):
        return _gcs_for(os.environ.get("STORAGE_EMULATOR_HOST")), path
    raise PoolError(f"{uri}: unsupported scheme {scheme}:// (s3, gs, http, https)")


def is_denied(exc: BaseException) -> bool:
    """Whether a store error says that it refuses our credentials."""
    text = str(exc)
    return isinstance(exc, PermissionError) or any(word in text for word in _DENIED)


def read_bytes(uri: str) -> bytes:
    """The bytes of the object at `uri`; DecodeError when it cannot be read, AccessDenied when
    the store refuses the credentials."""
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise DecodeError("file not found: the server answered 404") from None
            raise DecodeError(f"unreadable: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DecodeError(f"unreadable: {getattr(exc, 'reason', exc)}") from None
    fs, path = filesystem(uri)
    with _store_errors(uri), fs.open_input_stream(path) as f:
        return f.read()


def open_object(uri: str) -> Any:
    """The object at `uri` as a seekable file (pyarrow's: reads the byte ranges asked for, so
    a seek reads nothing before it); errors as `read_bytes`'s."""
    fs, path = filesystem(uri)
    with _store_errors(uri):
        return fs.open_input_file(path)


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """A store's errors as DecodeError (missing, unreadable) or AccessDenied (credentials)."""
    try:
        yield
    except FileNotFoundError:
        raise DecodeError("file not found: no object at this URI") from None
    except OSError as exc:
        if is_denied(exc):
            raise AccessDenied(access_message(uri, exc)) from None
        raise DecodeError(f"unreadable: {one_line(exc)}") from None


def decode_uri(uri: str, size: tuple[int, int], max_pixels: int, resize: str) -> Frame:
    """`decode_frame` for an object in storage: its bytes read whole, then decoded."""
    if "\n" in uri or "\r" in uri:
        raise DecodeError("URI contains a line break (\\n or \\r): it cannot be listed")
    data = read_bytes(uri)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return decode_stream(io.BytesIO(data), size, max_pixels, resize)


def one_line(exc: BaseException) -> str:
    """The first non-blank line of an error's text (its type when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def access_message(uri: str, exc: BaseException) -> str:
    return (
        f"{uri}: the object store refused our credentials ({one_line(exc)}); check "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible "
        "server)"
    )


def list_uri(source: str) -> list[str]:
    """A URI POOL's image and log URIs: itself (an image or a drive log), the lines of a `.txt`
    list, or every image and log object under a prefix (hidden names, starting with '.',
    skipped), sorted."""
    if is_image_name(source) or is_log_name(source):
        return [source]
    scheme = scheme_of(source)
    if source.endswith(".txt"):
        base = source.rsplit("/", 1)[0]
        try:
            text = read_bytes(source)
        except DecodeError as exc:
            raise PoolError(f"POOL {source}: {exc.reason}") from None
        lines = (os.fsdecode(line.strip()) for line in text.splitlines())
        return [
            line if is_uri(line) else f"{base}/{line}"
            for line in lines
            if line and not line.startswith("#")
        ]
    if scheme in ("http", "https"):
        raise PoolError(f"POOL {source}: an http(s) POOL is one image or a .txt list of URIs")
    import pyarrow.fs as pafs

    fs, path = filesystem(source)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
    except FileNotFoundError:
        raise PoolError(f"POOL {source}: no such bucket or prefix") from None
    except OSError as exc:
        if is_denied(exc):
            raise AccessDenied(access_message(source, exc)) from None
        raise PoolError(f"POOL {source}: cannot list: {one_line(exc)}") from None
    found, hidden = [], 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if not (is_image_name(info.path) or is_log_name(info.path)):
            continue
        if any(part.startswith(".") for part in info.path.split("/")):
            hidden += 1
            continue
        found.append(f"{scheme}://{info.path}")
    if hidden:
        print(f"warning: {source}: skipped {hidden} hidden image object(s)", file=sys.stderr)
    return sorted(found, key=os.fsencode)


def check_access(uris: list[str]) -> None:
    """Raise AccessDenied when the store refuses the credentials for the first object URI (an
    object that is merely missing is left to its error record)."""
    first = next((u for u in uris if scheme_of(u) in ("s3", "gs", "gcs")), None)
    if first is None:
        return
    fs, path = filesystem(first)
    try:
        fs.get_file_info(path)
    except OSError as exc:
        if is_denied(exc):
            raise AccessDenied(access_message(first, exc)) from None
