"""The graph contract: every tensor name, dtype, shape and metadata key of the exported model.

Export writes it, the Triton config generator and the client read it. Torch-free by design.
Shapes are batch-first; symbolic dimensions are named strings resolved from a `ModelSpec`.

Contract 2 added the `valid_box` input (the picture's box in the frame: letterbox padding is in
no score) and the `model_name` metadata key. Contract 1 models (no `valid_box`, named `deal`)
are still read: they score stretched and cropped frames; letterboxing needs a re-export.
Contract 3 added the `entropy_map` output (the per-pixel softmax entropy the region-entropy
strategies average over each region). Contract 4 added the `novelty` output (how far a frame is
from the training frames; NaN for a graph exported without novelty statistics). Older models
are still read and served without the outputs their contract lacks (their novelty is unknown);
`deal-export reexport` rewrites a contract 2 or 3 model from its own weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "deal"  # the default model name (the only one of contract 1)
CONTRACT_VERSION = "4"
LEGACY_CONTRACT = "1"  # read, never written: no valid_box input
READ_CONTRACTS = (CONTRACT_VERSION, "3", "2", LEGACY_CONTRACT)  # outputs: see OUTPUT_SINCE
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a Triton model folder

INPUT_NAME = "image"
VALID_BOX_NAME = "valid_box"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and symbolic shape without the batch axis."""

    name: str
    dtype: str  # numpy dtype name: "uint8" | "int32" | "float32"
    dims: tuple[str, ...]  # symbolic, resolved by ModelSpec.resolve
    doc: str

    @property
    def triton_dtype(self) -> str:
        return {"uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "float32": "TYPE_FP32"}[self.dtype]

    @property
    def wire_dtype(self) -> str:
        """Datatype string of the KServe v2 protocol (tritonclient)."""
        return {"uint8": "UINT8", "int32": "INT32", "float32": "FP32"}[self.dtype]


INPUT = TensorSpec(INPUT_NAME, "uint8", ("H", "W", "3"), "RGB frame at the model's H x W")
VALID_BOX = TensorSpec(
    VALID_BOX_NAME,
    "int32",
    ("4",),
    "top, left, bottom, right (exclusive) of the picture in the frame; the pixels outside are "
    "padding: blanked before the network and left out of every score",
)
INPUTS: tuple[TensorSpec, ...] = (INPUT, VALID_BOX)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("ds", "float32", (), "mean of the difficulty map"),
    TensorSpec("de", "float32", (), "entropy (ln) of the difficulty histogram over [min, max]"),
    TensorSpec("entropy", "float32", (), "mean per-pixel softmax entropy"),
    TensorSpec("class_fraction", "float32", ("C",), "share of pixels predicted as each class"),
    TensorSpec("embedding", "float32", ("D",), "L2-normalised pooled decoder features"),
    TensorSpec(
        "novelty",
        "float32",
        (),
        "share of held-out in-domain frames nearer the training frames than this one (0..1; "
        "NaN: the model carries no novelty statistics)",
    ),
    TensorSpec("difficulty", "uint8", ("h", "w"), "difficulty map x 255 at attention-grid size"),
    TensorSpec("segmentation", "uint8", ("sh", "sw"), "argmax class at stride 4"),
    TensorSpec(
        "entropy_map",
        "uint8",
        ("sh", "sw"),
        "per-pixel softmax entropy / ln(classes) x 255 at the segmentation's grid",
    ),
)
OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in OUTPUTS)
ENTROPY_MAP = "entropy_map"
SEGMENTATION = "segmentation"
NOVELTY = "novelty"
# The contract that added an output (the others are in every contract): an older model lacks it.
OUTPUT_SINCE: dict[str, int] = {ENTROPY_MAP: 3, NOVELTY: 4}
# The per-image scalar scores ([B] FP32): what `deal-client eval` judges, each one a strategy
# (novelty, how far a frame is from the training frames, is none: selection caps or excludes by
# it).
IMAGE_SCORES: tuple[str, ...] = ("ds", "de", "entropy")
SCORE_OUTPUTS: tuple[str, ...] = (*IMAGE_SCORES, "class_fraction", "embedding", NOVELTY)
MAP_OUTPUTS: tuple[str, ...] = ("difficulty", SEGMENTATION)
# The per-pixel maps a region's score averages: score name -> the output serving it.
REGION_MAPS: dict[str, str] = {"ds": "difficulty", "entropy": ENTROPY_MAP}
SPECS: dict[str, TensorSpec] = {t.name: t for t in (*INPUTS, *OUTPUTS)}

