"""Start, watch and stop the real `tritonserver` bundled with nvidia-pytriton.

The bundled binary (2.51) runs our Python-backend model on CPU when it is started like this:
a backend directory `B/python/` of symlinks to the bundled `libtriton_python.so`,
`triton_python_backend_utils.py` and the stub built for this Python's major.minor; this venv's
`bin` first on PATH and this Python's `LIBDIR` on LD_LIBRARY_PATH (so the stub embeds this
Python and sees this venv's numpy and onnxruntime); loopback addresses and free ports.

`TritonServer` is the whole life cycle and a context manager; `ServerState` is the JSON state file
that lets `deal-serve stop/status` find a server started with `--background` by another process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dealseg.core.files import atomic_write_json

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_NAME = "triton_python_backend_stub"
LOG_TAIL_LINES = 25
WORKDIR_PREFIX = "dealseg-triton-"
WORKDIR_MARKER = ".dealseg-triton"  # in every workdir we create; holds the server's id
SHM_MODE = 0o600  # our stubs' shared-memory regions (created 0644): this user only


class ServerError(RuntimeError):
    """tritonserver could not be found, started or stopped; the message says why and what to do."""

    def __init__(self, message: str, failed_models: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failed_models = failed_models


class _PortInUse(ServerError):
    """Another process holds one of the server's ports."""


_PORT_IN_USE = re.compile(r"failed to start \w+ service: .*already in use")


def default_state_file() -> Path:
    """Where `deal-serve start --background` records its server unless told otherwise."""
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "dealseg" / "serve.json"


@dataclass
class ServerState:
    """What another process needs to check on or stop a running server."""

    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log_path: str
    workdir: str  # backend dir (and log, unless given); removed on stop if we created it
    shm_regions: list[str] = field(default_factory=list)  # our backend's regions, once ready
    started_at: float = 0.0
    exit_timeout: int = 10  # --exit-timeout-secs given to tritonserver
    server_id: str = ""  # --id given to tritonserver; its /v2 metadata answers with it

    @property
    def client_host(self) -> str:
        """Address clients connect to: the bind address, or loopback for a wildcard bind."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def url_http(self) -> str:
        """`host:port` of the HTTP endpoint, as tritonclient and `deal-client --url` take it."""
        return f"{self.client_host}:{self.http_port}"

    @property
    def url_grpc(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def url_metrics(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> ServerState:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ServerError(f"no server state file at {path}; is a server running?") from None
        except (ValueError, TypeError) as exc:
            raise ServerError(f"{path} is not a deal-serve state file: {exc}") from exc


@dataclass(frozen=True)
class Bundle:
    """Paths inside the installed nvidia-pytriton distribution."""

    tritonserver: Path
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python


def find_bundle() -> Bundle:
    """Locate the tritonserver that nvidia-pytriton bundles, without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the bundled Triton server comes with nvidia-pytriton, which is not installed; "
            "install it with `pip install 'dealseg[serve]'` (nvidia-pytriton==0.7.0), or run "
            "Triton in its container (`deal-serve start --docker`)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = Bundle(
        tritonserver=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / STUB_NAME,
    )
    if not bundle.stub.exists():
        stubs = sorted(p.name for p in (root / "python_backend_stubs").glob("*"))
        raise ServerError(
            f"nvidia-pytriton has no Python-backend stub for Python {version} "
            f"(it has {', '.join(stubs) or 'none'}); use one of those Python versions"
        )
    for path in (bundle.tritonserver, bundle.python_backend / "libtriton_python.so"):
        if not path.exists():
            raise ServerError(f"{path} is missing; reinstall nvidia-pytriton==0.7.0")
    return bundle


def make_backend_dir(bundle: Bundle, directory: Path) -> Path:
    """`directory/python/` of symlinks to the bundled Python backend and stub; returns directory."""
    python_dir = directory / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": bundle.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": bundle.python_backend / "triton_python_backend_utils.py",
        STUB_NAME: bundle.stub,
    }
    for name, target in links.items():
        link = python_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return directory


