"""BaCLIP's blocks in isolation: DCT basis, MFMSA/CCE, MREM switches, neck, prompt adapter,
batched SAM decoder with and without high-resolution skips, loss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from ovcamo.models.cce import (
    CCE,
    MFMSA,
    MultiFrequencyChannelAttention,
    dct_1d,
    dct_basis_2d,
    top_frequencies,
)
from ovcamo.models.losses import boundary_weights, segmentation_loss
from ovcamo.models.mrem import MREM
from ovcamo.models.neck import FeatureNeck, HighResSkips
from ovcamo.models.prompt_adapter import PromptAdapter
from ovcamo.models.resampling import adaptive_pool, resize_bilinear
from ovcamo.models.sam_decoder import build_mask_decoder, decode_masks


def test_dct_1d_matches_scipy_orthonormal_dct() -> None:
    for n in (4, 7, 14):
        reference = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
        np.testing.assert_allclose(dct_1d(n).numpy(), reference, atol=1e-12)


def test_dct_basis_is_orthonormal() -> None:
    full = dct_basis_2d(7, [(u, v) for u in range(7) for v in range(7)]).double().flatten(1)
    torch.testing.assert_close(
        full @ full.t(), torch.eye(49, dtype=torch.float64), atol=1e-6, rtol=0
    )
    top = dct_basis_2d(7, top_frequencies(16)).double().flatten(1)
    torch.testing.assert_close(top @ top.t(), torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)
    # Frequency (0, 0) is the constant map; (u, v) must differ from (v, u).
    torch.testing.assert_close(top[0], torch.full((49,), 1 / 7, dtype=torch.float64))
    assert len(set(top_frequencies(16))) == 16


def test_top_frequencies_rescale_and_validate() -> None:
    assert top_frequencies(3, 14) == [(0, 0), (0, 2), (12, 0)]
    with pytest.raises(ValueError, match="num_frequencies"):
        top_frequencies(17)
    with pytest.raises(ValueError, match="at least 7"):
        top_frequencies(4, size=5)


@pytest.mark.parametrize("size", [(8, 8), (24, 24), (9, 13)])
def test_mfmsa_keeps_shape_and_is_residual(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = MFMSA(32, reduction=8)
    x = torch.randn(2, 32, *size)
    y = block(x)
    assert y.shape == x.shape
    for conv in block.fuse:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize(
    ("size", "out"), [((8, 8), (7, 7)), ((2, 2), (7, 7)), ((9, 13), (7, 7)), ((8, 8), (4, 4))]
)
def test_adaptive_pool_is_the_pooling_kernel(size, out) -> None:
    x = torch.randn(3, 5, *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    pooled, reference = adaptive_pool(x, out), F.adaptive_avg_pool2d(x_ref, out).flatten(2)
    torch.testing.assert_close(pooled, reference, atol=1e-14, rtol=0)
    weights = torch.randn_like(reference)
    (pooled * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-14, rtol=0)


@pytest.mark.parametrize(
    ("size", "out"), [((32, 32), (128, 128)), ((2, 2), (8, 8)), ((5, 7), (9, 4)), ((8, 8), (8, 8))]
)
def test_resize_bilinear_is_the_interpolation_kernel(size, out) -> None:
    x = torch.randn(3, 5, *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    resized = resize_bilinear(x, out)
    reference = F.interpolate(x_ref, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, reference, atol=1e-14, rtol=0)
    weights = torch.randn_like(reference)
    (resized * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-14, rtol=0)


def test_channel_attention_matches_the_written_formula_and_its_gradient() -> None:
    """χ = x ⊗ σ(Σ_stat MLP(mean over frequencies of stat(DCT-filtered pooled map))), stat ∈
    {mean, max, min}, written here with amax/amin: values and input gradients agree."""
    torch.manual_seed(0)
    attention = MultiFrequencyChannelAttention(24, reduction=4).double()
    x = torch.randn(2, 24, 9, 11, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)

    pooled = F.adaptive_avg_pool2d(x_ref, 7)
    filtered = (pooled[:, None] * attention.dct_filters.double()[None, :, None]).flatten(3)
    stats = (filtered.mean(-1), filtered.amax(-1), filtered.amin(-1))
    logits = sum(attention.bottleneck(s.mean(1)) for s in stats)
    reference = x_ref * torch.sigmoid(logits)[:, :, None, None]

    out = attention(x)
    torch.testing.assert_close(out, reference, atol=1e-12, rtol=0)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=0)


def test_cce_block_count() -> None:
    x = torch.randn(1, 16, 8, 8)
    assert CCE(16, num_blocks=0)(x) is x
    for n in range(1, 6):
        assert len(CCE(16, num_blocks=n, reduction=4).blocks) == n
    with pytest.raises(ValueError, match="num_blocks"):
        CCE(16, num_blocks=6)


def _mrem_io(mode: str) -> tuple[MREM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return MREM(24, 20, 32, num_heads=4, mode=mode), torch.randn(2, 24, 6, 5), torch.randn(7, 20)


def test_mrem_shapes_and_both_directions_mix() -> None:
    mrem, v, t = _mrem_io("both")
    e_v, e_t = mrem(v, t)
    assert e_v.shape == (2, 32, 6, 5) and e_t.shape == (2, 7, 32)
    e_v2, e_t2 = mrem(v, t + torch.randn_like(t))
    assert not torch.allclose(e_v, e_v2)
    e_v3, e_t3 = mrem(v + torch.randn_like(v), t)
    assert not torch.allclose(e_t, e_t3)


def test_mrem_text_to_vision_leaves_text_independent_of_the_image() -> None:
    mrem, v, t = _mrem_io("text_to_vision")
    e_v, e_t = mrem(v, t)
    e_v_other_image, e_t_other_image = mrem(v + torch.randn_like(v), t)
    torch.testing.assert_close(e_t, e_t_other_image, rtol=0, atol=0)
    e_v_other_text, _ = mrem(v, t + torch.randn_like(t))
    assert not torch.allclose(e_v, e_v_other_text)


def test_mrem_vision_to_text_leaves_image_independent_of_the_text() -> None:
    mrem, v, t = _mrem_io("vision_to_text")
    e_v, e_t = mrem(v, t)
    e_v_other_text, e_t_other_text = mrem(v, t + torch.randn_like(t))
    torch.testing.assert_close(e_v, e_v_other_text, rtol=0, atol=0)
    assert not torch.allclose(e_t, e_t_other_text)
    _, e_t_other_image = mrem(v + torch.randn_like(v), t)
    assert not torch.allclose(e_t, e_t_other_image)


def test_mrem_off_is_the_projections_only() -> None:
    mrem, v, t = _mrem_io("off")
    e_v, e_t = mrem(v, t)
    torch.testing.assert_close(e_v, mrem.f_v(v))
    torch.testing.assert_close(e_t, mrem.f_t(t).expand(2, -1, -1))
    with pytest.raises(ValueError, match="mrem.mode"):
        MREM(4, 4, 8, num_heads=2, mode="sideways")  # type: ignore[arg-type]


def test_prompt_modes() -> None:
    torch.manual_seed(0)
    e_t = torch.randn(2, 5, 16)
    scores = torch.tensor([[0.0, 9.0, 1.0, 5.0, 2.0], [3.0, 0.0, 8.0, 1.0, 7.0]])
    topk = PromptAdapter(16, 8, self_attention=False, mode="topk", k=2)
    expected = topk.proj(e_t)[torch.arange(2)[:, None], torch.tensor([[1, 3], [2, 4]])]
    torch.testing.assert_close(topk(e_t, scores), expected)
    assert PromptAdapter(16, 8, mode="topk", num_heads=4, k=9)(e_t, scores).shape == (2, 5, 8)
    assert PromptAdapter(16, 8, mode="all", num_heads=4)(e_t, scores).shape == (2, 5, 8)
    weighted = PromptAdapter(16, 8, self_attention=False, mode="weighted")
    manual = (scores.softmax(-1)[..., None] * weighted.proj(e_t)).sum(1, keepdim=True)
    torch.testing.assert_close(weighted(e_t, scores), manual)
    with_sa = PromptAdapter(16, 8, self_attention=True, num_heads=4, mode="weighted")
    assert with_sa(e_t, scores).shape == (2, 1, 8)
    with pytest.raises(ValueError, match="prompt.mode"):
        PromptAdapter(16, 8, mode="random")  # type: ignore[arg-type]


def test_batched_decoder_equals_per_image_official_calls() -> None:
    torch.manual_seed(0)
    decoder = build_mask_decoder(32, depth=2, mlp_dim=64, num_heads=4).eval()
    b, n, h, w = 3, 2, 6, 7
    image = torch.randn(b, 32, h, w)
    pe = torch.randn(1, 32, h, w)
    sparse = torch.randn(b, n, 32)
    dense = torch.randn(b, 32, h, w)
    batched = decode_masks(decoder, image, pe, sparse, dense)
    assert batched.shape == (b, 1, 4 * h, 4 * w)
    per_image = torch.cat(
        [
            decoder(image[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], False)[0]
            for i in range(b)
        ]
    )
    torch.testing.assert_close(batched, per_image, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one prompt set per image"):
        decode_masks(decoder, image, pe, sparse[:2], dense)


def _f3net_structure_bce(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The weighted BCE term of F3Net's published ``structure_loss``."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(pred, mask, reduction="none")
    return ((weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))).mean()


def test_loss_matches_reference_weighted_bce_and_dice() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 40, 48)
    masks = torch.zeros(2, 1, 40, 48)
    masks[0, :, 10:30, 12:40] = 1
    masks[1, :, 5:15, 5:20] = 1
    out = segmentation_loss(logits, masks)
    torch.testing.assert_close(out["bce"], _f3net_structure_bce(logits, masks))
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * masks).sum((2, 3)) + 1) / (p.sum((2, 3)) + masks.sum((2, 3)) + 1)
    torch.testing.assert_close(out["dice"], dice.mean())
    torch.testing.assert_close(out["loss"], out["bce"] + out["dice"])
    perfect = segmentation_loss((masks * 2 - 1) * 30, masks)
    assert perfect["loss"] < 1e-3


def test_boundary_weights_are_the_box_mean_of_the_mask() -> None:
    masks = (torch.rand(2, 1, 40, 36) > 0.6).float()
    box = F.avg_pool2d(masks, 9, stride=1, padding=4)
    torch.testing.assert_close(boundary_weights(masks, 9, 2.0), 1 + 2.0 * (box - masks).abs())
    # A window wider than the image, on a soft mask.
    soft = torch.rand(2, 1, 12, 10)
    box = F.avg_pool2d(F.pad(soft, (15, 15, 15, 15)), 31, stride=1)
    torch.testing.assert_close(boundary_weights(soft, 31, 5.0), 1 + 5.0 * (box - soft).abs())


def test_boundary_weights_peak_at_edges() -> None:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    w = boundary_weights(mask)
    assert w.min() >= 1.0
    assert w[0, 0, 16, 32] > w[0, 0, 32, 32]
    assert w[0, 0, 32, 32] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="odd"):
        boundary_weights(mask, kernel_size=30)
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


def _trunk(b: int = 2) -> list[torch.Tensor]:
    return [torch.randn(b, c, 64 // s, 64 // s) for c, s in ((8, 4), (16, 8), (24, 16), (32, 32))]


@pytest.mark.parametrize(("stride", "sizes"), [(4, [16]), (8, [16, 8]), (16, [16, 8, 4])])
def test_neck_returns_the_levels_up_to_the_embedding_stride(stride, sizes) -> None:
    neck = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 12, stride)
    levels = neck(_trunk())
    assert [x.shape[-1] for x in levels] == sizes and all(x.shape[1] == 12 for x in levels)
    # The coarsest trunk level reaches the embedding through the top-down path.
    features = _trunk()
    changed = [f.clone() for f in features]
    changed[3] = torch.randn_like(changed[3])
    assert not torch.allclose(neck(features)[-1], neck(changed)[-1])


def test_cpu_bf16_neck_hands_on_fp32_levels_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``cpu_bf16`` the neck runs under bf16 autocast where the processor has it: levels stay
    fp32, within bf16 rounding of the fp32 neck's, and gradients reach every weight; without
    native bf16 it is the fp32 neck."""
    from ovcamo.models import clip_backbone

    features = _trunk()
    torch.manual_seed(0)
    reference = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 12, 16, refine=True)
    monkeypatch.setattr(clip_backbone, "native_cpu_bf16", lambda: True)
    bf16 = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 12, 16, refine=True, cpu_bf16=True)
    bf16.load_state_dict(reference.state_dict())
    assert bf16.cpu_bf16
    levels = bf16(features)
    for got, want in zip(levels, reference(features), strict=True):
        assert got.dtype == torch.float32
        assert not torch.equal(got, want)  # bf16 did run
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * want.abs().max().item())
    sum(x.sum() for x in levels).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in bf16.parameters())
    monkeypatch.setattr(clip_backbone, "native_cpu_bf16", lambda: False)
    plain = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 12, 16, refine=True, cpu_bf16=True)
    plain.load_state_dict(reference.state_dict())
    assert not plain.cpu_bf16
    for got, want in zip(plain(features), reference(features), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_refined_neck_is_nonlinear_where_the_plain_fpn_is_linear() -> None:
    torch.manual_seed(0)
    features, other = _trunk(), _trunk()
    summed = [a + b for a, b in zip(features, other, strict=True)]
    for refine in (False, True):
        neck = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 12, 16, refine=refine)
        zero = neck([torch.zeros_like(f) for f in features])
        # An affine map f satisfies f(a + b) = f(a) + f(b) - f(0) at every level.
        affine = all(
            torch.allclose(s, a + b - z, atol=1e-5)
            for s, a, b, z in zip(neck(summed), neck(features), neck(other), zero, strict=True)
        )
        assert affine is not refine
        if refine:
            # Each level leaves a GroupNorm + ReLU: non-negative, some units off.
            assert all((x >= 0).all() and (x == 0).any() for x in neck(features))


