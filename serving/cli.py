"""`deal-serve`: run the bundled Triton server on a model repository (start, stop, status).

Thin commands over `dealseg.serving.server`; see serving/README.md.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from dealseg.core.modelfile import shipped_repository
from dealseg.serving.server import (
    Cleanup,
    ServerError,
    ServerState,
    TritonServer,
    default_state_file,
    leftovers,
    server_alive,
    server_status,
    stop_server,
)

# NGC release carrying the same Triton (2.51) as the bundled server.
DEFAULT_DOCKER_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def docker_command(repo: Path, image: str = DEFAULT_DOCKER_IMAGE) -> str:
    """`docker run` line serving `repo` with the NGC Triton container on a GPU host."""
    serve = "tritonserver --model-repository=/models"
    if any('backend: "python"' in c.read_text() for c in repo.glob("*/config.pbtxt")):
        # The Python-backend model needs ONNX Runtime inside the container.
        serve = f"bash -c 'pip install -q onnxruntime-gpu && {serve}'"
    return (
        "docker run --gpus all --rm -p8000:8000 -p8001:8001 -p8002:8002 "
        f"-v {repo.resolve()}:/models {image} {serve}"
    )


def _print_endpoints(state: ServerState) -> None:
    lines = [
        f"deal-serve: Triton ready (pid {state.pid}), model repository {state.repository}",
        f"  HTTP     {state.url_http}   (health: http://{state.url_http}/v2/health/ready)",
        f"  gRPC     {state.url_grpc}",
        f"  metrics  {state.url_metrics}",
        f"  log      {state.log_path}",
    ]
    click.echo("\n".join(lines))


def _cleanup_message(state: ServerState, cleanup: Cleanup) -> str:
    done = [f"killed {len(cleanup.stubs)} orphaned backend stub(s)"] if cleanup.stubs else []
    if cleanup.regions:
        done.append(f"removed {len(cleanup.regions)} shared-memory region(s)")
    line = f"pid {state.pid}" + (f": {', '.join(done)}" if done else "")
    return line + (f"; {cleanup.workdir_kept}" if cleanup.workdir_kept else "")


def _refuse_if_running(state_file: Path) -> None:
    """Refuse to start over a live server; clean up after a dead one the state file records."""
    if not state_file.is_file():
        return
    try:
        state = ServerState.load(state_file)
    except ServerError:
        return  # unreadable: overwritten below
    if server_alive(state):
        raise click.ClickException(
            f"a server is already running (pid {state.pid}, HTTP {state.url_http}) per "
            f"{state_file}; run `deal-serve stop` first or pass another --state-file"
        )
    cleanup = stop_server(state)
    click.echo(
        f"deal-serve: cleaned up after a server that is no longer running, "
        f"{_cleanup_message(state, cleanup)}",
        err=True,
    )


def state_file_option(help_text: str) -> Callable[[Callable], Callable]:
    """--state-file, the file `start --background` records its server in."""
    return click.option(
        "--state-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default_state_file,
        envvar="DEAL_SERVE_STATE_FILE",
        show_default="$XDG_STATE_HOME/dealseg/serve.json",
        help=help_text,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dealseg")
def main() -> None:
    """Serve the DEAL model with NVIDIA Triton (the server bundled with nvidia-pytriton)."""


@main.command()
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=shipped_repository,
    envvar="DEAL_MODEL_REPOSITORY",
    show_default="the one shipped with dealseg (the model deal, version 1)",
    help="Triton model repository: its models and their versions (`deal-export repository`).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="IPv4 address to bind HTTP, gRPC and metrics to (0.0.0.0 exposes the server).",
)
@click.option(
    "--http-port",
    type=int,
    default=8000,
    show_default=True,
    help="HTTP/REST port; 0 picks a free one.",
)
@click.option(
    "--grpc-port", type=int, default=8001, show_default=True, help="gRPC port; 0 picks a free one."
)
@click.option(
    "--metrics-port",
    type=int,
    default=8002,
    show_default=True,
    help="Prometheus metrics port; 0 picks a free one.",
)
@click.option(
    "--background",
    is_flag=True,
    default=False,
    show_default=True,
    help="Start, wait until ready, record the server in --state-file and return.",
)
@state_file_option("Where the running server is recorded for `stop` and `status`.")
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for the server and model to become ready.",
)
@click.option(
    "--exit-timeout",
    type=int,
    default=10,
    show_default=True,
    help="Seconds Triton waits for in-flight requests when stopping.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    show_default="a file in the server's temporary workdir, removed on stop",
    help="Where tritonserver writes its log.",
)
@click.option(
    "--docker",
    is_flag=True,
    default=False,
    show_default=True,
    help="Print the NGC container command serving the repository on a GPU host; exit.",
)
@click.option(
    "--docker-image",
    default=DEFAULT_DOCKER_IMAGE,
    show_default=True,
    help="Triton container image used by --docker.",
)
def start(
    model_repository: Path | None,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    background: bool,
    state_file: Path,
    timeout: float,
    exit_timeout: int,
    log_file: Path | None,
    docker: bool,
    docker_image: str,
) -> None:
    """Start tritonserver on a model repository; foreground until Ctrl-C unless --background."""
    if model_repository is None:
        raise click.BadParameter(
            "this dealseg installation ships no repository; pass the one written by "
            "`deal-export repository`",
            param_hint="--model-repository",
        )
    if docker:
        click.echo(docker_command(model_repository, docker_image))
        return
    _refuse_if_running(state_file)
    try:
        server = TritonServer(
            model_repository,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            timeout=timeout,
            log_path=log_file,
            exit_timeout=exit_timeout,
        )
        server.start()
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    assert server.state is not None
    server.state.save(state_file)
    _print_endpoints(server.state)
    if background:
        click.echo(f"  state    {state_file}  (stop with `{stop_command(state_file)}`)")
        return
    try:
        code = _serve_until_signal(server)
    finally:
        server.stop()
        state_file.unlink(missing_ok=True)
    click.echo("deal-serve: stopped", err=True)
    if code is not None:
        raise click.ClickException(f"tritonserver exited unexpectedly with code {code}")


def stop_command(state_file: Path) -> str:
    """The command that stops the server recorded in `state_file`."""
    if state_file == default_state_file():
        return "deal-serve stop"
    return f"deal-serve stop --state-file {shlex.quote(str(state_file))}"


def _serve_until_signal(server: TritonServer) -> int | None:
    """Block until SIGINT/SIGTERM (None) or until the server dies (its exit code)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    click.echo("  (Ctrl-C stops the server)", err=True)
    try:
        while not stop.wait(1.0):
            code = server.returncode()
            if code is not None:
                return code
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command()
@state_file_option("State file written by `deal-serve start`.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    show_default="exit timeout + 20 s",
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def stop(state_file: Path, timeout: float | None) -> None:
    """Stop the server recorded in --state-file; remove its stub processes and shared memory."""
    try:
        state = ServerState.load(state_file)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from exc
    cleanup = stop_server(state, timeout=timeout)
    state_file.unlink(missing_ok=True)
    what = "stopped" if cleanup.stopped else "was not running; cleaned up after"
    click.echo(f"deal-serve: {what} {_cleanup_message(state, cleanup)}")


@main.command()
@state_file_option("State file written by `deal-serve start`.")
def status(state_file: Path) -> None:
    """Print the server's state as JSON; exit 0 when it and the model are ready, else 1."""
    if not state_file.is_file():
        click.echo(json.dumps({"running": False, "state_file": str(state_file)}))
        sys.exit(1)
    try:
        state = ServerState.load(state_file)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from exc
    report = {"running": True, **server_status(state), "state_file": str(state_file)}
    report["running"] = report["alive"]
    if not report["alive"]:
        found = leftovers(state)
        report["leftovers"] = found
        if any(found.values()):
            report["hint"] = "the server died and left these; `deal-serve stop` removes them"
    click.echo(json.dumps(report, indent=2))
    if not (report["ready"] and report["model_ready"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
