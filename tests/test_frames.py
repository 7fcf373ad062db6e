"""Frame shape: --resize stretch|letterbox|crop, letterbox padding in no score, 16:9 models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from contract_model import write_contract_model
from helpers import WIDE, deal_client, embeddings, records, write_wide_pool
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from dealseg.core.contract import (
    LEGACY_CONTRACT,
    MIN_EMBEDDING_COSINE,
    TOL_CLASS_FRACTION,
    TOL_DS,
    TOL_ENTROPY,
    model_inputs,
    session_spec,
)
from dealseg.core.decode import decode_frame, place

SCORES = ("ds", "de", "entropy", "class_fraction", "embedding")


def by_hand(path: Path, size: tuple[int, int], pad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame of `path` letterboxed by hand into `size`, bands taken from `pad`: (frame, box)."""
    h, w = size
    scale = min(h / WIDE[0], w / WIDE[1])
    sh, sw = round(WIDE[0] * scale), round(WIDE[1] * scale)
    top, left = (h - sh) // 2, (w - sw) // 2
    with Image.open(path) as im:
        picture = np.asarray(im.convert("RGB").resize((sw, sh), Image.Resampling.BILINEAR))
    frame = pad.copy()
    frame[top : top + sh, left : left + sw] = picture
    return frame, np.array([top, left, top + sh, left + sw], np.int32)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wide_pool(tmp_path_factory.mktemp("wide") / "pool")


def assert_same_scores(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, tol in (("ds", TOL_DS), ("de", TOL_DS), ("entropy", TOL_ENTROPY)):
        np.testing.assert_allclose(got[name], want[name], atol=tol, err_msg=name)
    np.testing.assert_allclose(
        got["class_fraction"], want["class_fraction"], atol=TOL_CLASS_FRACTION
    )
    assert (got["embedding"] * want["embedding"]).sum(1).min() >= MIN_EMBEDDING_COSINE


def test_letterboxed_pool_scores_as_the_frames_padded_by_hand(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ("--model", tiny_onnx, "--resize", "letterbox", "--out", out, "--no-progress")
    result = deal_client("score", pool, "-k", 2, *args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("warning:") == 1 and "--resize letterbox pads it" in result.stderr

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    spec = session_spec(session)
    rows = {r["path"]: r for r in records(out)}
    paths = sorted(rows)
    black = np.zeros((*spec.input_size, 3), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, black.shape, dtype=np.uint8)
    scored = {}
    for pad in (black, noise):  # what fills the bands must not matter
        frames, boxes = zip(*(by_hand(Path(p), spec.input_size, pad) for p in paths), strict=True)
        feeds = model_inputs(spec, np.stack(frames), np.stack(boxes))
        scored[pad is black] = dict(zip(SCORES, session.run(list(SCORES), feeds), strict=True))
    assert_same_scores(scored[False], scored[True])

    emb = embeddings(out)
    client = {
        "ds": np.array([rows[p]["ds"] for p in paths]),
        "de": np.array([rows[p]["de"] for p in paths]),
        "entropy": np.array([rows[p]["entropy"] for p in paths]),
        "class_fraction": np.array([list(rows[p]["class_fraction"].values()) for p in paths]),
        "embedding": np.stack([emb[rows[p]["row"]] for p in paths]),
    }
    assert_same_scores(client, scored[True])


def test_bands_are_in_no_score(tiny_onnx: Path) -> None:
    """Letterboxed, a frame scores as its picture's pixels and cells alone: the box changes the
    scores, the bands' content does not."""
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    spec = session_spec(session)
    h, w = spec.input_size
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    box = np.array([[16, 0, 48, w]] * 2, np.int32)
    other = frames.copy()
    other[:, :16], other[:, 48:] = 255 - other[:, :16], 0
    boxed = [session.run(list(SCORES), model_inputs(spec, x, box)) for x in (frames, other)]
    for a, b in zip(*boxed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    whole = session.run(list(SCORES), model_inputs(spec, frames))  # the bands count here
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(whole, boxed[0], strict=True))


def test_stretch_warns_once_and_a_contract_1_model_refuses_letterbox(
    pool: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    stretched = deal_client("score", pool, "-k", 1, "--model", tiny_onnx, "--out", tmp_path / "s")
    assert stretched.exit_code == 0, stretched.stderr
    assert stretched.stderr.count("warning:") == 1
    assert "is 160x90 (W x H, aspect 1.78), the model takes 80x64 (1.25)" in stretched.stderr
    assert "--resize stretch stretches it out of shape" in stretched.stderr
    old = write_contract_model(tmp_path / "contract1.onnx", contract=LEGACY_CONTRACT)
    refused = deal_client(
        "score", pool, "-k", 1, "--model", old, "--resize", "letterbox", "--out", tmp_path / "l"
    )
    assert refused.exit_code == 2 and "uses contract 1" in refused.stderr
    assert "re-export it with `deal-export onnx`" in refused.stderr


def test_crop_fills_the_frame_with_the_middle_of_the_picture(pool: Path) -> None:
    path = str(sorted(pool.iterdir())[0])
    frame = decode_frame(path, (64, 80), resize="crop")
    assert frame.box == (0, 0, 64, 80) and frame.shown == WIDE
    with Image.open(path) as im:
        wide = np.asarray(im.convert("RGB").resize((114, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(frame.image, wide[:, 17 : 17 + 80])
    letterboxed = decode_frame(path, (64, 80), resize="letterbox")
    assert letterboxed.box == (9, 0, 54, 80) and not letterboxed.image[:9].any()


@given(
    shown=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    size=st.tuples(st.integers(16, 1280), st.integers(16, 1280)),
)
def test_placements_stay_in_the_frame_and_keep_the_shape(shown, size) -> None:
    assume(max(shown) <= 20 * min(shown))  # no side of a letterboxed picture below 1 pixel
    for resize in ("letterbox", "crop"):
        where = place(shown, size, resize)
        top, left, bottom, right = where.box(size)
        assert 0 <= top < bottom <= size[0] and 0 <= left < right <= size[1]
        if resize == "letterbox":  # the whole picture, one side touching the frame
            assert (bottom - top, right - left) == where.scaled
            assert where.scaled[0] == size[0] or where.scaled[1] == size[1]
        else:  # the frame filled
            assert (top, left, bottom, right) == (0, 0, *size)
        aspect = (shown[1] / shown[0], where.scaled[1] / where.scaled[0])
        assert abs(aspect[0] - aspect[1]) <= aspect[0] * (1 / where.scaled[0] + 1 / where.scaled[1])


@pytest.mark.slow
def test_a_16_9_input_size_exports_with_the_contract(
    tiny_checkpoint: Path, tmp_path: Path, pool: Path
) -> None:
    from dealseg.export.onnx_export import export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    spec = export_onnx(tiny_checkpoint, tmp_path / "wide.onnx", input_size=(144, 256))
    assert spec.input_size == (144, 256) and spec.segmentation_size == (36, 64)
    result = deal_client(
        "score", pool, "-k", 1, "--model", tmp_path / "wide.onnx", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0 and "warning:" not in result.stderr  # 16:9 frames, 16:9 model
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["model"] == spec.model_id
