"""Inference engines: the exported graph run in-process (ONNX Runtime) or by Triton servers.

An engine has a `spec` (the model's `ModelSpec`, read from the model itself and checked against
the contract before anything is streamed) and one method:

    infer(images [B, H, W, 3] uint8, outputs, boxes [B, 4] int32 | None)
        -> {name: array with batch axis first}

`boxes` are the valid boxes of letterboxed frames (None: every frame is all picture).

`infer` may be called from several threads at once. Transport failures that outlast the retries
raise `EngineError`; the scorer treats that as fatal (exit 1) with every finished result on disk.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from dealseg.core.contract import (
    MODEL_NAME,
    SPECS,
    ContractError,
    ModelSpec,
    check_io,
    model_inputs,
    session_spec,
    version_metadata,
)

T = TypeVar("T")
_ORT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_WIRE_DTYPES = {t.wire_dtype: t.dtype for t in SPECS.values()}


class EngineError(RuntimeError):
    """The engine cannot run (unreachable server, failed request after retries, bad model)."""


class EndpointError(ValueError):
    """A --url that does not name a Triton endpoint this client can talk to (a usage error)."""


@dataclass(frozen=True)
class Endpoint:
    """One Triton server: `address` is host:port as tritonclient takes it; `tls` from https://."""

    address: str
    tls: bool = False


_SCHEMES = {  # scheme -> (protocol it implies or None for either, TLS)
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
    "http": ("http", False),
    "https": (None, True),
}


