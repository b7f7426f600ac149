"""Salient-object-aware outpainting: the ControlNet reads the full inpainting input (directly in
training, through the stock pipeline in sampling), its training step, and object expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generation_diffumatting_micro import (  # noqa: F401
    TINY_MICRO,
    build,
    cache,
    source,
    world,
)

from generation.outpaint.expansion import object_expansion
from generation.outpaint.model import InpaintingControlNetModel
from generation.outpaint.train import controlnet_step
from generation.sd.micro import SDBase
from generation.sd.parts import (
    clip_tokenizer,
    sd_noise_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from generation.sd.prompts import encode_prompt


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    vae = tiny_vae(TINY_MICRO["vae"]).eval().requires_grad_(False)
    text = tiny_text_encoder(TINY_MICRO["text"])
    unet = tiny_unet(TINY_MICRO["unet"], 9, text.config.hidden_size)
    base = SDBase(vae, text, clip_tokenizer(), "test")
    return base, unet


def test_controlnet_is_made_from_the_inpainting_unet(parts):
    base, unet = parts
    cn = InpaintingControlNetModel.from_inpainting_unet(unet, base.vae_scale)
    assert cn.config.in_channels == 9
    torch.testing.assert_close(cn.conv_in.weight, unet.conv_in.weight)
    with pytest.raises(ValueError, match="9 input channels"):
        InpaintingControlNetModel.from_inpainting_unet(
            tiny_unet(TINY_MICRO["unet"], 4, base.text_encoder.config.hidden_size)
        )


def test_latent_input_plus_recorded_condition_equals_the_full_input(parts):
    base, unet = parts
    cn = InpaintingControlNetModel.from_inpainting_unet(unet, base.vae_scale)
    # Non-zero output convolutions, so the residuals depend on the input.
    for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.1)
    z, mask, masked = torch.randn(2, 4, 16, 16), torch.rand(2, 1, 16, 16), torch.randn(2, 4, 16, 16)
    emb = torch.randn(2, 77, base.text_encoder.config.hidden_size)
    cond = torch.rand(2, 3, 32, 32)
    full = cn(torch.cat([z, mask, masked], 1), 10, emb, cond, return_dict=False)
    with pytest.raises(RuntimeError, match="inpainting condition"):
        cn(z, 10, emb, cond, return_dict=False)
    cn.inpainting_condition = (mask, masked)
    split = cn(z, 10, emb, cond, return_dict=False)
    for a, b in zip(full[0], split[0], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(full[1], split[1])
    other = cn(torch.cat([z, 1 - mask, masked], 1), 10, emb, cond, return_dict=False)
    assert not torch.allclose(other[1], full[1])


def test_controlnet_step_trains_only_the_controlnet(parts):
    base, unet = parts
    cn = InpaintingControlNetModel.from_inpainting_unet(unet, base.vae_scale)
    unet.requires_grad_(False)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1
    _, emb = encode_prompt(base.tokenizer, base.text_encoder, ["a photo of a owl"] * 2)
    loss = controlnet_step(cn, unet, base.vae, sd_noise_scheduler(), images, masks, emb)
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())
    # At initialisation only the zero convolutions receive gradient (ControlNet's design).
    assert cn.controlnet_mid_block.weight.grad.abs().sum() > 0


def test_outpaint_pipeline_hands_the_condition_to_the_controlnet(world, source, cache):  # noqa: F811
    gen = build("outpaint_micro", world, cache)
    seen = []
    original = gen.pipe.controlnet.forward

    def spy(sample, *args, **kwargs):
        seen.append((sample.shape, gen.pipe.controlnet.inpainting_condition[0].shape))
        return original(sample, *args, **kwargs)

    gen.pipe.controlnet.forward = spy
    out = gen.generate(source, source.class_name, seed=1)
    assert seen and all(s[0][1] == 4 and s[1][0] == s[0][0] for s in seen)
    np.testing.assert_array_equal(out.image[source.mask], source.image[source.mask])
    assert gen.pipe.controlnet.inpainting_condition is None


def test_object_expansion():
    m_in = np.zeros((10, 10), bool)
    m_in[2:5, 2:5] = True
    image = np.zeros((10, 10, 3), np.uint8)

    def grown(_image, class_name, object_mask):
        assert class_name == "owl" and object_mask.sum() == 9
        m = m_in.copy()
        m[2:5, 5:7] = True  # 6 new pixels
        m[2, 2] = False  # a missed object pixel does not lower the score
        return m

    assert object_expansion(image, m_in, grown, "owl") == pytest.approx(0.06)
    assert object_expansion(image, m_in, lambda *_: m_in.astype(np.float32) * 0.9) == 0.0
    assert object_expansion(image, m_in, lambda *_: np.full((10, 10), 0.7)) == pytest.approx(0.91)
    with pytest.raises(ValueError, match="shape"):
        object_expansion(image, m_in, lambda *_: np.zeros((5, 5)))