# Metadata keys carried by the ONNX model (metadata_props) and the Triton config (parameters).
META_PREFIX = "dealseg."
META_KEYS: tuple[str, ...] = (
    "contract_version",
    "model_name",  # the Triton model name; absent in contract 1 (always `deal`)
    "class_names",  # JSON list of str
    "palette",  # JSON list of [r, g, b]
    "input_size",  # "HxW"
    "difficulty_size",  # "hxw" attention grid
    "segmentation_size",  # "hxw" stride-4 grid
    "embedding_dim",  # int
    "bins",  # int, DE histogram bins
    "mean",  # JSON list of 3 floats, 0..1 scale
    "std",  # JSON list of 3 floats
    "model_version",  # str
    "checkpoint_sha256",  # hex digest of the checkpoint file
)

# Parity tolerances between PyTorch, ONNX Runtime and Triton (docs/architecture.md).
TOL_DS = 1e-4
TOL_ENTROPY = 1e-4
TOL_CLASS_FRACTION = 1e-3
MIN_EMBEDDING_COSINE = 0.9999

# A batch's scores that no working model gives on different images (`degenerate_scores`).
CONSTANT_SPREAD = 1e-6  # a score varying less than this over the batch is constant
SATURATED = 1e-3  # DS this close to 0 or 1: the difficulty map is all one level
ONE_CLASS = 0.999  # a class with this share of an image's pixels: the image is that class


def degenerate_scores(out: Mapping[str, np.ndarray], class_names: Sequence[str]) -> list[str]:
    """What is degenerate in one batch's outputs (scores [B] or [B, 1], `class_fraction`
    [B, C], `embedding` [B, D]; any may be absent): a score constant over the batch, DS
    saturated at 0 or 1 on every image, every image one and the same class. Judged on two or
    more images that differ (their embeddings do, when given); [] when nothing is wrong."""
    import numpy as np

    count = len(next(iter(out.values()), ()))
    embedding = out.get("embedding")
    if count < 2 or (embedding is not None and np.ptp(embedding, axis=0).max() <= CONSTANT_SPREAD):
        return []
    found = []
    for name in (n for n in IMAGE_SCORES if n in out):
        values = np.asarray(out[name], np.float64).ravel()
        if np.ptp(values) <= CONSTANT_SPREAD:
            found.append(f"{name} is {values[0]:.4g} on all {count} images")
    if "ds" in out:
        ds = np.asarray(out["ds"], np.float64).ravel()
        if np.all(np.minimum(ds, 1 - ds) <= SATURATED):
            found.append("ds is 0 or 1 on every image: the difficulty map is saturated")
    if "class_fraction" in out:
        fractions = np.asarray(out["class_fraction"], np.float64)
        top = fractions.argmax(1)
        if np.all(fractions.max(1) >= ONE_CLASS) and np.all(top == top[0]):
            found.append(f"every pixel of every image is {class_names[top[0]]!r}")
    return found


class ContractError(ValueError):
    """A model or server does not satisfy the graph contract."""