def server_env() -> dict[str, str]:
    """Environment for tritonserver: this venv's bin first on PATH, this Python's LIBDIR first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def check_host(host: str) -> None:
    """ServerError unless `host` is an IPv4 address ("" = 0.0.0.0), the only kind Triton binds.

    Triton 2.51 parses its HTTP and metrics addresses as IPv4 only: given `::` or a host name it
    binds 255.255.255.255 and answers nowhere, so both are refused here with the reason.
    """
    try:
        ipaddress.IPv4Address(host or "0.0.0.0")
    except ValueError:
        raise ServerError(
            f"host {host!r} is not an IPv4 address; tritonserver binds its HTTP and metrics "
            "endpoints with IPv4 only: pass 127.0.0.1 (this machine), 0.0.0.0 (every interface) "
            "or one interface's IPv4 address"
        ) from None


def _bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound where the server would bind `host`:`port` (a wildcard as a wildcard:
    it clashes with any address already using the port).

    SO_REUSEADDR, as tritonserver's own listeners use it: connections of a stopped server that
    linger in TIME_WAIT do not hold the port, a listener does."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host or "0.0.0.0", port))
    except OSError:
        s.close()
        raise
    return s


def _port_free(host: str, port: int) -> bool:
    try:
        _bind_socket(host, port).close()
    except OSError:
        return False
    return True


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host` right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_bind_socket(host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """The real bundled tritonserver serving `model_repository`.

    >>> with TritonServer(repo) as server:          # doctest: +SKIP
    ...     client = tritonclient.grpc.InferenceServerClient(server.url_grpc)

    Ports left at 0 are picked free on `host`. `start` waits until `/v2/health/ready` answers or
    raises ServerError with the log tail and the models that failed to load.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        timeout: float = 120.0,
        log_path: Path | None = None,
        log_verbose: int = 0,
        exit_timeout: int = 10,
    ) -> None:
        try:
            self.model_repository = Path(model_repository).resolve()
        except (RuntimeError, OSError) as exc:  # RuntimeError: a symbolic link loop
            raise ServerError(
                f"model repository {model_repository} cannot be resolved: {exc}; point "
                "--model-repository at the folder `deal-export repository` wrote"
            ) from None
        self.host = host
        self.ports = (http_port, grpc_port, metrics_port)
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else None
        self.log_verbose = log_verbose
        self.exit_timeout = exit_timeout
        self.state: ServerState | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> TritonServer:
        """Launch tritonserver and wait until it and the model are ready (see class doc)."""
        if self.state is not None:
            raise ServerError("server already started")
        check_host(self.host)
        self._check_repository()
        bundle = find_bundle()
        for attempt in range(3):  # a free port picked by us can be taken before Triton binds it
            try:
                self._launch(bundle)
                self._wait_ready()
                state = self._running()
                state.shm_regions = _restrict_shm(state)
                return self
            except _PortInUse as exc:
                self.stop()
                if attempt == 2 or all(self.ports):
                    raise ServerError(str(exc)) from None
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _check_repository(self) -> None:
        """The repository holds models, and the model files of each take what its config
        declares (else Triton would start "ready" and fail every request)."""
        from .repository import model_file_problems

        model_dirs = sorted(p.parent for p in self.model_repository.glob("*/config.pbtxt"))
        if not model_dirs:
            raise ServerError(
                f"{self.model_repository} holds no model (no <name>/config.pbtxt); write one "
                f"with `deal-export repository --repo {self.model_repository}`"
            )
        for model_dir in model_dirs:
            try:
                problems = model_file_problems(model_dir)
            except ValueError as exc:  # an unparsable config.pbtxt
                raise ServerError(str(exc)) from None
            if problems:
                raise ServerError(
                    f"the model files of {model_dir} do not match its config.pbtxt: "
                    + "; ".join(problems)
                    + "; write both with `deal-export repository`"
                )

    def _pick_ports(self) -> tuple[int, int, int]:
        """The given ports (checked free) with zeros replaced by free ports."""
        for what, port in zip(("http", "grpc", "metrics"), self.ports, strict=True):
            if port and not _port_free(self.host, port):
                raise ServerError(
                    f"{what} port {port} on {self.host} is in use; pass --{what}-port with "
                    "another port, or 0 for a free one"
                )
        picked = iter(free_ports(self.host, 3))
        http, grpc, metrics = (port or next(picked) for port in self.ports)
        return http, grpc, metrics

    def _launch(self, bundle: Bundle) -> None:
        http, grpc, metrics = self._pick_ports()
        server_id = f"dealseg-{os.getpid()}-{secrets.token_hex(4)}"
        workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (workdir / WORKDIR_MARKER).write_text(server_id)
        backend_dir = make_backend_dir(bundle, workdir / "backends")
        log_path = self.log_path or workdir / "tritonserver.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(bundle.tritonserver),
            f"--id={server_id}",  # tells our server from another one answering on a shared port
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            f"--log-verbose={self.log_verbose}",
            # On SIGTERM Triton waits this long for in-flight requests and idle client connections.
            f"--exit-timeout-secs={self.exit_timeout}",
        ]
        try:
            with open(log_path, "wb") as log:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_env(),
                    start_new_session=True,  # Ctrl-C reaches us, not the server; we stop it
                )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ServerError(f"cannot run {bundle.tritonserver}: {exc}") from exc
        self.state = ServerState(
            pid=self._process.pid,
            host=self.host,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            repository=str(self.model_repository),
            log_path=str(log_path),
            workdir=str(workdir),
            started_at=time.time(),
            exit_timeout=self.exit_timeout,
            server_id=server_id,
        )

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait (default: exit_timeout + 20 s), SIGKILL; then reap stubs, shm, workdir."""
        if self.state is None:
            return
        stop_server(self.state, timeout=timeout, process=self._process)
        self.state, self._process = None, None

    def returncode(self) -> int | None:
        """The server's exit code once it has exited on its own, else None."""
        return self._process.poll() if self._process is not None else None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- endpoints ------------------------------------------------------------------------
    def _running(self) -> ServerState:
        if self.state is None:
            raise ServerError("server is not running")
        return self.state

    @property
    def pid(self) -> int:
        return self._running().pid

    @property
    def url_http(self) -> str:
        """`host:port` of the HTTP endpoint (tritonclient's `url`)."""
        return self._running().url_http

    @property
    def url_grpc(self) -> str:
        return self._running().url_grpc

    def _wait_ready(self) -> None:
        state = self._running()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            code = self._process.poll() if self._process else None
            if code is not None:
                raise _failure(state, f"tritonserver exited with code {code}")
            in_use = _PORT_IN_USE.search(_read_log(state))
            if in_use:  # Triton keeps running without that endpoint; we do not
                raise _PortInUse(_failure(state, f"tritonserver {in_use.group(0)}").args[0])
            if _is_ready(state):
                return
            time.sleep(0.2)
        raise _failure(state, f"tritonserver was not ready after {self.timeout:.0f} s")


