"""The converter on checkpoints built here with the official LDM / LAKE-RED key layout
(openaimodel UNet, taming VQ first stage, LAKE-RED's ``SBG_module``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_generation_lakered import TINY, _node, source, tiny

from generation.lakered.convert import ConversionError, convert, load_official, main
from generation.lakered.model import LakeRed
from generation.lakered.sample import build_lakered

G = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=G) * 0.1


def official_unet(sd, ch=(16, 32), layers=1, attn_levels=(1,), in_ch=7, out_ch=3):
    """openaimodel.UNetModel(resblock_updown=True) keys, as LDM names them."""

    def lin(n, o, i):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = rnd(o, i), rnd(o)

    def conv(n, o, i, k=3):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = rnd(o, i, k, k), rnd(o)

    def norm(n, c):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = 1 + rnd(c), rnd(c)

    def res(n, i, o, temb):
        norm(f"{n}.in_layers.0", i)
        conv(f"{n}.in_layers.2", o, i)
        lin(f"{n}.emb_layers.1", o, temb)
        norm(f"{n}.out_layers.0", o)
        conv(f"{n}.out_layers.3", o, o)
        if i != o:
            conv(f"{n}.skip_connection", o, i, 1)

    def attn(n, c):
        norm(f"{n}.norm", c)
        sd[f"{n}.qkv.weight"], sd[f"{n}.qkv.bias"] = rnd(3 * c, c, 1), rnd(3 * c)
        sd[f"{n}.proj_out.weight"], sd[f"{n}.proj_out.bias"] = rnd(c, c, 1), rnd(c)

    p = "model.diffusion_model."
    mc, temb = ch[0], 4 * ch[0]
    lin(p + "time_embed.0", temb, mc)
    lin(p + "time_embed.2", temb, temb)
    conv(p + "input_blocks.0.0", mc, in_ch)
    chans, cur, k = [mc], mc, 1
    for level, c in enumerate(ch):
        for _ in range(layers):
            res(f"{p}input_blocks.{k}.0", cur, c, temb)
            cur = c
            if level in attn_levels:
                attn(f"{p}input_blocks.{k}.1", c)
            chans.append(cur)
            k += 1
        if level != len(ch) - 1:
            res(f"{p}input_blocks.{k}.0", cur, cur, temb)
            chans.append(cur)
            k += 1
    res(p + "middle_block.0", cur, cur, temb)
    attn(p + "middle_block.1", cur)
    res(p + "middle_block.2", cur, cur, temb)
    k = 0
    for level in reversed(range(len(ch))):
        c = ch[level]
        for i in range(layers + 1):
            res(f"{p}output_blocks.{k}.0", cur + chans.pop(), c, temb)
            cur = c
            idx = 1
            if level in attn_levels:
                attn(f"{p}output_blocks.{k}.1", c)
                idx = 2
            if level and i == layers:
                res(f"{p}output_blocks.{k}.{idx}", cur, cur, temb)
            k += 1
    norm(p + "out.0", cur)
    conv(p + "out.2", out_ch, mc)


def official_vq(sd, ch=8, ch_mult=(1, 2), num_res_blocks=1, z=3, n_embed=16):
    """taming Encoder/Decoder (attn_type none) + quantiser keys, as LDM names them."""

    def conv(n, o, i, k=3):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = rnd(o, i, k, k), rnd(o)

    def norm(n, c):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = 1 + rnd(c), rnd(c)

    def res(n, i, o):
        norm(f"{n}.norm1", i)
        conv(f"{n}.conv1", o, i)
        norm(f"{n}.norm2", o)
        conv(f"{n}.conv2", o, o)
        if i != o:
            conv(f"{n}.nin_shortcut", o, i, 1)

    p = "first_stage_model."
    conv(p + "encoder.conv_in", ch, 3)
    block_in = ch
    for level, mult in enumerate(ch_mult):
        for b in range(num_res_blocks):
            res(f"{p}encoder.down.{level}.block.{b}", block_in, ch * mult)
            block_in = ch * mult
        if level != len(ch_mult) - 1:
            conv(f"{p}encoder.down.{level}.downsample.conv", block_in, block_in)
    res(p + "encoder.mid.block_1", block_in, block_in)
    res(p + "encoder.mid.block_2", block_in, block_in)
    norm(p + "encoder.norm_out", block_in)
    conv(p + "encoder.conv_out", z, block_in)
    block_in = ch * ch_mult[-1]
    conv(p + "decoder.conv_in", block_in, z)
    res(p + "decoder.mid.block_1", block_in, block_in)
    res(p + "decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(len(ch_mult))):
        for b in range(num_res_blocks + 1):
            res(f"{p}decoder.up.{level}.block.{b}", block_in, ch * ch_mult[level])
            block_in = ch * ch_mult[level]
        if level != 0:
            conv(f"{p}decoder.up.{level}.upsample.conv", block_in, block_in)
    norm(p + "decoder.norm_out", block_in)
    conv(p + "decoder.conv_out", 3, block_in)
    conv(p + "quant_conv", z, z, 1)
    conv(p + "post_quant_conv", z, z, 1)
    sd[p + "quantize.embedding.weight"] = rnd(n_embed, z)


def official_sbg(sd, heads=2, head_dim=8, n_embed=16):
    """LAKE-RED's BKRA (``model.SBG_module``) keys."""
    p = "model.SBG_module."
    inner = heads * head_dim
    sd[p + "bg_embed"] = rnd(3, n_embed)
    for mlp in ("mlp_in", "mlp_out"):
        sd[f"{p}{mlp}.fc1.weight"], sd[f"{p}{mlp}.fc1.bias"] = rnd(6, 3), rnd(6)
        sd[f"{p}{mlp}.fc2.weight"], sd[f"{p}{mlp}.fc2.bias"] = rnd(3, 6), rnd(3)
    for name in ("to_q", "to_k", "to_v"):
        sd[f"{p}crossAttn.{name}.weight"] = rnd(inner, 3)
    sd[p + "crossAttn.to_out.0.weight"], sd[p + "crossAttn.to_out.0.bias"] = rnd(3, inner), rnd(3)
    sd[p + "fuse.weight"], sd[p + "fuse.bias"] = rnd(3, 6, 1, 1), rnd(3)