def test_neck_takes_a_repeated_stride_once() -> None:
    dense = torch.randn(2, 8, 4, 4)
    neck = FeatureNeck([8, 8, 8, 8], [16, 16, 16, 32], 12, 16)
    assert neck.used == [2, 3] and neck.embedding_level == 0
    assert [x.shape[-1] for x in neck([dense, dense, dense, torch.randn(2, 8, 2, 2)])] == [4]


def test_high_res_skips_at_two_and_four_times_the_embedding() -> None:
    levels = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 16, 16)(_trunk())
    s1, s0 = HighResSkips(16, 32)(levels)
    assert s1.shape == (2, 8, 8, 8) and s0.shape == (2, 4, 16, 16)
    # Stride 8: the stride-4 level feeds the first skip; the second is resized from it.
    levels = FeatureNeck([8, 16, 24, 32], [4, 8, 16, 32], 16, 8)(_trunk())
    s1, s0 = HighResSkips(16, 32)(levels)
    assert s1.shape == (2, 8, 16, 16) and s0.shape == (2, 4, 32, 32)


def test_decoder_with_zero_skips_is_sams_upsampling() -> None:
    torch.manual_seed(0)
    decoder = build_mask_decoder(32, depth=1, mlp_dim=64, num_heads=4).eval()
    emb, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    prompts, dense = torch.randn(2, 1, 32), torch.randn(1, 32, 4, 4)
    zeros = (torch.zeros(2, 8, 8, 8), torch.zeros(2, 4, 16, 16))
    plain = decode_masks(decoder, emb, pe, prompts, dense)
    torch.testing.assert_close(
        decode_masks(decoder, emb, pe, prompts, dense, high_res=zeros), plain
    )
    ones = (torch.ones(2, 8, 8, 8), torch.ones(2, 4, 16, 16))
    assert not torch.allclose(decode_masks(decoder, emb, pe, prompts, dense, high_res=ones), plain)