# -- talking to a server -------------------------------------------------------------------
def http_get(state: ServerState, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed JSON or None) of GET `path` on the server's HTTP endpoint; 0 if down."""
    return _http(state, "GET", path, timeout)


def _http(state: ServerState, method: str, path: str, timeout: float) -> tuple[int, Any]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(f"http://{state.url_http}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _is_ready(state: ServerState) -> bool:
    """Ready, and it is our server that answers (not another one sharing the port)."""
    if http_get(state, "/v2/health/ready")[0] != 200:
        return False
    code, metadata = http_get(state, "/v2")
    if code != 200 or not isinstance(metadata, dict):
        return False
    return not state.server_id or metadata.get("name") == state.server_id


def server_alive(state: ServerState) -> bool:
    """Whether the recorded server's process still runs (and is that server, not a new pid)."""
    return _process_alive(state.pid) and _is_our_tritonserver(state)


def server_status(state: ServerState) -> dict[str, Any]:
    """Whether the recorded server lives and is ready, each model's state, and its addresses."""
    alive = server_alive(state)
    ready = alive and _is_ready(state)
    models: dict[str, str] = {}  # "name/version" -> state
    if alive:
        code, index = _http(state, "POST", "/v2/repository/index", 2.0)
        if code == 200 and isinstance(index, list):
            models = {
                f"{m['name']}/{m.get('version', '')}": m.get("state", "UNKNOWN") for m in index
            }
    return {
        "pid": state.pid,
        "alive": alive,
        "ready": ready,
        "models": models,
        "model_ready": "READY" in models.values(),  # a model version is served
        "http": state.url_http,
        "grpc": state.url_grpc,
        "metrics": state.url_metrics,
        "repository": state.repository,
        "log": state.log_path,
    }


@dataclass
class Cleanup:
    """What `stop_server` did."""

    stopped: bool = False  # the server process was running and has been stopped
    stubs: list[int] = field(default_factory=list)  # orphaned backend stubs killed
    regions: list[str] = field(default_factory=list)  # shared-memory regions removed
    workdir_kept: str = ""  # why the recorded workdir was not removed ("" = removed or gone)


def stop_server(
    state: ServerState,
    timeout: float | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> Cleanup:
    """Stop the server of `state` (ours, possibly started by another process) and clean up.

    SIGTERM lets Triton finish in-flight requests and unload models; after `timeout` (default:
    its exit timeout + 20 s) it is SIGKILLed. Then any Python-backend stub it left is killed,
    the shared-memory regions it created are removed, and its workdir is deleted if it is one
    that `TritonServer` created (the state file's word alone is not enough).
    """
    timeout = state.exit_timeout + 20.0 if timeout is None else timeout
    cleanup = Cleanup()
    stubs = _stub_processes(state)
    ours = set(state.shm_regions) | set(stubs.values())  # regions known to be this server's
    if _is_our_tritonserver(state):
        ours |= _mapped_shm_regions([Path("/proc") / str(state.pid) / "maps"])
        cleanup.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        if not _wait_exit(state.pid, timeout, process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
            _wait_exit(state.pid, 5.0, process)
    if process is not None:
        process.poll()  # reap our child even when it died before we asked it to stop
    leftover = _stub_processes(state)  # stubs still running without their server
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in leftover:
        if not _wait_exit(pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 2.0)
    cleanup.stubs = sorted(leftover)
    cleanup.regions = _remove_shm_regions(ours | set(leftover.values()))
    cleanup.workdir_kept = _remove_workdir(state)
    return cleanup


def leftovers(state: ServerState) -> dict[str, list]:
    """Backend stubs and shared-memory regions a dead server of `state` left behind."""
    stubs = _stub_processes(state)
    regions = {r for r in stubs.values() if r} & _shm_regions()
    return {"stubs": sorted(stubs), "shm_regions": sorted(regions)}


def _remove_workdir(state: ServerState) -> str:
    """Delete the state's workdir if `TritonServer` made it: a `dealseg-triton-*` folder (not a
    link) in the temporary directory holding our marker with this server's id. Returns why it
    was kept, or "" when it was removed or is already gone."""
    workdir = Path(state.workdir)
    if not os.path.lexists(workdir):
        return ""
    ours = (
        workdir.name.startswith(WORKDIR_PREFIX)
        and not workdir.is_symlink()
        and workdir.parent.resolve() == Path(tempfile.gettempdir()).resolve()
        and _read_marker(workdir) == state.server_id
        and bool(state.server_id)
    )
    if not ours:
        return f"{workdir} is not a folder deal-serve created; left as it is"
    shutil.rmtree(workdir, ignore_errors=True)
    return ""


def _read_marker(workdir: Path) -> str:
    try:
        return (workdir / WORKDIR_MARKER).read_text()
    except OSError:
        return ""


# -- processes and shared memory -----------------------------------------------------------
def _process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int | str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_our_tritonserver(state: ServerState) -> bool:
    """Guards against a recycled pid: the process must be tritonserver on our repository."""
    args = _cmdline(state.pid)
    return (
        bool(args)
        and args[0].endswith("tritonserver")
        and (f"--model-repository={state.repository}" in args)
    )


def _wait_exit(pid: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    if process is not None:  # our child: wait() also reaps it
        try:
            process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while _process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stub_processes(state: ServerState) -> dict[int, str]:
    """Python-backend stubs of this server: pid -> the shm region named on their command line.

    A stub is ours when it runs from our backend dir (its argv[0]): each server has its own.
    """
    backend = str(Path(state.workdir) / "backends")
    stubs: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(entry.name)
        if not args or not args[0].endswith(STUB_NAME):
            continue
        if args[0].startswith(backend):
            region = next((a.lstrip("/") for a in args if SHM_PREFIX in a), "")
            stubs[int(entry.name)] = region
    return stubs


def _restrict_shm(state: ServerState) -> list[str]:
    """Make the shared-memory regions of the server's stubs readable by this user only: they
    carry the images and scores of every request, and the backend creates them world-readable.
    Returns the regions (the ones `stop_server` removes, beside those it finds then)."""
    regions = sorted({r for r in _stub_processes(state).values() if r})
    for region in regions:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(SHM_DIR / region, SHM_MODE)
    return regions


def _shm_regions() -> set[str]:
    return {p.name for p in SHM_DIR.glob(SHM_PREFIX + "*")}


def _mapped_shm_regions(maps_files: Iterable[Path] | None = None) -> set[str]:
    """Python-backend shm regions that the processes of `maps_files` (/proc/PID/maps; default:
    every live process) have mapped."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps") if maps_files is None else maps_files:
        with contextlib.suppress(OSError):
            mapped.update(re.findall(r"/dev/shm/(" + SHM_PREFIX + r"\S+)", maps.read_text()))
    return mapped


def _remove_shm_regions(ours: set[str]) -> list[str]:
    """Remove the regions known to be this server's (recorded when it was ready, named by its
    stubs, mapped by its process): never a region merely new since it started, which may be
    another server's, just created."""
    removed = []
    for name in sorted({r for r in ours if r} & _shm_regions()):
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / name).unlink()
            removed.append(name)
    return removed


# -- failure messages ----------------------------------------------------------------------
_FAILED_LOAD = re.compile(r"failed to load '([^']+)'(?: version \d+)?: (.*)")
_MODEL_TABLE_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (.*?)\s*\|\s*$")


def failed_models(log_text: str) -> dict[str, str]:
    """Model name -> one-line reason, for every model the server log says failed to load."""
    failures: dict[str, str] = {}
    for line in log_text.splitlines():
        match = _FAILED_LOAD.search(line) or _MODEL_TABLE_ROW.search(line)
        if match:
            reason = match.group(2).split("\\n")[0].strip().rstrip('"').strip()
            failures.setdefault(match.group(1), reason)
    return failures


# Harmless on a CPU-only machine, and the boxed tables Triton prints at start.
_LOG_NOISE = re.compile(r"CUDA|Cuda|NVML|DCGM|pinned memory|^\s*[|+]|\]\s*$")


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` informative lines of a server log (GPU noise and tables left out)."""
    kept = [line for line in text.splitlines() if line.strip() and not _LOG_NOISE.search(line)]
    return "\n".join(kept[-lines:]) if kept else "(no log)"


def _read_log(state: ServerState) -> str:
    try:
        return Path(state.log_path).read_text(errors="replace")
    except OSError:
        return ""


def _failure(state: ServerState, what: str) -> ServerError:
    """ServerError naming the models that failed to load, with the log's last lines."""
    text = _read_log(state)
    failures = failed_models(text)
    lines = [what + "."]
    for name, reason in failures.items():
        lines.append(f"model '{name}' failed to load: {reason}")
    if not failures and "error" not in text.lower():
        lines.append("no model reported a failure; raise --timeout if the machine is busy")
    lines.append(f"last lines of {state.log_path}:")
    lines.append(log_tail(text))
    return ServerError("\n".join(lines), failed_models=tuple(failures))
