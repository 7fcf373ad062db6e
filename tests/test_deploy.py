"""deploy/: the Kubernetes manifests against Kubernetes' own schemas (kubernetes-validate), the
KubeRay RayJob against our schema of its CRD (deploy/schemas/) with its pod templates checked as
Kubernetes PodTemplates, and the flags the manifests pass to deal-client; the repository
writer's batching defaults."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from dealseg.client.cli import main
from dealseg.client.objects import ObjectPath

DEPLOY = Path(__file__).parent.parent / "deploy"
K8S_VERSION = "1.30.0"


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def core_documents() -> list[dict]:
    return [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in documents(f.name)
        if d["apiVersion"] != "ray.io/v1"
    ]


@pytest.mark.parametrize(
    "doc", core_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_core_manifests_are_valid_kubernetes(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_triton_is_ready_only_when_triton_says_so() -> None:
    deployment, service = documents("triton.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def rayjob() -> dict:
    (doc,) = documents("rayjob.yaml")
    return doc


def test_the_rayjob_matches_the_crd_schema_and_its_pods_kubernetes() -> None:
    schema = json.loads((DEPLOY / "schemas" / "rayjob-ray.io-v1.json").read_text())
    doc = rayjob()
    jsonschema.validate(doc, schema)
    cluster = doc["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for i, template in enumerate(templates):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}}
        kubernetes_validate.validate({**pod, "template": template}, K8S_VERSION, strict=True)
    for template in templates:  # the out dir is in object storage: no shared volume
        assert "volumes" not in template["spec"]
        assert all("volumeMounts" not in c for c in template["spec"]["containers"])
    broken = json.loads(json.dumps(doc))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 4  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_rayjob_entrypoint_is_a_valid_deal_client_command() -> None:
    words = shlex.split(rayjob()["spec"]["entrypoint"])
    assert words[:2] == ["deal-client", "score"] and "--ray" in words
    # parsed as deal-client parses it (nothing runs): every option exists and takes its value
    score = main.get_command(click.Context(main), "score")
    parsed = score.make_context("score", words[2:], resilient_parsing=True)
    assert parsed.params["ray_address"] == "auto" and parsed.params["actors"] == 8
    assert parsed.params["out"] == ObjectPath("s3://scores/drive-2026-12")
    assert parsed.params["urls"] == ("triton:8001",)


def test_the_repository_writer_batches_as_triton_advises(tiny_onnx: Path) -> None:
    from dealseg.core.modelfile import read_onnx_spec
    from dealseg.serving.repository import build_config

    config = build_config(read_onnx_spec(tiny_onnx), instances=3)
    assert config.HasField("dynamic_batching")  # on, without preferred sizes
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.instance_group[0].count == 3


def test_a_typo_in_a_core_manifest_is_caught() -> None:
    deployment = json.loads(json.dumps(documents("triton.yaml")[0]))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
