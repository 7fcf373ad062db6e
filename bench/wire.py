"""Wire: bytes per image the served model returns, scores only vs with maps vs fp32 logits.

    .venv/bin/python bench/wire.py [--quick]

Starts the bundled tritonserver (python-cpu repository, loopback), sends one batch of real
street images per output set and measures the real responses: the HTTP response body (JSON
header + binary tensors, as `tritonclient.http` receives it with binary outputs) and the gRPC
`ModelInferResponse` message size, divided by the batch. The fp32 full-resolution logits are not
an output of the model; their size is computed (classes x H x W x 4 bytes).
"""

from __future__ import annotations

import argparse
import http.client
from typing import Any

import numpy as np
from common import SHIPPED_MODEL, markdown_table, python_cpu_server, write_result

BATCH = 8
OUTPUT_SETS = {
    "scalar scores (ds, de, entropy)": ("ds", "de", "entropy"),
    "client default: scores + class_fraction + embedding": (
        "ds",
        "de",
        "entropy",
        "class_fraction",
        "embedding",
    ),
    "all outputs (with difficulty + segmentation maps)": (
        "ds",
        "de",
        "entropy",
        "class_fraction",
        "embedding",
        "difficulty",
        "segmentation",
    ),
}


def street_images(n: int, size: tuple[int, int]) -> np.ndarray:
    """`n` fresh street scenes at the model's input size, uint8 [n, H, W, 3]."""
    from dealseg.training.streets.render import render_scene

    return np.stack([render_scene(np.random.default_rng([21, i]), size)[0] for i in range(n)])


def request_inputs(module: Any, spec: Any, images: np.ndarray) -> list[Any]:
    """The InferInputs of `images` (and their valid boxes for a contract 2 model)."""
    from dealseg.core.contract import SPECS, model_inputs

    inputs = []
    for name, array in model_inputs(spec, images).items():
        tensor = module.InferInput(name, list(array.shape), SPECS[name].wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def http_body_bytes(
    url: str, spec: Any, images: np.ndarray, outputs: tuple[str, ...]
) -> tuple[int, dict]:
    """(response body bytes, outputs) of one HTTP/REST inference with binary outputs."""
    import tritonclient.http as th

    inputs = request_inputs(th, spec, images)
    req = [th.InferRequestedOutput(n, binary_data=True) for n in outputs]
    body, json_size = th.InferenceServerClient.generate_request_body(inputs, outputs=req)
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    conn.request("POST", "/v2/models/deal/infer", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:500]!r}")
    header_length = response.getheader("Inference-Header-Content-Length")
    conn.close()
    result = th.InferenceServerClient.parse_response_body(
        data, header_length=int(header_length) if header_length else None
    )
    return len(data), {n: result.as_numpy(n) for n in outputs}


def grpc_message_bytes(url: str, spec: Any, images: np.ndarray, outputs: tuple[str, ...]) -> int:
    """Serialized size of the gRPC ModelInferResponse of one inference."""
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(url)
    inputs = request_inputs(tg, spec, images)
    result = client.infer("deal", inputs, outputs=[tg.InferRequestedOutput(n) for n in outputs])
    size = result.get_response().ByteSize()
    client.close()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="same as the full run (it is fast)")
    parser.parse_args()
    from dealseg.core.modelfile import read_onnx_spec

    spec = read_onnx_spec(SHIPPED_MODEL)
    images = street_images(BATCH, spec.input_size)
    rows, payloads = [], []
    with python_cpu_server("wire") as server:
        for label, outputs in OUTPUT_SETS.items():
            body, arrays = http_body_bytes(server.url_http, spec, images, outputs)
            message = grpc_message_bytes(server.url_grpc, spec, images, outputs)
            payload = sum(a.nbytes for a in arrays.values())
            payloads.append(payload / BATCH)
            rows.append(
                [
                    label,
                    f"{payload / BATCH:,.0f}",
                    f"{body / BATCH:,.0f}",
                    f"{message / BATCH:,.0f}",
                ]
            )
    h, w = spec.input_size
    logits = spec.num_classes * h * w * 4
    rows.append(
        [
            f"fp32 logits at the input size ({spec.num_classes} x {h} x {w}, computed)",
            f"{logits:,}",
            "",
            "",
        ]
    )
    camera = spec.num_classes * 720 * 960 * 4
    rows.append(
        [
            f"fp32 logits at camera size ({spec.num_classes} x 720 x 960, computed)",
            f"{camera:,}",
            "",
            "",
        ]
    )
    table = markdown_table(
        ["returned per image", "tensor bytes", "HTTP body bytes", "gRPC message bytes"], rows
    )
    notes = [
        f"batch of {BATCH} street scenes at {h}x{w}; bytes per image = response bytes / {BATCH}; "
        "HTTP with binary outputs (the JSON header is included), gRPC as the protobuf message",
        f"what the client asks for by default is {logits / payloads[1]:,.0f}x smaller than fp32 "
        f"logits at the input size; with the maps {logits / payloads[2]:,.0f}x",
    ]
    write_result("wire", "Wire: bytes per image returned by the served model", table, notes)


if __name__ == "__main__":
    main()