def parse_url(url: str, protocol: str) -> Endpoint:
    """`[scheme://]host:port` -> Endpoint, or EndpointError saying what is wrong.

    https:// (and grpcs://) turn TLS on; http:// with gRPC and grpc:// with HTTP are refused
    with the fix; a host without a port, a path, or a port outside 1..65535 are refused.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    if scheme and scheme.lower() not in _SCHEMES:
        raise EndpointError(
            f"{url!r}: unknown scheme {scheme!r}; use host:port, http(s)://, grpc://"
        )
    implied, tls = _SCHEMES.get(scheme.lower(), (None, False))
    if implied is not None and implied != protocol:
        flag = "--protocol http" if implied == "http" else "--protocol grpc (the default)"
        raise EndpointError(f"{url!r} is a Triton {implied.upper()} endpoint: add {flag}")
    if "/" in rest.rstrip("/"):
        raise EndpointError(f"{url!r}: give host:port only, without a path")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or host.endswith(":") and not host.startswith("["):
        default = 8000 if protocol == "http" else 8001
        raise EndpointError(f"{url!r}: needs a port, e.g. {rest or 'host'}:{default}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"{url!r}: port {port!r} is not a number in 1..65535")
    return Endpoint(f"{host}:{int(port)}", tls)


class Engine(Protocol):
    spec: ModelSpec
    max_batch_size: int | None  # images per infer call at most; None: any number

    def infer(
        self, images: np.ndarray, outputs: Sequence[str], boxes: np.ndarray | None = None
    ) -> dict[str, np.ndarray]: ...

    def describe(self) -> str: ...  # where it runs, for the run's first line

    def close(self) -> None: ...


def default_model_path() -> Path:
    """The shipped model, `deal/1/model.onnx` of `core.modelfile.shipped_repository()`:
    installed with the package, or in the source checkout."""
    from dealseg.core.modelfile import shipped_repository

    repo = shipped_repository()
    if repo is None:
        raise EngineError(
            "no shipped model in this dealseg installation (dealseg/model_repository/ or a "
            "checkout's model_repository/); pass --model PATH"
        )
    return repo / MODEL_NAME / "1" / "model.onnx"


def _check_batch(images: np.ndarray, spec: ModelSpec) -> None:
    want = (*spec.input_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(
            f"images must be uint8 [B, {want[0]}, {want[1]}, 3], got {images.dtype} "
            f"{list(images.shape)}"
        )


# ------------------------------------------------------------------------------------ embedded
class EmbeddedEngine:
    """The exported ONNX graph run in this process by ONNX Runtime."""

    def __init__(
        self, model_path: str | os.PathLike | None = None, threads: int | None = None
    ) -> None:
        """`threads`: ONNX Runtime's intra-op threads (default: one per core); a process
        that shares the machine with others (a Ray actor) sets its share."""
        import onnxruntime as ort

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            hint = (
                "pass --model PATH, or export one with `deal-export onnx`"
                if model_path is None
                else "check --model"
            )
            raise EngineError(f"no ONNX model at {path}; {hint}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; ORT's warnings are not the user's business
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = [p for p in _ORT_PROVIDERS if p in ort.get_available_providers()]
        if is_torch_checkpoint(path):
            raise EngineError(
                f"{path} is a PyTorch checkpoint, not an ONNX model: export it with "
                f"`deal-export onnx --checkpoint {path} --out model.onnx` and score with that"
            )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"{path}: not a loadable ONNX model: {exc}") from exc
        self.path = path
        self.max_batch_size = None
        # On the CPU, one run already uses every core (ORT's default intra-op threads); two runs
        # at once only oversubscribe them (measured: 25% fewer img/s at the client's default
        # concurrency 2 on 2 cores, bench/pipeline.py). Such runs take turns; callers still
        # overlap decoding and writing with inference.
        on_cpu = self.session.get_providers() == ["CPUExecutionProvider"]
        self._one_run = threading.Lock() if on_cpu else contextlib.nullcontext()
        try:
            self.spec = session_spec(self.session)
        except ContractError as exc:
            raise EngineError(f"{path}: {exc}") from exc

    def infer(
        self, images: np.ndarray, outputs: Sequence[str], boxes: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        _check_batch(images, self.spec)
        feeds = model_inputs(self.spec, images, boxes)
        with self._one_run:
            values = self.session.run(list(outputs), feeds)
        return dict(zip(outputs, values, strict=True))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"ONNX Runtime ({', '.join(self.session.get_providers())}) on {self.path}"


# -------------------------------------------------------------------------------------- triton
def _is_transient(exc: BaseException) -> bool:
    """Connection refused / reset, server unavailable, or a timeout: worth retrying."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status", None)
    text = f"{status() if callable(status) else ''} {exc}".lower()
    return any(word in text for word in _TRANSIENT)


# Words of the errors worth retrying, from gRPC statuses, geventhttpclient (HTTP) and sockets.
_TRANSIENT = (
    "unavailable",
    "deadline",
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "connection closed",  # geventhttpclient: the server went away mid-request
    "connection aborted",
    "remote end closed",
    "failed to connect",
    "broken pipe",
    "socket closed",
    "503",
    "502",
    "504",
    "server is not ready",
    "no route",
)


MAX_BACKOFF = 10.0  # seconds between two attempts at most


def with_retries(
    call: Callable[[], T], retries: int, backoff: float, what: str, on_retry: Callable[[], None]
) -> T:
    """Run `call`; on a transient error retry up to `retries` times, sleeping backoff * 2**n
    (at most MAX_BACKOFF) between attempts."""
    for attempt in itertools.count():
        try:
            return call()
        except Exception as exc:
            if not _is_transient(exc):
                raise EngineError(f"{what} failed: {_short(exc)}") from exc
            if attempt >= retries:
                raise EngineError(
                    f"{what} failed after {attempt + 1} attempts: {_short(exc)}"
                ) from exc
            time.sleep(min(backoff * 2**attempt, MAX_BACKOFF))
            on_retry()
    raise AssertionError("unreachable")


def is_torch_checkpoint(path: str | Path) -> bool:
    """Is `path` a file of torch.save (a zip archive holding a data.pkl)?"""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


