"""Triton Python-backend model `deal`: ONNX Runtime on the exported DEAL graph.

Copied by `dealseg.serving.repository.write_repository` into `<repo>/<name>/<version>/model.py`,
beside `model.onnx`. Triton gives `execute` every request its dynamic batcher gathered; they run
as ONE ONNX Runtime call on the concatenated inputs (the images and, for a contract 2 model, their
valid boxes) and the outputs are split back, exactly one response per request, in order. A
malformed request gets an error response; the others still run.

Imports numpy, onnxruntime, json and triton_python_backend_utils only: this file runs inside the
Python backend's stub, not inside the dealseg package.
"""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILENAME = "model.onnx"
DTYPES = {"TYPE_UINT8": np.uint8, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}


class TritonPythonModel:
    """Serves the ONNX file beside this one; batching and instances come from config.pbtxt."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # name -> (dtype, shape without the batch axis), e.g. image (360, 480, 3) uint8.
        self.inputs = {
            t["name"]: (np.dtype(DTYPES[t["data_type"]]), tuple(int(d) for d in t["dims"]))
            for t in config["input"]
        }
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
        shapes = ", ".join(
            f"{n} [B, {', '.join(map(str, s))}]" for n, (_, s) in self.inputs.items()
        )
        pb_utils.Logger.log_info(
            f"{config['name']} version {args['model_version']}: serving {MODEL_FILENAME} with "
            f"{self.session.get_providers()[0]}, inputs {shapes}"
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        batch = []  # (request index, {input name: [b, ...]}, requested output names)
        for index, request in enumerate(requests):
            try:
                batch.append((index, self._inputs(request), self._requested(request)))
            except ValueError as exc:
                responses[index] = _error(str(exc))
        if batch:
            self._run(batch, responses)
        return responses

    def finalize(self):
        self.session = None

    def _inputs(self, request):
        """The request's input tensors {name: [b, ...]}; ValueError saying what is wrong."""
        arrays = {name: self._input(request, name) for name in self.inputs}
        if len({len(array) for array in arrays.values()}) > 1:
            sizes = {name: len(array) for name, array in arrays.items()}
            raise ValueError(f"inputs of different batch sizes: {sizes}")
        return arrays

    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"missing input '{name}'")
        array = tensor.as_numpy()
        dtype, shape = self.inputs[name]
        if array.dtype != dtype:
            raise ValueError(f"input '{name}' must be {dtype.name.upper()}, got {array.dtype}")
        if array.ndim != len(shape) + 1 or array.shape[1:] != shape or array.shape[0] < 1:
            raise ValueError(
                f"input '{name}' must have shape [B, {', '.join(map(str, shape))}] "
                f"(the model's input size), got {list(array.shape)}"
            )
        return array

    def _requested(self, request):
        names = list(request.requested_output_names()) or self.default_outputs
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the model has {self.output_names}")
        return names

    def _run(self, batch, responses):
        """One ORT run over every good request's inputs; fills their responses."""
        wanted = [n for n in self.output_names if any(n in names for _, _, names in batch)]
        feeds = {
            name: _concatenate([inputs[name] for _, inputs, _ in batch]) for name in self.inputs
        }
        count = len(next(iter(feeds.values())))
        try:
            arrays = self.session.run(wanted, feeds)
            results = dict(zip(wanted, arrays, strict=True))
        except Exception as exc:  # ORT's own exception types; every request of the run fails
            for index, _, _ in batch:
                responses[index] = _error(f"onnxruntime failed on {count} images: {exc}")
            return
        start = 0
        for index, inputs, names in batch:
            stop = start + len(next(iter(inputs.values())))
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:stop]))
                for name in names
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = stop


def _concatenate(arrays):
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
