"""The shared Stable Diffusion parts: prompt dropout in every trainer whose sampler uses
classifier-free guidance, the training loop, local Stable Diffusion folders, the paste-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_generation_diffumatting_micro import TINY_MICRO

from generation.bgaug.train import train_inpainting
from generation.diffumatting.model import MattingHead, decoder_feature_channels, install_green_probe
from generation.diffumatting.train import train_diffumatting
from generation.outpaint.model import InpaintingControlNetModel
from generation.outpaint.train import train_controlnet
from generation.sd.micro import TrainingPairs, train_vae
from generation.sd.parts import (
    SDParts,
    clip_tokenizer,
    sd_noise_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from generation.sd.prompts import UNCOND_PROB, Captions, encode_prompt
from ovcamo.cli import CONF_DIR

RES = 32
PROMPT = "a photo of a {} on a green background"


def tiny_parts(in_channels: int, seed: int = 0) -> SDParts:
    torch.manual_seed(seed)
    vae = tiny_vae(TINY_MICRO["vae"]).eval().requires_grad_(False)
    text = tiny_text_encoder(TINY_MICRO["text"])
    unet = tiny_unet(TINY_MICRO["unet"], in_channels, text.config.hidden_size)
    return SDParts(unet, vae, text, clip_tokenizer(), sd_noise_scheduler(), RES)


def tiny_pairs(n: int = 4) -> TrainingPairs:
    rng = np.random.default_rng(0)

    def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros((RES, RES), bool)
        mask[4 + i : 20 + i, 6:26] = True
        return rng.integers(0, 255, (RES, RES, 3), dtype=np.uint8), mask

    return TrainingPairs([lambda i=i: sample(i) for i in range(n)], ["owl", "frog"] * (n // 2), RES)


def run_trainer(name: str, train_cfg: dict) -> tuple[torch.nn.Module, SDParts, callable]:
    """The module ``name``'s trainer trains and a function that runs that training."""
    pairs = tiny_pairs()
    prompts = [PROMPT.format(c) for c in pairs.class_names]
    if name == "bgaug":
        parts = tiny_parts(9)
        return parts.unet, parts, lambda: train_inpainting(parts, pairs, prompts, train_cfg)
    if name == "outpaint":
        parts = tiny_parts(9)
        cn = InpaintingControlNetModel.from_inpainting_unet(parts.unet, parts.vae_scale)
        return cn, parts, lambda: train_controlnet(cn, parts, pairs, prompts, train_cfg)
    parts = tiny_parts(4)
    store = install_green_probe(parts.unet)
    head = MattingHead(decoder_feature_channels(parts.vae))
    steps = train_cfg["steps"]
    stages = {"generation": steps // 2, "joint": steps - steps // 2}
    cfg = {**train_cfg, "stages": stages, "prompt": PROMPT, "green_words": ["green"]}
    return parts.unet, parts, lambda: train_diffumatting(parts, head, store, pairs, cfg)


@pytest.mark.parametrize("name", ["bgaug", "outpaint", "diffumatting"])
def test_trainers_drop_the_prompt_for_classifier_free_guidance(name):
    """Every trainer whose sampler uses classifier-free guidance shows the model it trains the
    empty prompt in a share ``uncond_prob`` of its rows."""
    seen: dict[float, list[bool]] = {}
    for prob in (0.0, 0.5):
        cfg = {"steps": 6, "batch_size": 4, "lr": 1e-4, "seed": 0, "uncond_prob": prob}
        module, parts, train = run_trainer(name, cfg)
        _, empty = encode_prompt(parts.tokenizer, parts.text_encoder, [""])
        rows: list[bool] = []

        def spy(_module, _args, kwargs, rows=rows, empty=empty):
            ehs = kwargs["encoder_hidden_states"]
            rows.extend(torch.isclose(ehs, empty.expand_as(ehs)).flatten(1).all(1).tolist())

        handle = module.register_forward_pre_hook(spy, with_kwargs=True)
        train()
        handle.remove()
        seen[prob] = rows
    assert len(seen[0.5]) >= 24
    assert not any(seen[0.0]), "the prompt was dropped with uncond_prob=0"
    assert 0 < sum(seen[0.5]) < len(seen[0.5]), f"{name} never (or always) drops the prompt"


def test_prompt_dropout_defaults_to_common_sd_fine_tuning():
    parts = tiny_parts(4)
    assert UNCOND_PROB == 0.1
    assert Captions.for_training(parts, ["a owl"], {}).uncond_prob == UNCOND_PROB
    assert Captions.for_training(parts, ["a owl"], {"uncond_prob": 0.3}).uncond_prob == 0.3
    with pytest.raises(ValueError, match="uncond_prob"):
        Captions.for_training(parts, ["a owl"], {"uncond_prob": 1.5})
    trained = {
        "bgaug_micro": ["train"],
        "outpaint": ["train"],
        "outpaint_micro": ["inpainting_train", "train"],
        "diffumatting": ["train"],
        "diffumatting_micro": ["train"],
    }
    for config, keys in trained.items():
        cfg = OmegaConf.load(Path(CONF_DIR) / "generator" / f"{config}.yaml")
        for key in keys:
            assert cfg[key].uncond_prob == 0.1, (config, key)


def test_captions_batch_keeps_or_drops_whole_rows():
    parts = tiny_parts(4)
    caps = Captions.encode(parts.tokenizer, parts.text_encoder, ["a owl", "a frog"], 0.5)
    idx = torch.tensor([0, 1] * 50)
    embeds, kept = caps.batch(idx, torch.Generator().manual_seed(0))
    torch.testing.assert_close(embeds[kept], caps.embeds[idx[kept]])
    torch.testing.assert_close(embeds[~kept], caps.empty.expand(int((~kept).sum()), -1, -1))
    assert 20 < int(kept.sum()) < 80


def test_micro_vae_sees_green_canvases():
    """The shared micro VAE is shown green canvases in a share of its batches, so it can
    reconstruct DiffuMatting's pure-green canvas."""
    pairs = tiny_pairs()
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    for share, expected in ((0.0, 0.0), (1.0, 1.0)):
        vae = tiny_vae(TINY_MICRO["vae"])
        seen: list[float] = []

        def spy(_module, args, seen=seen):
            x = args[0]
            seen.append(float((x == green).all(1).float().mean()))

        handle = vae.encoder.register_forward_pre_hook(spy)
        train_vae(vae, pairs, steps=2, lr=1e-3, batch_size=4, green_share=share)
        handle.remove()
        images, masks = pairs.batch(range(len(pairs)))
        background = float((1 - masks).mean())
        assert all(v == pytest.approx(expected * background, abs=0.02) for v in seen), seen


def test_sampling_dtype_is_half_on_cuda_and_fp32_on_the_cpu():
    from generation.sd.parts import sampling_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert sampling_dtype({}, cuda) == torch.float16
    assert sampling_dtype({"sampler": {"dtype": "bf16"}}, cuda) == torch.bfloat16
    assert sampling_dtype({"sampler": {"dtype": "fp32"}}, cuda) == torch.float32
    assert sampling_dtype({"sampler": {"dtype": "fp16"}}, cpu) == torch.float32
    with pytest.raises(ValueError, match="sampler.dtype"):
        sampling_dtype({"sampler": {"dtype": "half"}}, cuda)
