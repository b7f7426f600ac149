from __future__ import annotations

import numpy as np
import pytest
import torch
from generation_data import ellipse, textured, write_dataset
from omegaconf import OmegaConf

from generation.base import SkipSample, SourceObject
from generation.lakered.model import BKRM, LMP, RCEM, LakeRed, LakeRedConfig, prepare_inputs
from generation.lakered.sample import LakeRedGenerator, build_lakered, ddim_scheduler
from generation.lakered.train import (
    TrainConfig,
    batch_at,
    load_training_images,
    noise_scheduler,
    train,
    training_step,
)
from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_checkpoint
from ovcamo.data import DataPaths, load_sample

TINY = dict(
    resolution=32,
    num_vq_embeddings=16,
    vq_block_out_channels=(8, 16),
    vq_layers_per_block=1,
    vq_norm_num_groups=4,
    unet_block_out_channels=(16, 32),
    unet_down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    unet_up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    unet_layers_per_block=1,
    unet_attention_head_dim=8,
    unet_norm_num_groups=4,
    unet_num_heads=2,
    superpixels=4,
    superpixel_sigma=0.5,
    retrieval_heads=2,
    retrieval_head_dim=8,
)


def tiny(**kw) -> LakeRedConfig:
    return LakeRedConfig(**{**TINY, **kw})


def test_config_sizes_official_and_micro():
    conf = OmegaConf.load(CONF_DIR / "generator" / "lakered.yaml")
    official = LakeRedConfig.from_cfg(conf.model)
    assert official.resolution == 512 and official.latent_size == 128
    assert (official.num_vq_embeddings, official.latent_channels) == (8192, 3)
    micro = LakeRedConfig.from_cfg(
        OmegaConf.merge(conf, OmegaConf.load(CONF_DIR / "generator" / "lakered_micro.yaml")).model
    )
    assert micro.resolution == 64 and micro.latent_size == 16


def test_unet_takes_seven_channels_and_heads_follow_the_config():
    model = LakeRed(tiny())
    assert model.unet.conv_in.in_channels == 7
    attn = model.unet.mid_block.attentions[0]
    assert attn.heads == 2


def test_lmp_pools_superpixels_inside_the_mask_only():
    z = torch.ones(1, 3, 8, 8)
    z[:, :, :, 4:] = 5.0  # right half of the object differs
    fg = torch.zeros(1, 1, 8, 8)
    fg[:, :, 2:6, 2:6] = 1
    z[:, :, 0, 0] = 100.0  # background outlier must not leak into any vector
    vectors = LMP(superpixels=4, sigma=0.0)(z, fg)
    assert vectors.shape == (1, 4, 3)
    nonzero = vectors[0][vectors[0].abs().sum(1) > 0]
    assert nonzero.max() <= 5.0 and {1.0, 5.0} <= set(nonzero[:, 0].tolist())
    empty = LMP(superpixels=4)(z, torch.zeros(1, 1, 8, 8))
    assert torch.count_nonzero(empty) == 0


def test_lmp_pooling_is_differentiable():
    z = torch.randn(2, 3, 8, 8, requires_grad=True)
    fg = torch.zeros(2, 1, 8, 8)
    fg[:, :, 1:7, 1:7] = 1
    LMP(4, 0.5)(z, fg).sum().backward()
    assert z.grad[:, :, 0, 0].abs().sum() == 0 and z.grad[:, :, 3, 3].abs().sum() > 0


def test_bkrm_retrieves_from_its_codebook():
    bkrm = BKRM(3, num_embeddings=10, mlp_hidden=6, heads=2, head_dim=4)
    out = bkrm(torch.randn(2, 4, 3))
    assert out.shape == (2, 4, 3)
    before = out.detach().clone()
    bkrm.knowledge.mul_(3.0)
    assert not torch.allclose(bkrm(torch.randn(2, 4, 3)), before)