def _parse_hw(text: str, key: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ContractError(f"metadata {key}={text!r} is not 'HxW'") from exc
    return h, w


@dataclass(frozen=True)
class ModelSpec:
    """Everything a consumer needs to know about an exported model, parsed from its metadata."""

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    input_size: tuple[int, int]
    difficulty_size: tuple[int, int]
    segmentation_size: tuple[int, int]
    embedding_dim: int
    bins: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_version: str
    checkpoint_sha256: str
    model_name: str = MODEL_NAME
    contract_version: str = CONTRACT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def model_id(self) -> str:
        """Identity of the model weights: used to decide whether stored scores can be reused."""
        return f"{self.model_name}:{self.model_version}:{self.checkpoint_sha256[:16]}"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs: contract 1 models take the image alone."""
        return (INPUT,) if self.contract_version == LEGACY_CONTRACT else INPUTS

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs: those of its contract (`OUTPUT_SINCE`: contract 1 and 2 models
        have no entropy map, and models before contract 4 no novelty)."""
        version = int(self.contract_version)
        return tuple(t for t in OUTPUTS if OUTPUT_SINCE.get(t.name, 0) <= version)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def takes_valid_box(self) -> bool:
        return VALID_BOX in self.inputs

    def dims(self) -> dict[str, int]:
        return {
            "H": self.input_size[0],
            "W": self.input_size[1],
            "3": 3,
            "4": 4,
            "C": self.num_classes,
            "D": self.embedding_dim,
            "h": self.difficulty_size[0],
            "w": self.difficulty_size[1],
            "sh": self.segmentation_size[0],
            "sw": self.segmentation_size[1],
        }

    def shape(self, name: str) -> tuple[int, ...]:
        """Concrete shape of tensor `name` without the batch axis."""
        dims = self.dims()
        return tuple(dims[d] for d in SPECS[name].dims)

    def to_metadata(self) -> dict[str, str]:
        """String metadata, keys prefixed with `dealseg.`, as stored in ONNX and Triton configs."""
        values = {
            "contract_version": self.contract_version,
            "model_name": self.model_name,
            "class_names": json.dumps(list(self.class_names)),
            "palette": json.dumps([list(c) for c in self.palette]),
            "input_size": "{}x{}".format(*self.input_size),
            "difficulty_size": "{}x{}".format(*self.difficulty_size),
            "segmentation_size": "{}x{}".format(*self.segmentation_size),
            "embedding_dim": str(self.embedding_dim),
            "bins": str(self.bins),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
        }
        return {META_PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> ModelSpec:
        """Parse metadata written by `to_metadata`; raise ContractError naming what is wrong."""
        version = meta.get(META_PREFIX + "contract_version")
        if version not in (*READ_CONTRACTS, None):
            raise ContractError(
                f"model uses contract version {version}, this dealseg speaks {CONTRACT_VERSION} "
                f"(and reads {', '.join(READ_CONTRACTS[1:])}); re-export the model or upgrade "
                "dealseg"
            )
        if version == LEGACY_CONTRACT:
            meta = {META_PREFIX + "model_name": MODEL_NAME, **meta}
        missing = [k for k in META_KEYS if META_PREFIX + k not in meta]
        if missing:
            raise ContractError(
                "model metadata lacks "
                + ", ".join(META_PREFIX + k for k in missing)
                + "; was it exported by `deal-export onnx`?"
            )
        return cls._parse({k: meta[META_PREFIX + k] for k in META_KEYS})

    @classmethod
    def _parse(cls, m: dict[str, str]) -> ModelSpec:
        try:
            class_names = tuple(str(c) for c in json.loads(m["class_names"]))
            palette = tuple(tuple(int(v) for v in c) for c in json.loads(m["palette"]))
            mean = tuple(float(v) for v in json.loads(m["mean"]))
            std = tuple(float(v) for v in json.loads(m["std"]))
            embedding_dim, bins = int(m["embedding_dim"]), int(m["bins"])
        except (ValueError, TypeError) as exc:
            raise ContractError(f"malformed model metadata: {exc}") from exc
        if len(mean) != 3 or len(std) != 3 or len(palette) != len(class_names):
            raise ContractError("malformed model metadata: mean/std/palette lengths")
        return cls(
            class_names=class_names,
            palette=palette,  # type: ignore[arg-type]
            input_size=_parse_hw(m["input_size"], "input_size"),
            difficulty_size=_parse_hw(m["difficulty_size"], "difficulty_size"),
            segmentation_size=_parse_hw(m["segmentation_size"], "segmentation_size"),
            embedding_dim=embedding_dim,
            bins=bins,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            model_version=m["model_version"],
            checkpoint_sha256=m["checkpoint_sha256"],
            model_name=m["model_name"],
            contract_version=m["contract_version"],
        )


def full_boxes(count: int, size: tuple[int, int]) -> np.ndarray:
    """int32 [count, 4]: the whole H x W frame is picture (a stretched or cropped frame)."""
    import numpy as np  # lazy: `--help` of every command imports this module

    return np.tile(np.array([0, 0, size[0], size[1]], dtype=np.int32), (count, 1))


def model_inputs(
    spec: ModelSpec, images: np.ndarray, boxes: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The input tensors of one inference: the images [B, H, W, 3] and, for a contract 2 model,
    their valid boxes [B, 4] (the whole frame when `boxes` is None). Padded frames for a
    contract 1 model are a ContractError: it would score the padding."""
    import numpy as np

    if not spec.takes_valid_box:
        if boxes is not None and not np.array_equal(boxes, full_boxes(len(boxes), spec.input_size)):
            raise ContractError(
                f"model {spec.model_id} uses contract {spec.contract_version}: it has no "
                f"{VALID_BOX_NAME} input and would score the padding of letterboxed frames; "
                "re-export it with `deal-export onnx`, or use --resize stretch or crop"
            )
        return {INPUT_NAME: images}
    if boxes is None:
        boxes = full_boxes(len(images), spec.input_size)
    return {INPUT_NAME: images, VALID_BOX_NAME: np.ascontiguousarray(boxes, dtype=np.int32)}


# A Triton model's versions share one config.pbtxt: its parameters hold each version's
# metadata under `dealseg.v<N>.<key>` (a config written before versions had `dealseg.<key>`).
def version_parameters(spec: ModelSpec, version: str) -> dict[str, str]:
    """`spec`'s metadata as Triton config parameters of model version `version`."""
    prefix = f"{META_PREFIX}v{version}."
    return {prefix + k[len(META_PREFIX) :]: v for k, v in spec.to_metadata().items()}


def version_metadata(parameters: Mapping[str, str], version: str) -> dict[str, str]:
    """The `dealseg.*` metadata of model version `version` from a Triton config's parameters;
    empty when the config has none for it."""
    if not any(re.match(rf"{re.escape(META_PREFIX)}v\d+\.", k) for k in parameters):
        return {k: v for k, v in parameters.items() if k.startswith(META_PREFIX)}
    prefix = f"{META_PREFIX}v{version}."
    return {
        META_PREFIX + k[len(prefix) :]: v for k, v in parameters.items() if k.startswith(prefix)
    }


_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(float)": "float32"}


def session_spec(session: Any) -> ModelSpec:
    """The ModelSpec of an onnxruntime InferenceSession, its tensors checked against it.

    Reads only the session's attributes, so this module needs no onnxruntime import.
    """
    spec = ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map)

    def io(args: Any) -> dict[str, tuple[str, tuple[int | str | None, ...]]]:
        return {a.name: (_ORT_DTYPES.get(a.type, a.type), tuple(a.shape)) for a in args}

    check_io(spec, io(session.get_inputs()), io(session.get_outputs()))
    return spec


def check_io(
    spec: ModelSpec,
    inputs: Mapping[str, tuple[str, tuple[int | str | None, ...]]],
    outputs: Mapping[str, tuple[str, tuple[int | str | None, ...]]],
) -> None:
    """Check a model's declared inputs/outputs against the contract.

    `inputs`/`outputs` map tensor name -> (numpy dtype name, shape including the batch axis; a
    symbolic or unknown batch is any non-int). Raises ContractError listing every difference.
    """
    problems: list[str] = []
    for expected, actual in ((spec.inputs, inputs), (spec.outputs, outputs)):
        names = {t.name for t in expected}
        extra = sorted(set(actual) - names)
        if extra:
            problems.append(f"unexpected tensors {extra}")
        for t in expected:
            if t.name not in actual:
                problems.append(f"missing tensor {t.name!r}")
                continue
            dtype, shape = actual[t.name]
            if dtype != t.dtype:
                problems.append(f"{t.name}: dtype {dtype}, contract says {t.dtype}")
            want = spec.shape(t.name)
            got = tuple(shape[1:])
            if len(shape) != len(want) + 1 or any(
                isinstance(g, int) and g >= 0 and g != w for g, w in zip(got, want, strict=True)
            ):
                problems.append(f"{t.name}: shape {list(shape)}, contract says [B, *{list(want)}]")
    if problems:
        raise ContractError("model does not match the dealseg contract: " + "; ".join(problems))
