"""DiffuMatting pieces: the CLIP tokenizer from open_clip's BPE, the green-token attention probe,
the detail loss (Eq. 4–5), the losses going down on green-canvas micro-world renders, GreenPost, GSG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_generation_diffumatting_micro import TINY_MICRO, world  # noqa: F401
from test_generation_sd import tiny_pairs, tiny_parts

from generation.diffumatting.green_post import ChromaKeyMatting, GreenPost, gsg
from generation.diffumatting.model import (
    MattingHead,
    decoder_feature_channels,
    detail_loss,
    high_frequency,
    install_green_probe,
    sobel_sum,
)
from generation.diffumatting.train import (
    DiffuMattingBatch,
    LossWeights,
    diffumatting_step,
    load_salient,
    salient_pairs_source,
    train_diffumatting,
)
from generation.sd.micro import green_canvas
from generation.sd.parts import (
    clip_tokenizer,
    sd_noise_scheduler,
)
from generation.sd.prompts import encode_prompt, word_token_positions


@pytest.mark.parametrize(
    "text",
    ["a photo of a snow leopard on a green background", "reccoon, Green-ish!", "stick insect"],
)
def test_tokenizer_matches_open_clip(text):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    assert clip_tokenizer()(text).input_ids == [49406, *ref.encode(text), 49407]


def test_green_token_positions():
    tok = clip_tokenizer()
    ids = tok(["a frog on a green background", "green green"], padding="max_length").input_ids
    pos = word_token_positions(tok, torch.tensor(ids), ["green"])
    assert pos == [[5], [1, 2]]


def test_green_probe_records_every_cross_attention_layer():
    parts = tiny_parts(4)
    text, unet = parts.text_encoder, parts.unet
    store = install_green_probe(unet)
    n_cross = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    ids, emb = encode_prompt(clip_tokenizer(), text, ["a owl on a green background"] * 2)
    everything = [list(range(ids.shape[1]))] * 2
    store.reset(everything, (16, 16))
    unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), emb)
    assert len(store.maps) == n_cross > 0
    # Over all tokens the attention of every pixel sums to one.
    for m in store.maps:
        torch.testing.assert_close(m, torch.ones_like(m))
    store.reset(word_token_positions(clip_tokenizer(), ids, ["green"]), (16, 16))
    unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), emb)
    assert all(((m > 0) & (m < 1)).all() for m in store.maps)


def test_detail_loss_is_eq_4_and_5():
    """H = (I⊗S_x + I⊗S_y) ⊙ I ⊙ M (Eq. 4), L = mean |H(ẑ₀) − H(z₀)| (Eq. 5)."""
    flat = torch.ones(1, 2, 8, 8)
    assert sobel_sum(flat).abs().max() < 1e-6
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    # A vertical edge: the x-kernel answers with its weight sum (4), the y-kernel with 0.
    assert sobel_sum(step)[0, 0, 4, 3] == pytest.approx(4.0)
    assert sobel_sum(step.transpose(-1, -2))[0, 0, 3, 4] == pytest.approx(4.0)
    # Weighted by the input itself and the mask: the zero side of the edge and the background
    # count nothing.
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1
    h = high_frequency(step, mask)
    assert h[0, 0, 4, 3] == 0 and h[0, 0, 4, 4] == pytest.approx(4.0)
    assert high_frequency(step, torch.zeros_like(mask)).abs().max() == 0
    x = torch.randn(2, 3, 8, 8)
    m = (torch.rand(2, 1, 8, 8) > 0.5).float()
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = (kx + kx.T)[None, None].repeat(3, 1, 1, 1)
    expect = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3) * x * m
    torch.testing.assert_close(high_frequency(x, m), expect)
    y = torch.randn(2, 3, 8, 8)
    want = (high_frequency(y, m) - high_frequency(x, m)).abs().mean()
    assert detail_loss(y, x, m) == pytest.approx(float(want))
    assert detail_loss(x, x, m) == 0
    assert detail_loss(y, x, torch.zeros_like(m)) == 0


def test_diffumatting_trains_in_two_stages():
    """The generation stage trains the UNet without the matting term while the matting head
    waits; the joint stage then trains both with all four losses."""
    pairs = tiny_pairs()
    cfg = {
        "batch_size": 4,
        "lr": 1e-3,
        "prompt": "a photo of a {} on a green background",
        "green_words": ["green"],
        "seed": 0,
    }

    def run(generation: int, joint: int):
        parts = tiny_parts(4)
        store = install_green_probe(parts.unet)
        head = MattingHead(decoder_feature_channels(parts.vae))
        before = [p.detach().clone() for p in (*parts.unet.parameters(), *head.parameters())]
        stages = {"generation": generation, "joint": joint}
        history = train_diffumatting(parts, head, store, pairs, {**cfg, "stages": stages})
        n_unet = len(list(parts.unet.parameters()))
        after = list(parts.unet.parameters()) + list(head.parameters())
        changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        return history, any(changed[:n_unet]), any(changed[n_unet:])

    history, unet_moved, head_moved = run(3, 0)
    assert [r["stage"] for r in history.steps] == ["generation"] * 3
    assert all({"noise", "green", "detail"} <= set(r) and "matting" not in r for r in history.steps)
    assert unet_moved and not head_moved
    history, unet_moved, head_moved = run(0, 2)
    assert [r["stage"] for r in history.steps] == ["joint"] * 2
    assert all("matting" in r for r in history.steps)
    assert unet_moved and head_moved
    history, _, _ = run(2, 1)
    assert [r["stage"] for r in history.steps] == ["generation", "generation", "joint"]
    with pytest.raises(ValueError, match="stages"):
        run_cfg = {**cfg, "stages": {"generation": 1}}
        train_diffumatting(tiny_parts(4), MattingHead(4), None, pairs, run_cfg)


def test_green_and_detail_losses_go_down_on_green_canvas_renders(world):  # noqa: F811
    """A tiny UNet + matting head trained on green canvases of the micro-world's salient renders:
    the green-background, detail and matting losses, measured on a fixed held batch with fixed
    timesteps and noise, all drop."""
    captions = salient_pairs_source(world)
    assert captions is not None, "the micro-world writes a salient set"
    pairs = load_salient(captions, 32, 8, seed=0)
    parts = tiny_parts(4)
    vae, text, unet = parts.vae, parts.text_encoder, parts.unet
    tok = clip_tokenizer()
    store = install_green_probe(unet)
    head = MattingHead(decoder_feature_channels(vae))
    scheduler = sd_noise_scheduler()
    prompt = "a photo of a {} on a green background"
    ids, emb = encode_prompt(tok, text, [prompt.format(c) for c in pairs.class_names])
    images, masks = pairs.batch(range(len(pairs)))
    held = DiffuMattingBatch(
        green_canvas(images, masks),
        masks,
        emb,
        word_token_positions(tok, ids, ["green"]),
    )

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            out = diffumatting_step(unet, head, vae, scheduler, store, held, LossWeights(), g)
        return {k: float(v) for k, v in out.items()}

    before = evaluate()
    history = train_diffumatting(
        parts,
        head,
        store,
        pairs,
        {
            "stages": {"generation": 40, "joint": 40},
            "batch_size": 4,
            "lr": 2e-3,
            "prompt": prompt,
            "green_words": ["green"],
            "seed": 0,
        },
    )
    after = evaluate()
    assert len(history.steps) == 80
    assert after["green"] < 0.8 * before["green"], (before, after)
    assert after["detail"] < before["detail"], (before, after)
    assert after["matting"] < before["matting"], (before, after)


def soft_disc(h: int, w: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2 + 0.5, xx - w / 2 + 0.5)
    return np.clip(radius - r + 0.5, 0, 1)


def test_green_post_recovers_a_known_matte():
    h = w = 64
    alpha = soft_disc(h, w, 18.3)
    fg = np.array([200.0, 40.0, 60.0])
    screen = np.array([10.0, 230.0, 20.0])
    image = np.round(alpha[..., None] * fg + (1 - alpha[..., None]) * screen).astype(np.uint8)
    result = GreenPost(band=3)(image, alpha > 0.5)
    assert np.abs(result.alpha - alpha).max() < 0.03
    edge = (alpha > 0.1) & (alpha < 0.9)
    assert edge.any()
    assert np.abs(result.foreground[edge].astype(float) - fg).max() < 12
    np.testing.assert_allclose(result.background_colour, screen, atol=1)
    assert result.gsg == pytest.approx(np.linalg.norm(screen - [0, 255, 0]), abs=1)
    assert result.rgba().shape == (h, w, 4)


def test_green_post_keeps_a_green_object_opaque_inside_its_mask():
    h = w = 48
    mask = soft_disc(h, w, 14) > 0.5
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (0, 255, 0)
    image[mask] = (30, 200, 40)  # a green frog on a green screen
    result = GreenPost(band=2)(image, mask)
    eroded = soft_disc(h, w, 11) > 0.99
    assert (result.alpha[eroded] == 1).all()
    assert (result.alpha[soft_disc(h, w, 17) == 0] == 0).all()


def test_green_post_keeps_only_what_is_attached_to_the_object():
    h = w = 48
    disc = soft_disc(h, w, 10) > 0.5
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (0, 255, 0)
    image[disc] = (200, 40, 60)
    speck = (24, 37)  # inside the trimap's unknown band, apart from the object
    image[speck] = (200, 40, 60)
    coarse = soft_disc(h, w, 12) > 0.5
    plain = GreenPost(band=3)(image, coarse)
    assert plain.alpha[speck] >= 0.5 and plain.alpha[disc].min() == 1
    kept = GreenPost(band=3, attached=0.5)(image, coarse)
    assert kept.alpha[speck] == 0
    np.testing.assert_array_equal(kept.alpha[disc], plain.alpha[disc])
    expected = plain.alpha >= 0.5
    expected[speck] = False
    np.testing.assert_array_equal(kept.alpha >= 0.5, expected)


def test_matting_model_is_pluggable():
    calls = []

    class Constant:
        def __call__(self, image, trimap, plate):
            calls.append(trimap)
            return np.full(trimap.shape, 0.25)

    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = (0, 255, 0)
    mask = soft_disc(32, 32, 8) > 0.5
    result = GreenPost(band=2, matting=Constant())(image, mask)
    assert calls and set(np.unique(calls[0])) == {0, 128, 255}
    assert np.allclose(result.alpha[calls[0] == 128], 0.25)
    assert isinstance(ChromaKeyMatting(), type(GreenPost().matting))


def test_gsg_is_zero_on_pure_green_and_grows_away_from_it():
    green = np.zeros((16, 16, 3), np.uint8)
    green[:] = (0, 255, 0)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    green[mask] = (255, 0, 0)
    assert gsg(green, mask) == pytest.approx(0.0, abs=1e-3)
    grey = green.copy()
    grey[~mask] = (128, 128, 128)
    assert gsg(grey, mask) == pytest.approx(np.linalg.norm([128, -127, 128]), abs=1)