def test_rcem_blends_with_the_signed_mask():
    rcem = RCEM(3)
    z = torch.randn(1, 3, 8, 8)
    m = torch.ones(1, 1, 8, 8)
    m[:, :, 2:5, 2:5] = -1
    z_rec, cond = rcem(z, m, torch.randn(1, 4, 3))
    obj = (slice(None), slice(None), slice(2, 5), slice(2, 5))
    torch.testing.assert_close(cond[obj], 2 * z[obj] - z_rec[obj])
    torch.testing.assert_close(cond[:, :, 0, 0], z_rec[:, :, 0, 0])


def test_lmp_pools_only_the_first_s_segments():
    lmp = LMP(superpixels=2, sigma=0.0)
    z = torch.zeros(1, 1, 4, 4)
    z[0, 0, :, 2:] = 1.0
    lmp.assign = lambda z_np, fg: np.array([[1, 1, 2, 2]] * 2 + [[3, 3, 3, 3]] * 2)
    out = lmp(z, torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 1.0]))


def test_inputs_follow_the_official_value_ranges():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    mask = ellipse(24, 20, 12, 10, 6, 5)
    out = prepare_inputs(image, mask, 16)
    assert out["image"].shape == out["masked_image"].shape == (3, 16, 16)
    assert set(out["mask"].unique().tolist()) == {-1.0, 1.0}
    bg = out["mask"][0] > 0
    assert (out["masked_image"][:, bg] == -1).all()
    torch.testing.assert_close(out["masked_image"][:, ~bg], out["image"][:, ~bg])
    assert out["image"].min() >= -1 and out["image"].max() <= 1


def test_inference_mask_is_dilated_at_the_source_size():
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    image = np.zeros((10, 10, 3), np.uint8)
    plain = prepare_inputs(image, mask, 10)["mask"][0] > 0
    dilated = prepare_inputs(image, mask, 10, dilation=2)["mask"][0] > 0
    # A 2×2 kernel anchored at its centre grows the background by one pixel towards +y and +x.
    expected = ~mask
    expected[1:, 1:] |= ~mask[:-1, :-1]
    expected[1:, :] |= ~mask[:-1, :]
    expected[:, 1:] |= ~mask[:, :-1]
    assert torch.equal(dilated, torch.from_numpy(expected))
    assert torch.equal(plain, torch.from_numpy(~mask))


def _batch(n: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    mask = ellipse(size, size, size / 2, size / 2, size / 4, size / 4)
    items = [
        prepare_inputs(textured(rng, size, size, rng.uniform(40, 220, 3)), mask, size)
        for _ in range(n)
    ]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = LakeRed(tiny())
    sched = noise_scheduler(TrainConfig())
    batch = _batch()
    opt = torch.optim.Adam(
        [p for n, p in model.named_parameters() if not n.startswith("vqvae")], 3e-3
    )
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 2)
        out = training_step(model, sched, batch, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        assert set(out) == {"loss", "diffusion", "reconstruction"}
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_batches_are_a_function_of_the_step():
    image = torch.randn(10, 3, 4, 4)
    data = {"image": image, "mask": image[:, :1].clone()}
    a, b = batch_at(3, data, 4, 0), batch_at(3, data, 4, 0)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], batch_at(4, data, 4, 0)["image"])
    # every tensor of a sample is drawn and flipped together
    assert torch.equal(a["mask"], a["image"][:, :1])


@pytest.fixture()
def paths(tmp_path) -> DataPaths:
    return DataPaths.from_paths_json(write_dataset(tmp_path / "ds", size=48))


def test_training_leaves_out_the_base_validation_part_of_the_data_config(paths):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "generate", overrides=["generator=lakered_micro", "data.holdout_fraction=0.3"]
        )
    assert cfg.generator.train.holdout_fraction == 0.3 == cfg.data.holdout_fraction
    assert cfg.generator.train.holdout_seed == cfg.data.holdout_seed
    # without a data config the split is unknown, and training refuses to guess it
    alone = OmegaConf.load(CONF_DIR / "generator" / "lakered.yaml")
    assert alone.train.holdout_fraction is None
    with pytest.raises(ValueError, match="data.holdout_fraction"):
        load_training_images(paths, 16, TrainConfig.from_cfg(alone.train))
    tc = TrainConfig.from_cfg({"holdout_fraction": 0.25, "holdout_seed": 0})
    from ovcamo.data import holdout_split, resolve_records

    records, _ = resolve_records(paths, "train", check_files="none")
    kept, held = holdout_split(records, 0.25, 0)
    with_object = [r for r in kept if load_sample(r)["mask"].any()]
    assert held and len(load_training_images(paths, 16, tc)) == len(with_object)


