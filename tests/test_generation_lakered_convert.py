"""The converter on checkpoints built here with the official LDM / LAKE-RED key layout
(openaimodel UNet, taming VQ first stage, LAKE-RED's ``SBG_module``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from generation_data import ellipse, textured, write_dataset
from test_generation_lakered import TINY, _node, source, tiny

from generation.lakered.convert import ConversionError, convert, load_official, main
from generation.lakered.model import LakeRed
from generation.lakered.sample import build_lakered
from generation.lakered.train import checkpoint_notes
from ovcamo.checkpoint import load_checkpoint

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
    """``ema``: LitEma copies (``model_ema.<name without dots>``) of every parameter of
    ``model.*`` (not of the ``bg_embed`` buffer), each the training weight plus 0.01·noise + 1e-3."""
    sd = {}
    official_unet(sd)
    official_vq(sd)
    if with_sbg:
        official_sbg(sd)
    sd["betas"] = torch.linspace(0.0015, 0.0205, 1000)
    if ema:
        for k in [k for k in sd if k.startswith("model.") and not k.endswith("bg_embed")]:
            sd["model_ema." + k[len("model.") :].replace(".", "")] = (
                sd[k] + 0.01 * rnd(*sd[k].shape) + 1e-3
            )
        sd["model_ema.num_updates"] = torch.tensor(1000)
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


def test_ema_weights_are_used_by_default():
    sd = official_checkpoint(ema=True)
    ema, plain = convert(sd, tiny()), convert(sd, tiny(), use_ema=False)
    p = "model.diffusion_model."
    assert torch.equal(
        ema["unet.conv_in.weight"], sd["model_ema.diffusion_modelinput_blocks00weight"]
    )
    assert torch.equal(plain["unet.conv_in.weight"], sd[p + "input_blocks.0.0.weight"])
    assert torch.equal(ema["rcem.fuse.weight"], sd["model_ema.SBG_modulefuseweight"])
    # the first stage and the retrieval buffer have no EMA copy
    for key in ("vqvae.quantize.embedding.weight", "bkrm.knowledge"):
        assert torch.equal(ema[key], plain[key])


def test_scale_factor_comes_from_the_checkpoint_or_is_one():
    sd = official_checkpoint()
    assert convert(sd, tiny())["scale_factor"] == 1.0
    sd["scale_factor"] = torch.tensor(0.25)
    assert convert(sd, tiny())["scale_factor"] == 0.25


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
    # official LAKE-RED weights (COD10K + CAMO) mark every sample made with them
    assert out.extra["weights_may_overlap_ovcamo_test"] is True
    assert out.extra["weights_ema"] is False  # this checkpoint has no model_ema.* keys


def test_ldm_inpainting_weights_start_a_training_run(tmp_path):
    from generation.lakered.train import TrainConfig, train
    from ovcamo.data import DataPaths

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": official_checkpoint(with_sbg=False, ema=True)}, ckpt)
    conf = tmp_path / "tiny.yaml"
    from omegaconf import OmegaConf

    OmegaConf.save(_node(), conf)
    main([str(ckpt), str(tmp_path / "ldm"), "--no-retrieval", "--config", str(conf)])
    paths = DataPaths.from_paths_json(write_dataset(tmp_path / "ds", size=40))
    tc = TrainConfig(
        steps=1, lr=0.0, batch_size=2, holdout_fraction=0.0, init_checkpoint=str(tmp_path / "ldm")
    )
    model = train(tiny(), tc, paths, tmp_path / "run", progress=False)
    init, _ = load_checkpoint(tmp_path / "ldm")
    for key in ("unet.conv_in.weight", "vqvae.encoder.conv_in.weight", "rcem.fuse.weight"):
        assert torch.equal(model.state_dict()[key], init[key]), key
    torch.testing.assert_close(model.bkrm.knowledge, model.codebook)  # the codebook copy
    assert checkpoint_notes(tmp_path / "run" / "final")["weights"] == "LDM inpainting release"
    with pytest.raises(FileNotFoundError, match="--no-retrieval"):
        train(
            tiny(),
            TrainConfig(steps=1, init_checkpoint=str(tmp_path / "none")),
            paths,
            tmp_path / "r2",
        )


# --- The official forward pass, written from the official formulas (test.py, PIL_data.py,
# ddpm.py's LatentDiffusion.get_input / DiffusionWrapper / BKRA, taming's Encoder, openaimodel's
# UNetModel), on the official state dict itself.


def ref_process(image, object_mask, size, kernel):
    """test.py's process_data on arrays: default PIL resizes, a cv2 dilation of the background
    mask at the source size, the 0.1 threshold and ``x·2 − 1`` on all three."""
    import cv2
    from PIL import Image

    bg_file = (~object_mask).astype(np.uint8) * 255  # the official mask file: white = background
    dilated = cv2.dilate(bg_file, np.ones((kernel, kernel), np.uint8), iterations=1)
    dilated = dilated.astype(np.float32)[None, None] / 255.0
    dilated = np.where(dilated < 0.1, 0.0, 1.0).astype(np.float32)
    img = np.array(Image.fromarray(image).resize((size, size))).astype(np.float32) / 255.0
    img = torch.from_numpy(img[None].transpose(0, 3, 1, 2))
    mask = np.array(Image.fromarray(bg_file).resize((size, size)))[..., None]
    mask = mask.astype(np.float32) / 255.0
    mask = np.where(mask < 0.1, 0.0, 1.0).astype(np.float32)
    mask = torch.from_numpy(mask[None].transpose(0, 3, 1, 2))
    batch = {"image": img, "mask": torch.from_numpy(dilated), "masked_image": (1 - mask) * img}
    return {k: v * 2.0 - 1.0 for k, v in batch.items()}


def ref_encode(sd, x, ch_mult=(1, 2), num_res_blocks=1, groups=4):
    """taming ``Encoder`` (no attention, no double z) then ``quant_conv``, unquantised."""
    p = "first_stage_model."

    def conv(n, h, stride=1, pad=1):
        return F.conv2d(h, sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"], stride, pad)

    def norm(n, h):
        return F.group_norm(h, groups, sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"], eps=1e-6)

    def res(n, h):
        r = conv(f"{n}.conv1", F.silu(norm(f"{n}.norm1", h)))
        r = conv(f"{n}.conv2", F.silu(norm(f"{n}.norm2", r)))
        if f"{p}{n}.nin_shortcut.weight" in sd:
            h = conv(f"{n}.nin_shortcut", h, pad=0)
        return h + r

    h = conv("encoder.conv_in", x)
    for level in range(len(ch_mult)):
        for b in range(num_res_blocks):
            h = res(f"encoder.down.{level}.block.{b}", h)
        if level != len(ch_mult) - 1:
            h = conv(f"encoder.down.{level}.downsample.conv", F.pad(h, (0, 1, 0, 1)), 2, 0)
    h = res("encoder.mid.block_2", res("encoder.mid.block_1", h))
    h = conv("encoder.conv_out", F.silu(norm("encoder.norm_out", h)))
    return conv("quant_conv", h, pad=0)


def ref_bkra(sd, c, mask, n_super, heads):
    """BKRA.forward in eval mode: LMP on the object (``1 − mask`` ≠ 0), cross-attention to the
    ``bg_embed`` codebook, expand → concatenate → fuse, and the ``±1`` blend."""
    from skimage.segmentation import slic
    from skimage.util import img_as_float

    p = "model.SBG_module."
    w = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    fg = c
    if (1 - mask).sum() == 0:
        return c

    def mlp(name, x):
        h = F.gelu(F.linear(x, w[f"{name}.fc1.weight"], w[f"{name}.fc1.bias"]), approximate="tanh")
        return F.linear(h, w[f"{name}.fc2.weight"], w[f"{name}.fc2.bias"])

    res = []
    for b in range(fg.shape[0]):
        img = fg[b].cpu().permute(1, 2, 0)
        m = 1 - mask[b].squeeze().cpu()
        segments = slic(img_as_float(img), n_segments=n_super, sigma=5, mask=m)
        rows = []
        for value in range(1, n_super + 1):
            idx = torch.from_numpy(segments == value)
            rows.append(fg[b][:, idx].mean(dim=1) if idx.any() else torch.zeros(3))
        res.append(torch.stack(rows))
    q_in = mlp("mlp_in", torch.stack(res))
    book = w["bg_embed"].transpose(1, 0).unsqueeze(0).repeat(q_in.shape[0], 1, 1)
    q = F.linear(q_in, w["crossAttn.to_q.weight"])
    k = F.linear(book, w["crossAttn.to_k.weight"])
    v = F.linear(book, w["crossAttn.to_v.weight"])

    def split(t):  # b n (h d) -> (b h) n d
        b, n, _ = t.shape
        return t.reshape(b, n, heads, -1).permute(0, 2, 1, 3).reshape(b * heads, n, -1)

    q, k, v = (split(t) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * (q.shape[-1] ** -0.5)
    out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
    out = out.reshape(-1, heads, *out.shape[1:]).permute(0, 2, 1, 3).flatten(2)
    out = F.linear(out, w["crossAttn.to_out.0.weight"], w["crossAttn.to_out.0.bias"])
    vec_bg = mlp("mlp_out", out).transpose(1, 2)
    vec_bg = vec_bg.unsqueeze(3).expand(-1, -1, -1, n_super)
    vec_bg = F.interpolate(vec_bg, size=list(fg.shape[-2:]), mode="nearest")
    fg2bg = F.conv2d(torch.cat((vec_bg, fg), dim=1), w["fuse.weight"], w["fuse.bias"])
    return fg * (1 - mask) + fg2bg * mask


def ref_unet(sd, x, t, ch=(16, 32), layers=1, attn_levels=(1,), heads=2, groups=4):
    """openaimodel ``UNetModel`` (resblock up/down sampling, legacy attention) on raw weights."""
    import math

    p = "model.diffusion_model."

    def lin(n, h):
        return F.linear(h, sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"])

    def conv(n, h, pad=1):
        return F.conv2d(h, sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"], padding=pad)

    def norm(n, h):
        return F.group_norm(h.float(), groups, sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"])

    def res(n, h, emb, updown=None):
        if updown is None:
            r = conv(f"{n}.in_layers.2", F.silu(norm(f"{n}.in_layers.0", h)))
        else:
            r = F.silu(norm(f"{n}.in_layers.0", h))
            resample = (
                (lambda a: F.avg_pool2d(a, 2, 2))
                if updown == "down"
                else (lambda a: F.interpolate(a, scale_factor=2, mode="nearest"))
            )
            r, h = resample(r), resample(h)
            r = conv(f"{n}.in_layers.2", r)
        r = r + lin(f"{n}.emb_layers.1", F.silu(emb))[..., None, None]
        r = conv(f"{n}.out_layers.3", F.silu(norm(f"{n}.out_layers.0", r)))
        skip = (
            conv(f"{n}.skip_connection", h, pad=0) if f"{p}{n}.skip_connection.weight" in sd else h
        )
        return skip + r

    def attn(n, h):
        return legacy_attention_block(h, sd, p + n, heads, groups)

    half = ch[0] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = lin("time_embed.2", F.silu(lin("time_embed.0", emb)))
    h = conv("input_blocks.0.0", x)
    hs, k = [h], 1
    for level in range(len(ch)):
        for _ in range(layers):
            h = res(f"input_blocks.{k}.0", h, emb)
            if level in attn_levels:
                h = attn(f"input_blocks.{k}.1", h)
            hs.append(h)
            k += 1
        if level != len(ch) - 1:
            h = res(f"input_blocks.{k}.0", h, emb, "down")
            hs.append(h)
            k += 1
    h = res("middle_block.2", attn("middle_block.1", res("middle_block.0", h, emb)), emb)
    k = 0
    for level in reversed(range(len(ch))):
        for i in range(layers + 1):
            h = res(f"output_blocks.{k}.0", torch.cat([h, hs.pop()], 1), emb)
            idx = 1
            if level in attn_levels:
                h = attn(f"output_blocks.{k}.1", h)
                idx = 2
            if level and i == layers:
                h = res(f"output_blocks.{k}.{idx}", h, emb, "up")
            k += 1
    return conv("out.2", F.silu(norm("out.0", h)))


def _official_reference(sd, image, object_mask, z_t, t, cfg):
    """The official UNet input ``[z_t, c]`` and ε: ``c = [encode(masked image), mask↓]`` through
    BKRA, the UNet and BKRA on the EMA weights (what ``ema_scope`` swaps in)."""
    from generation.lakered.convert import _apply_ema

    ema = _apply_ema(sd)
    batch = ref_process(image, object_mask, cfg.resolution, kernel=2)
    c = ref_encode(ema, batch["masked_image"])
    cc = F.interpolate(batch["mask"], size=c.shape[-2:])
    new_fg = ref_bkra(ema, c, cc, cfg.superpixels, cfg.retrieval_heads)
    xc = torch.cat([z_t, new_fg, cc], dim=1)
    return xc, ref_unet(ema, xc, t)


def _scene(size=40):
    rng = np.random.default_rng(3)
    image = textured(rng, size, size, np.array([120.0, 90.0, 60.0]))
    object_mask = ellipse(size, size, 21, 19, 11, 13)
    image[object_mask] = textured(rng, size, size, np.array([60.0, 140.0, 90.0]))[object_mask]
    return image, object_mask


def test_converted_model_reproduces_the_official_unet_input_and_eps():
    from generation.lakered.model import prepare_inputs

    cfg = tiny(superpixel_sigma=5.0)
    sd = official_checkpoint(ema=True)
    model = LakeRed(cfg).eval()
    model.load_state_dict(convert(sd, cfg))
    image, object_mask = _scene()
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn(1, 3, cfg.latent_size, cfg.latent_size, generator=g)
    t = torch.tensor([437])
    ref_input, ref_eps = _official_reference(sd, image, object_mask, z_t, t, cfg)
    with torch.no_grad():
        inputs = prepare_inputs(image, object_mask, cfg.resolution, dilation=2)
        cond, m, _ = model.condition(inputs["masked_image"][None], inputs["mask"][None])
        ours_input = model.unet_input(z_t, cond, m)
        ours_eps = model.denoise(z_t, t, cond, m)
    assert (m < 0).sum() > cfg.superpixels  # the SLIC path, not the few-pixel shortcut
    torch.testing.assert_close(ours_input, ref_input, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_eps, ref_eps, rtol=1e-5, atol=1e-5)
    # the raw (non-EMA) weights give another ε: the test sees which weights were converted
    raw = LakeRed(cfg).eval()
    raw.load_state_dict(convert(sd, cfg, use_ema=False))
    with torch.no_grad():
        assert (
            raw.denoise(
                z_t, t, *raw.condition(inputs["masked_image"][None], inputs["mask"][None])[:2]
            )
            - ref_eps
        ).abs().max() > 1e-3
