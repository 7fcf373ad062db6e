"""DEALNet: the PAM formula, the difficulty head, the encoders and their ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dealseg.training.encoders import (
    LITE0_CLASSIFIER_KEYS,
    build_encoder,
    efficientnet_lite0,
    lite0_weights_path,
)
from dealseg.training.model import (
    DEALNet,
    DifficultyHead,
    ModelConfig,
    pam_blocked,
    pam_naive,
    pam_sdpa,
)


@pytest.mark.parametrize("n,block", [(4800, 512), (1200, 512), (777, 100), (64, 512)])
def test_blocked_pam_equals_naive(n: int, block: int) -> None:
    torch.manual_seed(n)
    p = torch.softmax(torch.randn(2, 11, n) * 3, dim=1)
    ref = pam_naive(p)
    assert torch.allclose(pam_blocked(p, block), ref, atol=1e-5, rtol=0)
    assert torch.allclose(pam_sdpa(p), ref, atol=1e-5, rtol=0)


def test_pam_matches_the_paper_formula_elementwise() -> None:
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(1, 3, 6), dim=1)[0]  # [C, N]
    energy = p.T @ p  # [N, N]
    a = torch.exp(energy) / torch.exp(energy).sum(dim=1, keepdim=True)
    expected = torch.stack([(p * a[i]).sum(dim=1) for i in range(6)], dim=1)  # out[:, i]
    assert torch.allclose(pam_naive(p[None])[0], expected, atol=1e-6)


def test_difficulty_head_starts_as_plain_softmax_and_gamma_trains() -> None:
    head = DifficultyHead(5, (6, 8), pam_block=16, pam_impl="blocked")
    assert head.gamma.item() == 0.0
    logits = torch.randn(2, 5, 12, 16, requires_grad=True)
    out = head(logits)
    assert out.shape == (2, 1, 6, 8)
    p = torch.softmax(F.interpolate(logits, (6, 8), mode="bilinear", align_corners=False), 1)
    assert torch.allclose(out, head.classifier(p), atol=1e-6)
    out.sum().backward()
    assert head.gamma.grad is not None and head.gamma.grad.abs().item() > 0
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # no stop-gradient


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_dealnet_shapes_and_difficulty_range(encoder: str) -> None:
    cfg = ModelConfig(encoder=encoder, decoder_width=16, attention_size=(10, 12), num_classes=7)
    model = DEALNet(cfg, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 90, 120))  # odd strides are fine with SAME padding
    assert out.logits.shape == (2, 7, 23, 30)
    assert out.difficulty_logits.shape == (2, 1, 10, 12)
    assert out.features.shape == (2, 16 + 48, 23, 30)
    d = out.difficulty()
    assert d.shape == (2, 90, 120) and float(d.min()) > 0 and float(d.max()) < 1
    assert model.encoder.output_stride == 16 and model.encoder.out_channels == 320


def test_param_groups_give_heads_ten_times_the_lr() -> None:
    model = DEALNet(ModelConfig(decoder_width=16), pretrained=False)
    backbone, heads = model.param_groups(0.01)
    assert backbone["lr"] == 0.01 and heads["lr"] == pytest.approx(0.1)
    assert any(p is model.difficulty_head.gamma for p in heads["params"])
    n = sum(p.numel() for g in (backbone, heads) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_encoder_registry_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        build_encoder("resnet50", pretrained=False)


def test_lite0_imagenet_weights_load_strictly_and_recognise_a_cat() -> None:
    """Every encoder key comes from the file; with the file's own classifier the body sees a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    enc = efficientnet_lite0(pretrained=True).eval()
    body = {k for k in state if not k.startswith(LITE0_CLASSIFIER_KEYS)}
    assert body == set(enc.state_dict())
    for k in body:
        assert torch.equal(enc.state_dict()[k], state[k])
    from PIL import Image

    img = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor([0.498, 0.498, 0.498]).view(1, 3, 1, 1)) / 0.502  # Lite's own norm
    with torch.no_grad():
        _, high = enc(x)
        h = F.conv2d(high, state["_conv_head.weight"])
        h = F.batch_norm(
            h,
            state["_bn1.running_mean"],
            state["_bn1.running_var"],
            state["_bn1.weight"],
            state["_bn1.bias"],
            eps=1e-3,
        )
        logits = F.linear(F.relu6(h).mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & set(range(281, 286)), f"ImageNet cat classes 281-285 not in top-5 {top5}"


def test_training_pam_takes_the_fused_kernel_not_the_n_by_n_path() -> None:
    from torch.profiler import ProfilerActivity, profile

    p = torch.softmax(torch.randn(2, 11, 600), dim=1).requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pam_sdpa(p).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in op for op in ops), sorted(ops)
    assert "aten::_scaled_dot_product_attention_math" not in ops