def test_interrupted_training_resumes_to_the_same_weights(paths, tmp_path, monkeypatch):
    cfg = tiny()
    tc = TrainConfig(
        holdout_fraction=0.0,
        first_stage_steps=3,
        first_stage_warmup=1,
        scale_by_std=True,
        steps=4,
        batch_size=2,
        checkpoint_every=1,
        lr=1e-3,
    )
    full = train(cfg, tc, paths, tmp_path / "full", progress=False)

    import generation.lakered.train as T

    calls = {"n": 0}
    real = T.training_step

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "training_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tc, paths, tmp_path / "cut", progress=False)
    monkeypatch.setattr(T, "training_step", real)
    _, state = load_checkpoint(tmp_path / "cut" / "last")
    assert state["stage"] == "lakered" and state["step"] == 2
    resumed = train(cfg, tc, paths, tmp_path / "cut", progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    torch.testing.assert_close(resumed.bkrm.knowledge, resumed.codebook * resumed.scale_factor)
    assert resumed.scale_factor != 1.0
    import json

    rows = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").open()]
    assert [(r["stage"], r["step"]) for r in rows] == [("first_stage", i) for i in (1, 2, 3)] + [
        ("lakered", i) for i in (1, 2, 3, 4)
    ]


def test_official_learning_rate_and_warm_up_cosine():
    from generation.lakered.train import learning_rate, warm_up_cosine

    official = TrainConfig.from_cfg(OmegaConf.load(CONF_DIR / "generator" / "lakered.yaml").train)
    # LDM's scale_lr: base 1e-6 · batch 2 · accumulation 1 · GPUs.
    assert learning_rate(official) == pytest.approx(2e-6)
    assert learning_rate(official, processes=4) == pytest.approx(8e-6)
    assert official.weight_decay == 0.01 and official.batch_size == 2
    assert learning_rate(TrainConfig(lr=1e-3, batch_size=8)) == 1e-3
    # Linear warm-up from the start factor, the peak at the warm-up's end, a half cosine to the floor.
    assert warm_up_cosine(0, 10, 110, 0.1, 1.0, 0.0) == pytest.approx(0.1)
    assert warm_up_cosine(5, 10, 110, 0.1, 1.0, 0.0) == pytest.approx(0.55)
    assert warm_up_cosine(10, 10, 110, 0.1, 1.0, 0.0) == pytest.approx(1.0)
    assert warm_up_cosine(60, 10, 110, 0.1, 1.0, 0.0) == pytest.approx(0.5)
    assert warm_up_cosine(110, 10, 110, 0.1, 1.0, 0.2) == pytest.approx(0.2)
    assert warm_up_cosine(500, 10, 110, 0.1, 1.0, 0.2) == pytest.approx(0.2)


def test_scale_by_std_gives_unit_latents_and_leaves_decoding_alone():
    model = LakeRed(tiny()).eval()
    x = _batch(4)["image"]
    before = model.decode(model.encode(x))
    factor = model.scale_latents_by_std(x)
    assert factor != 1.0
    torch.testing.assert_close(model.encode(x).std(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.decode(model.encode(x)), before, rtol=1e-4, atol=1e-4)


def test_codebook_starts_on_encoder_outputs():
    from generation.lakered.train import init_codebook

    model = LakeRed(tiny()).eval()
    x = _batch(2)["image"]
    init_codebook(model, x)
    with torch.no_grad():
        latents = model.vqvae.encode(x).latents.permute(0, 2, 3, 1).flatten(0, 2)
    distance = (model.codebook[:, None] - latents[None]).abs().amax(-1).min(1).values
    assert distance.max() == 0 and len(model.codebook.unique(dim=0)) == len(model.codebook)


def source(size=40) -> SourceObject:
    rng = np.random.default_rng(0)
    img = textured(rng, size, size, np.array([90.0, 120.0, 60.0]))
    return SourceObject(img, ellipse(size, size, 20, 18, 9, 12), "owl", "000001_owl")


def test_generator_keeps_the_object_exact_and_is_seeded():
    gen = LakeRedGenerator(LakeRed(tiny()), ddim_scheduler(TrainConfig()), num_inference_steps=3)
    src = source()
    a, b, c = (gen.generate(src, "owl", s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.mask, src.mask)
    np.testing.assert_array_equal(a.image[src.mask], src.image[src.mask])
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image[~src.mask], c.image[~src.mask])
    assert a.extra["placement"]["scale"] == 1.0
    with pytest.raises(SkipSample, match="empty_mask"):
        gen.generate(SourceObject(src.image, np.zeros_like(src.mask), "owl", "x"), "owl", 0)
    with pytest.raises(SkipSample, match="object_fills_image"):
        gen.generate(SourceObject(src.image, np.ones_like(src.mask), "owl", "x"), "owl", 0)


def _node(**kw):
    base = OmegaConf.load(CONF_DIR / "generator" / "lakered.yaml")
    base.model = OmegaConf.create(
        {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    )
    # Standing in for the data config the generator node reads its split from.
    base.train.holdout_fraction, base.train.holdout_seed = 0.25, 0
    return OmegaConf.merge(base, kw)


def test_builder_explains_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert"):
        build_lakered(_node(checkpoint=str(tmp_path / "nowhere")))


def test_builder_trains_once_and_caches_by_config(paths, tmp_path):
    node = _node(
        name="lakered_tiny",
        checkpoint=None,
        train_if_missing=True,
        num_inference_steps=2,
        train={"first_stage_steps": 1, "steps": 1, "batch_size": 2, "checkpoint_every": 1},
    )
    gen = build_lakered(node, data=paths, cache_dir=tmp_path / "cache")
    runs = list((tmp_path / "cache" / "lakered").iterdir())
    assert len(runs) == 1 and (runs[0] / "final" / "model.safetensors").is_file()
    again = build_lakered(node, data=paths, cache_dir=tmp_path / "cache")
    for a, b in zip(
        gen.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    out = gen.generate(source(), "owl", 0)
    assert out.image.shape == (40, 40, 3)


def _rss() -> int:
    """Resident memory of this process now, in bytes (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _held_bytes(paths: DataPaths, n: int, resolution: int) -> tuple[int, int, int]:
    """Samples, tracemalloc's peak (Python and numpy allocations) and the growth of resident
    memory (torch's own allocations, which tracemalloc does not see) while the training set of
    ``n`` samples is made and held and three batches are drawn."""
    import tracemalloc

    tc = TrainConfig.from_cfg({"holdout_fraction": 0.0, "max_images": n})
    before = _rss()
    tracemalloc.start()
    try:
        data = load_training_images(paths, resolution, tc)
        for step in range(3):
            batch_at(step, data, 2, 0)
        return len(data), tracemalloc.get_traced_memory()[1], _rss() - before
    finally:
        tracemalloc.stop()


def test_training_data_streams_from_disk(tmp_path):
    """The memory of making the training set and drawing batches does not grow with the number
    of samples (a set held in memory takes 4× as much for 4× the samples)."""
    paths = DataPaths.from_paths_json(write_dataset(tmp_path / "ds", size=64))
    resolution = 256
    _held_bytes(paths, 3, resolution)  # first touches of code and allocator pools
    n_small, peak_small, rss_small = _held_bytes(paths, 3, resolution)
    n_large, peak_large, rss_large = _held_bytes(paths, 12, resolution)
    assert n_large == 4 * n_small
    # One sample's three model inputs as float32: what holding each sample would add.
    per_sample = 7 * resolution * resolution * 4
    assert peak_large - peak_small < per_sample / 4, (peak_small, peak_large)
    assert rss_large - rss_small < 2 * per_sample, (rss_small, rss_large)
