"""The three diffusers generators built at micro size on a tiny micro-world: builder → generate,
object pixels preserved where the method says so, caching, missing-weights messages, and the
end-to-end ``ovcamo-generate`` run. Helpers here are shared by the bgaug and outpaint tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from generation.base import (
    GeneratedSample,
    Generator,
    Placement,
    SkipSample,
    SourceObject,
    build_generator,
)
from ovcamo.cli import CONF_DIR
from ovcamo.data import DataPaths, load_sample, resolve_records

#: Sizes that build and train in a second or two on one core.
TINY_MICRO = {
    "resolution": 32,
    "max_samples": 16,
    "batch_size": 4,
    "seed": 0,
    "vae": {"block_out_channels": [8, 16], "latent_channels": 4, "norm_num_groups": 4},
    "vae_steps": 3,
    "vae_lr": 1e-3,
    "text": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
    "unet": {"block_out_channels": [16, 32], "attention_head_dim": 4, "norm_num_groups": 4},
}
TINY_TRAIN = {"steps": 3, "batch_size": 4, "lr": 1e-3, "seed": 0}
#: DiffuMatting's stages at tiny size: enough steps for its matting head to find objects
#: in what the UNet draws on the shaded world (3 + 3 steps find none), so its tests see real samples.
TINY_STAGES = {"generation": 30, "joint": 60}
TINY_WORLD = {
    "image_size": 48,
    "classes": {"train": ["owl", "frog"], "test": ["moth"]},
    "train_counts": {"min": 4, "max": 6},
    "test_count": 2,
    "salient_per_class": 4,
    "salient_heldout_per_class": 1,
    "camouflaged_web_per_class": 1,
}


def tiny_world_cfg():
    cfg = OmegaConf.load(Path(CONF_DIR) / "world" / "micro.yaml")
    return OmegaConf.merge(cfg, TINY_WORLD)


def tiny_generator_cfg(name: str):
    """``ovcamo/conf/generator/<name>.yaml`` with tiny parts, few steps (:data:`TINY_STAGES` for
    DiffuMatting's staged trainer) and 2 sampling steps."""
    cfg = OmegaConf.load(Path(CONF_DIR) / "generator" / f"{name}.yaml")
    cfg.micro = TINY_MICRO
    for key in ("train", "inpainting_train"):
        if key in cfg:
            node = OmegaConf.merge(cfg[key], TINY_TRAIN)
            if "stages" in node:
                node.pop("steps")
                node.stages = TINY_STAGES
            cfg[key] = node
    cfg.sampler.num_inference_steps = 2
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DataPaths:
    from ovcamo.data.world import ensure_world

    root = ensure_world(tiny_world_cfg(), tmp_path_factory.mktemp("world"), progress=False)
    return DataPaths.from_paths_json(root / "paths.json")


@pytest.fixture(scope="module")
def source(world) -> SourceObject:
    records, _ = resolve_records(world, "train")
    s = load_sample(records[0])
    return SourceObject(s["image"], s["mask"], records[0].class_name, records[0].unique_id)


def build(name: str, world: DataPaths, cache: Path) -> Generator:
    return build_generator(tiny_generator_cfg(name), data=world, cache_dir=cache, device="cpu")


def check_sample(sample: GeneratedSample, source: SourceObject) -> None:
    assert sample.image.dtype == np.uint8 and sample.image.shape == source.image.shape
    assert sample.mask.dtype == bool and sample.mask.shape == source.mask.shape
    assert sample.mask.any()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gen-cache")


@pytest.mark.parametrize("name", ["bgaug_micro", "outpaint_micro"])
def test_repainting_generators_keep_object_pixels_and_mask(name, world, source, cache):
    gen = build(name, world, cache)
    assert isinstance(gen, Generator) and gen.name == name
    a = gen.generate(source, source.class_name, seed=3)
    check_sample(a, source)
    np.testing.assert_array_equal(a.mask, source.mask)
    np.testing.assert_array_equal(a.image[source.mask], source.image[source.mask])
    assert a.extra["placement"] == Placement.identity(*source.mask.shape).to_json()
    assert (a.image[~source.mask] != source.image[~source.mask]).any(), "background unchanged"
    b = gen.generate(source, source.class_name, seed=3)
    np.testing.assert_array_equal(a.image, b.image)


def test_micro_parts_are_trained_once_and_shared(world, cache):
    build("bgaug_micro", world, cache)
    build("outpaint_micro", world, cache)
    root = cache / "generation"
    assert len(list((root / "sd_base").iterdir())) == 1
    assert len(list((root / "inpainting").iterdir())) == 1
    assert len(list((root / "outpaint").iterdir())) == 1
    history = json.loads(next((root / "outpaint").iterdir()).joinpath("history.json").read_text())
    assert len(history["steps"]) == TINY_TRAIN["steps"]


class DiscHead(torch.nn.Module):
    """Stands in for a trained matting head: alpha logits of a soft disc in the middle."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        r = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
        return (h / 4 - r).mul(2.0).expand(b, 1, h, w)


def test_diffumatting_micro_builds_and_samples_an_object(world, cache):
    gen = build("diffumatting_micro", world, cache)
    assert isinstance(gen, Generator) and gen.name == "diffumatting_micro"
    objects = []
    for seed in range(4):
        try:
            objects.append(gen.object("owl", seed))
        except SkipSample as e:
            assert "no_object" in str(e)
    assert len(objects) >= 2, "the trained micro model drew (almost) no object"
    r = gen.resolution
    for obj in objects:
        assert obj.foreground.shape == (r, r, 3) and obj.alpha.shape == (r, r)
        assert 0 < (obj.alpha >= gen.alpha_threshold).mean() < 1


class TwoDiscsHead(torch.nn.Module):
    """A matting head that finds two separate discs, a large and a small one."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        big = h / 5 - ((yy - h / 3) ** 2 + (xx - w / 3) ** 2).sqrt()
        small = h / 8 - ((yy - 3 * h / 4) ** 2 + (xx - 3 * w / 4) ** 2).sqrt()
        return torch.maximum(big, small).mul(2.0).expand(b, 1, h, w)


@pytest.mark.parametrize("single_object", [True, False])
def test_single_object_keys_out_a_second_blob(world, cache, single_object):
    gen = build("diffumatting_micro", world, cache)
    assert gen.single_object, "the micro config asks for one object per sample"
    gen.head, gen.single_object = TwoDiscsHead(), single_object
    obj = gen.object("owl", 0)
    assert obj.coarse_regions == 2
    n, _ = cv2.connectedComponents((obj.alpha >= gen.alpha_threshold).astype(np.uint8))
    assert n - 1 == (1 if single_object else 2)


def test_diffumatting_hides_the_rgba_object_and_keeps_its_soft_alpha(world, source, cache):
    gen = build("diffumatting_micro", world, cache)
    gen.head = DiscHead()
    for seed in range(3):
        s = gen.generate(source, "owl", seed)
        check_sample(s, source)
        assert s.alpha is not None and s.alpha.shape == s.mask.shape
        assert s.alpha.min() >= 0 and s.alpha.max() <= 1
        np.testing.assert_array_equal(s.alpha >= gen.alpha_threshold, s.mask)
        assert 0 < s.alpha[~s.mask].max() < gen.alpha_threshold, "soft edge lost"
        assert s.extra["background_generator"] == "classic"
        assert (s.image[~s.mask].max(-1) > 0).mean() > 0.9, "the background was left black"
        assert "background_placement" in s.extra and "placement" not in s.extra
        assert 0 <= s.extra["gsg"] <= 255 * 3**0.5 + 1e-6
        assert s.extra["coarse_regions"] == 1


@pytest.mark.parametrize("name", ["bgaug_micro", "outpaint_micro", "diffumatting_micro"])
def test_ovcamo_generate_writes_an_ovcamo_format_set(name, tmp_path, cache):
    from hydra import compose, initialize_config_dir

    from generation.run import generate
    from ovcamo.data import OVCamoDataset

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(
            "generate",
            overrides=[
                f"generator={name}",
                f"cache_dir={cache}",
                f"out_dir={tmp_path / 'out'}",
                "progress=false",
                "device=cpu",
                "planner.per_class=4",
            ],
        )
    cfg.data.world = OmegaConf.merge(cfg.data.world, TINY_WORLD)
    cfg.generator = tiny_generator_cfg(name)
    root = generate(cfg)
    paths = DataPaths.from_paths_json(root / "paths.json")
    samples = json.loads(paths.sample_info.read_text())
    summary = json.loads((root / "summary.json").read_text())
    assert summary["complete"] and summary["planned"] > 0
    assert summary["written"] > 0, summary["skip_reasons"]
    assert all(s["synthetic"] and s["generator"] == name for s in samples)
    assert len(OVCamoDataset(paths, split="train")) == len(samples) == summary["written"]
    if name != "diffumatting_micro":
        # Repainting keeps the source object, so no source of the tiny world is refused.
        assert summary["written"] == summary["planned"]
    else:
        assert set(summary["skip_reasons"]) <= {"no_object"}