def official_checkpoint(with_sbg=True, ema=False):
    sd = {}
    official_unet(sd)
    official_vq(sd)
    if with_sbg:
        official_sbg(sd)
    sd["betas"] = torch.linspace(0.0015, 0.0205, 1000)
    if ema:
        for k in [k for k in sd if k.startswith("model.")]:
            sd["model_ema." + k[len("model.") :].replace(".", "")] = sd[k] + 1.0
    return sd


def test_every_key_lands_and_the_model_loads_strictly():
    sd = official_checkpoint()
    out = convert(sd, tiny())
    model = LakeRed(tiny())
    model.load_state_dict(out, strict=True)
    p = "model.diffusion_model."
    assert torch.equal(
        out["unet.down_blocks.0.resnets.0.conv1.weight"],
        sd[p + "input_blocks.1.0.in_layers.2.weight"],
    )
    assert torch.equal(
        out["unet.down_blocks.0.downsamplers.0.conv2.weight"],
        sd[p + "input_blocks.2.0.out_layers.3.weight"],
    )
    assert torch.equal(
        out["unet.up_blocks.0.upsamplers.0.norm1.weight"],
        sd[p + "output_blocks.1.2.in_layers.0.weight"],
    )
    assert torch.equal(
        out["vqvae.quantize.embedding.weight"], sd["first_stage_model.quantize.embedding.weight"]
    )
    assert torch.equal(out["bkrm.knowledge"], sd["model.SBG_module.bg_embed"].t())
    assert torch.equal(out["rcem.fuse.weight"], sd["model.SBG_module.fuse.weight"])


def legacy_attention_block(x, sd, prefix, heads, groups):
    """openaimodel ``AttentionBlock`` with ``QKVAttentionLegacy``, written from the official code."""
    b, c, h, w = x.shape
    xn = F.group_norm(x, groups, sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"])
    qkv = F.conv1d(xn.reshape(b, c, -1), sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"])
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    scale = 1 / ch**0.25
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    hid = F.conv1d(a, sd[f"{prefix}.proj_out.weight"], sd[f"{prefix}.proj_out.bias"])
    return x + hid.reshape(b, c, h, w)


def test_attention_matches_the_official_qkv_layout():
    sd = official_checkpoint()
    model = LakeRed(tiny())
    model.load_state_dict(convert(sd, tiny()))
    x = torch.randn(2, 32, 4, 4)
    ours = model.unet.mid_block.attentions[0](x)
    ref = legacy_attention_block(x, sd, "model.diffusion_model.middle_block.1", heads=2, groups=4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_ema_weights_are_used_when_asked():
    sd = official_checkpoint(ema=True)
    plain, ema = convert(sd, tiny()), convert(sd, tiny(), use_ema=True)
    key = "unet.conv_in.weight"
    torch.testing.assert_close(ema[key], plain[key] + 1.0)
    assert torch.equal(
        ema["vqvae.quantize.embedding.weight"], plain["vqvae.quantize.embedding.weight"]
    )


def test_plain_ldm_inpainting_needs_the_flag():
    sd = official_checkpoint(with_sbg=False)
    with pytest.raises(ConversionError, match="missing"):
        convert(sd, tiny())
    out = convert(sd, tiny(), require_retrieval=False)
    assert torch.equal(out["bkrm.knowledge"], out["vqvae.quantize.embedding.weight"])


def test_size_mismatch_and_strays_are_refused():
    with pytest.raises(ConversionError, match="shapes|missing"):
        convert(official_checkpoint(), tiny(num_vq_embeddings=32))
    sd = official_checkpoint()
    sd["model.diffusion_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no place"):
        convert(sd, tiny())
    with pytest.raises(ConversionError, match="UNet"):
        convert({k: v for k, v in sd.items() if "diffusion_model" not in k}, tiny())


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_official(tmp_path / "nope.ckpt")


def test_cli_writes_a_checkpoint_the_builder_samples_from(tmp_path):
    ckpt = tmp_path / "lakered.ckpt"
    torch.save({"state_dict": official_checkpoint(), "global_step": 7}, ckpt)
    conf = tmp_path / "tiny.yaml"
    from omegaconf import OmegaConf

    OmegaConf.save(_node(), conf)
    main([str(ckpt), str(tmp_path / "converted"), "--config", str(conf)])
    gen = build_lakered(_node(checkpoint=str(tmp_path / "converted"), num_inference_steps=2))
    src = source()
    out = gen.generate(src, "owl", 0)
    np.testing.assert_array_equal(out.image[src.mask], src.image[src.mask])
    assert TINY["resolution"] == gen.model.config.resolution
