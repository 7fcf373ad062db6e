"""Triton Python-backend model `deal`: ONNX Runtime on the exported DEAL graph.

Copied by `dealseg.serving.repository.write_repository` into `<repo>/deal/1/model.py`, beside
`model.onnx`. Triton gives `execute` every request its dynamic batcher gathered; they run as ONE
ONNX Runtime call on the concatenated images and the outputs are split back, exactly one response
per request, in order. A malformed request gets an error response; the others still run.

Imports numpy, onnxruntime, json and triton_python_backend_utils only: this file runs inside the
Python backend's stub, not inside the dealseg package.
"""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "image"  # dealseg.core.contract.INPUT_NAME
MODEL_FILENAME = "model.onnx"


class TritonPythonModel:
    """Serves the ONNX file beside this one; batching and instances come from config.pbtxt."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        inputs = {t["name"]: t for t in config["input"]}
        # Input shape without the batch axis, e.g. (360, 480, 3).
        self.image_shape = tuple(int(d) for d in inputs[INPUT_NAME]["dims"])
        self.output_names = [t["name"] for t in config["output"]]
        default = params.get("default_outputs", "")
        self.default_outputs = [n for n in default.split(",") if n] or self.output_names

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0"))
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu
            gpu = args.get("model_instance_kind") == "GPU"
            device = {"device_id": int(args.get("model_instance_device_id", 0)) if gpu else 0}
            providers = [("CUDAExecutionProvider", device), "CPUExecutionProvider"]
        model_path = f"{args['model_repository']}/{args['model_version']}/{MODEL_FILENAME}"
        self.session = ort.InferenceSession(model_path, options, providers=providers)
        pb_utils.Logger.log_info(
            f"deal: serving {MODEL_FILENAME} with {self.session.get_providers()[0]}, "
            f"input [B, {', '.join(map(str, self.image_shape))}]"
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        batch = []  # (request index, image [b, H, W, 3], requested output names)
        for index, request in enumerate(requests):
            try:
                batch.append((index, self._image(request), self._requested(request)))
            except ValueError as exc:
                responses[index] = _error(str(exc))
        if batch:
            self._run(batch, responses)
        return responses

    def finalize(self):
        self.session = None

    def _image(self, request):
        """The request's image tensor [b, H, W, 3] uint8; ValueError saying what is wrong."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise ValueError(f"missing input '{INPUT_NAME}'")
        image = tensor.as_numpy()
        if image.dtype != np.uint8:
            raise ValueError(f"input '{INPUT_NAME}' must be UINT8, got {image.dtype}")
        want = list(self.image_shape)
        if image.ndim != 4 or list(image.shape[1:]) != want or image.shape[0] < 1:
            raise ValueError(
                f"input '{INPUT_NAME}' must have shape [B, {', '.join(map(str, want))}] "
                f"(RGB resized to the model's input size), got {list(image.shape)}"
            )
        return image

    def _requested(self, request):
        names = list(request.requested_output_names()) or self.default_outputs
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the model has {self.output_names}")
        return names

    def _run(self, batch, responses):
        """One ORT run over every good request's images; fills their responses."""
        wanted = [n for n in self.output_names if any(n in names for _, _, names in batch)]
        images = [image for _, image, _ in batch]
        images = images[0] if len(images) == 1 else np.concatenate(images)  # [N, H, W, 3]
        try:
            arrays = self.session.run(wanted, {INPUT_NAME: images})
            results = dict(zip(wanted, arrays, strict=True))
        except Exception as exc:  # ORT's own exception types; every request of the run fails
            for index, _, _ in batch:
                responses[index] = _error(f"onnxruntime failed on {len(images)} images: {exc}")
            return
        start = 0
        for index, image, names in batch:
            stop = start + len(image)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:stop]))
                for name in names
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = stop


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
