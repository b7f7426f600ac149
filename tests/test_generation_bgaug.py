"""Background augmentation: the eroded background region, adaptive strength, object pixels pasted
back exactly, several copies, and the inpainting training step on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from test_generation_diffumatting_micro import (  # noqa: F401
    TINY_MICRO,
    build,
    cache,
    source,
    world,
)

from generation.base import SkipSample, SourceObject
from generation.bgaug.sample import BackgroundAugmentation
from generation.bgaug.train import inpainting_input, inpainting_step, random_boxes
from generation.sd.parts import (
    clip_tokenizer,
    sd_noise_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from generation.sd.prompts import encode_prompt


def square_mask(h: int = 40, w: int = 40) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[12:24, 10:30] = True
    return m


def test_inpaint_region_is_the_background_eroded_by_a_7x7_minimum_filter():
    gen = BackgroundAugmentation(pipe=None)
    mask = square_mask()
    region = gen.inpaint_region(mask)
    expected = binary_erosion(~mask, np.ones((7, 7), bool), border_value=1)
    np.testing.assert_array_equal(region, expected)
    assert not (region & mask).any()
    # The kept ring around the object is three pixels wide on each side.
    assert not region[9:27, 7:33].any() and region[8, 20] and region[27, 20]


def test_strength_is_one_minus_d_times_background_ratio():
    gen = BackgroundAugmentation(pipe=None, strength_d=0.6, min_strength=0.2)
    mask = square_mask()
    ratio = 1 - mask.mean()
    assert gen.strength(mask) == pytest.approx(1 - 0.6 * ratio)
    assert BackgroundAugmentation(pipe=None, strength_d=2.0, min_strength=0.3).strength(
        mask
    ) == pytest.approx(0.3)


def test_bgaug_pastes_back_everything_outside_the_repainted_region(world, source, cache):  # noqa: F811
    gen = build("bgaug_micro", world, cache)
    gen.copies = 3
    copies = gen.generate_copies(source, source.class_name, seed=0)
    assert len(copies) == 3
    region = gen.inpaint_region(source.mask)
    for c in copies:
        np.testing.assert_array_equal(c.mask, source.mask)
        np.testing.assert_array_equal(c.image[~region], source.image[~region])
        assert c.extra["strength"] == pytest.approx(gen.strength(source.mask), abs=1e-4)
    assert not np.array_equal(copies[0].image, copies[1].image)


def test_bgaug_skips_sources_without_background(world, cache):  # noqa: F811
    gen = build("bgaug_micro", world, cache)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(SkipSample, match="empty_mask"):
        gen.generate(SourceObject(image, np.zeros((32, 32), bool), "owl", "x"), "owl", 0)
    full = np.ones((32, 32), bool)
    full[0, 0] = False
    with pytest.raises(SkipSample, match="object_fills_image"):
        gen.generate(SourceObject(image, full, "owl", "x"), "owl", 0)


def test_inpainting_step_learns_and_sees_the_masked_image():
    torch.manual_seed(0)
    vae = tiny_vae(TINY_MICRO["vae"]).eval().requires_grad_(False)
    text = tiny_text_encoder(TINY_MICRO["text"])
    unet = tiny_unet(TINY_MICRO["unet"], 9, text.config.hidden_size)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    generate = random_boxes((4, 1, 32, 32), torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    z0, mask, masked = inpainting_input(vae, images, generate)
    assert mask.shape == (4, 1, 16, 16) and masked.shape == z0.shape
    # The masked-image latent does not depend on the pixels being generated.
    other = torch.where(generate > 0.5, torch.rand_like(images), images)
    torch.manual_seed(1)
    z0_other, _, masked_other = inpainting_input(vae, other, generate)
    torch.testing.assert_close(masked_other, masked)
    assert not torch.allclose(z0_other, z0)
    _, emb = encode_prompt(clip_tokenizer(), text, ["a photo of a owl"] * 4)
    sched = sd_noise_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)

    def loss_at(seed: int) -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            return float(inpainting_step(unet, vae, sched, images, generate, emb, g))

    before = np.mean([loss_at(s) for s in range(4)])
    for i in range(25):
        loss = inpainting_step(
            unet, vae, sched, images, generate, emb, torch.Generator().manual_seed(100 + i)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean([loss_at(s) for s in range(4)]) < before