class TritonEngine:
    """A DEAL model served by one or more Triton servers (gRPC or HTTP).

    The model is `model_name` (default `deal`) at `model_version`, or at the highest version
    the servers have ready; every request names that version, and every response is checked to
    come from it. Requests go round-robin over `urls`; a failed request is retried on the next
    URL with exponential backoff. Each thread gets its own client per URL (the HTTP client is
    not thread-safe). The model's spec comes from the served config's parameters of that
    version and its served inputs/outputs are checked against the contract.
    """

    def __init__(
        self,
        urls: Sequence[str],
        protocol: str = "grpc",
        *,
        model_name: str = MODEL_NAME,
        model_version: str | None = None,
        ssl: bool = False,
        root_certs: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        shm: bool = False,
    ) -> None:
        if not urls:
            raise ValueError("TritonEngine needs at least one URL")
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        endpoints = [parse_url(u, protocol) for u in urls]
        self.urls = [e.address for e in endpoints]
        self.tls = {e.address: e.tls or ssl or bool(root_certs) for e in endpoints}
        self.protocol, self.root_certs = protocol, root_certs
        self.model_name, self.model_version = model_name, model_version or ""
        self.headers = dict(headers or {})
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._local = threading.local()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._all_clients: list[Any] = []
        self.shm = shm  # tensors through system shared memory (a server on this host)
        self._regions: list[ShmRegions] = []
        self.spec = self._read_spec()

    # -- clients ----------------------------------------------------------------------------
    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _client(self, url: str) -> Any:
        clients = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = self._connect(url)
            with self._lock:
                self._all_clients.append(clients[url])
        return clients[url]

    def _connect(self, url: str) -> Any:
        module = self._module()
        if self.protocol == "grpc":
            return module.InferenceServerClient(
                url, ssl=self.tls[url], root_certificates=self.root_certs
            )
        factory = None
        if self.root_certs:
            import ssl as _ssl

            cafile = self.root_certs

            def factory() -> Any:
                return _ssl.create_default_context(cafile=cafile)

        return module.InferenceServerClient(
            url,
            connection_timeout=self.timeout,
            network_timeout=self.timeout,
            ssl=self.tls[url],
            ssl_context_factory=factory,
        )

    def _next_url(self) -> str:
        with self._lock:
            return self.urls[next(self._turn) % len(self.urls)]

    def _call(self, what: str, fn: Callable[[Any], T], url: str | None = None) -> T:
        """fn(client) with retries; a fixed `url`, or round-robin moving on after each failure."""
        chosen = [url or self._next_url()]

        def attempt() -> T:
            return fn(self._client(chosen[0]))

        def rotate() -> None:
            if url is None:
                chosen[0] = self._next_url()

        return with_retries(attempt, self.retries, self.backoff, what, rotate)

    # -- model spec and contract ------------------------------------------------------------
    def _timeout_kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def _read_spec(self) -> ModelSpec:
        served = [self._spec_of(url) for url in self.urls]
        ids = sorted({spec.model_id for spec, _ in served})
        if len(ids) > 1:
            raise EngineError(f"the servers serve different models: {', '.join(ids)}")
        self.max_batch_size = min(limit for _, limit in served)
        self.model_version = served[0][0].model_version  # every request asks for it
        return served[0][0]

    def _spec_of(self, url: str) -> tuple[ModelSpec, int]:
        """The served model's spec and its max_batch_size, checked against the contract."""
        kw = {"headers": self.headers, **self._timeout_kw()}
        where = f"Triton at {url} ({self.protocol})"

        def server_ready(client: Any) -> None:
            if not client.is_server_ready(**kw):
                raise ConnectionError("server is not ready")

        try:
            self._call(f"{where}: readiness check", server_ready, url)
        except EngineError as exc:
            other = self._other_protocol(url)
            if other is None:
                raise
            raise EngineError(
                f"{where}: the server there answers {other}, not {self.protocol}: use "
                f"--protocol {other} (or the server's {self.protocol} port)"
            ) from exc
        name = self.model_name
        models = self._call(f"{where}: model index", lambda c: self._models(c, kw), url)
        if name not in models:
            raise EngineError(
                f"{where}: no model '{name}'; the server has "
                f"{', '.join(map(repr, sorted(models))) or 'none'} (choose with --model-name)"
            )
        version = self.model_version or self._latest_version(url, where, kw)

        def ready(client: Any) -> bool:
            return client.is_model_ready(name, version, **kw)

        if not self._call(f"{where}: readiness check", ready, url):
            raise EngineError(f"{where}: model '{name}' version {version} is not loaded or ready")
        config = self._call(f"{where}: model config", lambda c: self._config(c, version, kw), url)
        meta = self._call(f"{where}: model metadata", lambda c: self._metadata(c, version, kw), url)
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:
            spec = ModelSpec.from_metadata(version_metadata(params, version))
            check_io(spec, *_served_io(meta, spec))
        except ContractError as exc:
            raise EngineError(f"{where}: model '{name}' version {version}: {exc}") from exc
        if (spec.model_name, spec.model_version) != (name, version):
            raise EngineError(
                f"{where}: model '{name}' version {version} carries the metadata of "
                f"{spec.model_id}; write its repository with `deal-export repository`"
            )
        return spec, int(config.get("max_batch_size", 0))

    def _other_protocol(self, url: str) -> str | None:
        """The other protocol when the server at `url` answers it (a port mixed up), else None."""
        other = "http" if self.protocol == "grpc" else "grpc"
        try:
            if other == "grpc":
                import tritonclient.grpc as module

                client = module.InferenceServerClient(url, ssl=self.tls[url])
                live = client.is_server_live(client_timeout=5.0)
            else:
                import tritonclient.http as module

                client = module.InferenceServerClient(
                    url, connection_timeout=5.0, network_timeout=5.0, ssl=self.tls[url]
                )
                live = client.is_server_live()
            client.close()
        except Exception:  # nothing, or something else, answers: the first error stands
            return None
        return other if live else None

    def _models(self, client: Any, kw: dict[str, Any]) -> set[str]:
        """The names of the models in the server's repository."""
        if self.protocol == "grpc":
            index = client.get_model_repository_index(as_json=True, **kw).get("models", [])
        else:
            index = client.get_model_repository_index(headers=self.headers)
        return {m["name"] for m in index}

    def _latest_version(self, url: str, where: str, kw: dict[str, Any]) -> str:
        """The highest version of the model that the server has loaded."""
        meta = self._call(f"{where}: model metadata", lambda c: self._metadata(c, "", kw), url)
        versions = [v for v in meta.get("versions", []) if str(v).isdigit()]
        if not versions:
            raise EngineError(f"{where}: model '{self.model_name}' has no version loaded")
        return str(max(int(v) for v in versions))

    def _config(self, client: Any, version: str, kw: dict[str, Any]) -> dict[str, Any]:
        if self.protocol == "grpc":
            return client.get_model_config(self.model_name, version, as_json=True, **kw)["config"]
        return client.get_model_config(self.model_name, version, headers=self.headers)

    def _metadata(self, client: Any, version: str, kw: dict[str, Any]) -> dict[str, Any]:
        if self.protocol == "grpc":
            return client.get_model_metadata(self.model_name, version, as_json=True, **kw)
        return client.get_model_metadata(self.model_name, version, headers=self.headers)

    # -- inference --------------------------------------------------------------------------
    def infer(
        self, images: np.ndarray, outputs: Sequence[str], boxes: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        _check_batch(images, self.spec)
        if self.shm:
            return self._infer_shm(images, outputs, boxes)
        module = self._module()
        inputs = []
        for name, array in model_inputs(self.spec, images, boxes).items():
            tensor = module.InferInput(name, list(array.shape), SPECS[name].wire_dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        if self.protocol == "grpc":
            requested = [module.InferRequestedOutput(n) for n in outputs]
        else:
            requested = [module.InferRequestedOutput(n, binary_data=True) for n in outputs]
        kw: dict[str, Any] = {"headers": self.headers, **self._timeout_kw()}
        name, version = self.model_name, self.model_version

        def run(client: Any) -> tuple[str, dict[str, np.ndarray]]:
            result = client.infer(name, inputs, model_version=version, outputs=requested, **kw)
            return _answered_version(result), {n: result.as_numpy(n) for n in outputs}

        answered, got = self._call(f"inference on {len(images)} images", run)
        self._check_answered(answered)
        b = len(images)
        return {n: np.asarray(got[n]).reshape(b, *self.spec.shape(n)) for n in outputs}

    def _infer_shm(
        self, images: np.ndarray, outputs: Sequence[str], boxes: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """`infer` with the tensors in this thread's shared-memory regions for the server: the
        request carries region names and offsets instead of the pixels."""
        module, b = self._module(), len(images)
        feeds = model_inputs(self.spec, images, boxes)
        kw: dict[str, Any] = {"headers": self.headers, **self._timeout_kw()}
        name, version = self.model_name, self.model_version

        def run(client: Any) -> tuple[str, dict[str, np.ndarray]]:
            regions = self._regions_of(client)
            inputs = []
            for tensor, offset, size in regions.write_inputs(feeds):
                array = feeds[tensor]
                item = module.InferInput(tensor, list(array.shape), SPECS[tensor].wire_dtype)
                item.set_shared_memory(regions.input_name, size, offset)
                inputs.append(item)
            requested, where = [], {}
            for tensor, offset, size in regions.output_slots(outputs, b):
                item = module.InferRequestedOutput(tensor)
                item.set_shared_memory(regions.output_name, size, offset)
                requested.append(item)
                where[tensor] = offset
            try:
                result = client.infer(name, inputs, model_version=version, outputs=requested, **kw)
            except Exception:
                regions.forget()  # a restarted server knows them no more: register again
                raise
            return _answered_version(result), {n: regions.read(n, b, where[n]) for n in outputs}

        answered, got = self._call(f"inference on {b} images (shared memory)", run)
        self._check_answered(answered)
        return got

    def _check_answered(self, answered: str) -> None:
        """Every request is pinned to one version: refuse an answer from another."""
        if answered != self.model_version:
            raise EngineError(
                f"asked {self.model_name} version {self.model_version}, version {answered} answered"
            )

    def _regions_of(self, client: Any) -> ShmRegions:
        """This thread's regions registered with `client`'s server (created on first use, and
        registered again after a failed request: a restarted server has forgotten them)."""
        regions = self._local.__dict__.setdefault("regions", {})
        if id(client) not in regions:
            made = ShmRegions(self.spec, self.max_batch_size or 64)
            with self._lock:
                self._regions.append(made)
            regions[id(client)] = made
        made = regions[id(client)]
        made.register(client, self.headers)
        return made

    def close(self) -> None:
        with self._lock:
            clients, self._all_clients = self._all_clients, []
            regions, self._regions = self._regions, []
        for made in regions:
            made.destroy()
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort
                client.close()

    def describe(self) -> str:
        return (
            f"Triton {self.protocol} at {', '.join(self.urls)}, model {self.model_name} "
            f"version {self.model_version}"
        )


class ShmRegions:
    """A pair of system shared-memory regions (inputs, outputs) sized for `max_batch` images,
    registered with one server; tensors are laid out one after another from offset 0."""

    def __init__(self, spec: ModelSpec, max_batch: int) -> None:
        import uuid

        import tritonclient.utils.shared_memory as shm

        self.spec, self.max_batch = spec, max_batch
        tag = f"dealseg_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self.input_name, self.output_name = f"{tag}_in", f"{tag}_out"
        self.in_bytes = max_batch * sum(self._image_bytes(t.name) for t in spec.inputs)
        self.out_bytes = max_batch * sum(
            self._image_bytes(n) for n in SPECS if n not in {t.name for t in spec.inputs}
        )
        self.inputs = shm.create_shared_memory_region(
            self.input_name, f"/{self.input_name}", self.in_bytes
        )
        self.outputs = shm.create_shared_memory_region(
            self.output_name, f"/{self.output_name}", self.out_bytes
        )
        self.registered: set[int] = set()  # ids of the clients whose server has them
        self.clients: list[Any] = []  # every client they were registered with

    def _image_bytes(self, tensor: str) -> int:
        return (
            int(np.prod(self.spec.shape(tensor), dtype=np.int64))
            * np.dtype(SPECS[tensor].dtype).itemsize
        )

    def register(self, client: Any, headers: Mapping[str, str]) -> None:
        if id(client) in self.registered:
            return
        for name, size in ((self.input_name, self.in_bytes), (self.output_name, self.out_bytes)):
            with contextlib.suppress(Exception):  # a registration the server still holds
                client.unregister_system_shared_memory(name, headers=headers)
            client.register_system_shared_memory(name, f"/{name}", size, headers=headers)
        self.registered.add(id(client))
        self.clients.append(client)

    def write_inputs(self, feeds: Mapping[str, np.ndarray]) -> list[tuple[str, int, int]]:
        """Copy the input tensors into the input region: (name, offset, bytes) of each."""
        import tritonclient.utils.shared_memory as shm

        slots, offset = [], 0
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            shm.set_shared_memory_region(self.inputs, [array], offset)
            slots.append((name, offset, array.nbytes))
            offset += array.nbytes
        return slots

    def output_slots(self, outputs: Sequence[str], b: int) -> list[tuple[str, int, int]]:
        slots, offset = [], 0
        for name in outputs:
            size = b * self._image_bytes(name)
            slots.append((name, offset, size))
            offset += size
        return slots

    def read(self, name: str, b: int, offset: int) -> np.ndarray:
        """Output `name` of a batch of `b` images, copied out of the output region."""
        import tritonclient.utils.shared_memory as shm

        shape = [b, *self.spec.shape(name)]
        array = shm.get_contents_as_numpy(self.outputs, np.dtype(SPECS[name].dtype), shape, offset)
        return np.array(array, copy=True)

    def forget(self) -> None:
        """After a failed request: register again before the next one."""
        self.registered.clear()

    def destroy(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for client in self.clients:
            for name in (self.input_name, self.output_name):
                with contextlib.suppress(Exception):  # the server may be gone
                    client.unregister_system_shared_memory(name)
        for handle in (self.inputs, self.outputs):
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(handle)


def _answered_version(result: Any) -> str:
    """The model version that produced a tritonclient InferResult (gRPC or HTTP)."""
    response = result.get_response()
    if isinstance(response, dict):  # HTTP: the JSON header of the response
        return str(response.get("model_version", ""))
    return str(response.model_version)


def _served_io(
    meta: Mapping[str, Any], spec: ModelSpec
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...]]]]:
    """(inputs, outputs) of Triton model metadata as `check_io` takes them.

    Triton cannot declare [B] tensors, so the repository serves the contract's [B] outputs as
    [B, 1]; those are read back as [B].
    """

    def one(t: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
        shape = tuple(int(d) for d in t.get("shape", []))
        name = t["name"]
        if name in SPECS and not SPECS[name].dims and shape[1:] == (1,):
            shape = shape[:1]
        return _WIRE_DTYPES.get(t.get("datatype", ""), t.get("datatype", "")), shape

    return (
        {t["name"]: one(t) for t in meta.get("inputs", [])},
        {t["name"]: one(t) for t in meta.get("outputs", [])},
    )
