"""The paper configs of the Stable Diffusion generators: ``check=true`` names every missing
weights folder and how to get or make it (one paragraph, exit 2, no traceback); the training entry
point makes what must be trained from local Stable Diffusion folders; the paper generators then
run from those weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_generation_diffumatting_micro import TINY_MICRO, TINY_WORLD, DiscHead
from test_generation_sd import tiny_parts

from generation.base import SourceObject, build_generator, missing_weights
from generation.run import main as generate_main
from generation.sd.parts import MissingWeightsError
from generation.train import train_generator
from ovcamo.cli import CONF_DIR
from ovcamo.data import load_sample, resolve_records
from ovcamo.data.config import resolve_data_paths


def compose_generate(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(
            "generate",
            overrides=[
                f"cache_dir={tmp_path / 'cache'}",
                "device=cpu",
                "progress=false",
                *overrides,
            ],
        )
    cfg.data.world = OmegaConf.merge(cfg.data.world, TINY_WORLD)
    return cfg


def paper_cfg(tmp_path: Path, name: str, *overrides: str):
    """A paper generator config whose weights folders all point into ``tmp_path``."""
    keys = {
        "diffumatting": [
            "pretrained=" + str(tmp_path / "dm"),
            "base_model=" + str(tmp_path / "sd15"),
        ],
        "bgaug": ["pretrained=" + str(tmp_path / "sd2-inpainting")],
        "outpaint": [
            "pretrained=" + str(tmp_path / "sd2-inpainting"),
            "controlnet=" + str(tmp_path / "controlnet"),
        ],
    }[name]
    return compose_generate(
        tmp_path, f"generator={name}", *(f"generator.{k}" for k in keys), *overrides
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "diffumatting",
            [
                "generator.pretrained: {t}/dm does not exist",
                "python -m generation.train generator=diffumatting data=ovcamo",
                "generator.base_model: {t}/sd15 does not exist",
                "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5",
                "generator.background=lakered: checkpoint:",
            ],
        ),
        (
            "bgaug",
            [
                "generator.pretrained: {t}/sd2-inpainting does not exist",
                "huggingface-cli download stabilityai/stable-diffusion-2-inpainting",
                "nothing is trained",
            ],
        ),
        (
            "outpaint",
            [
                "generator.pretrained: {t}/sd2-inpainting does not exist",
                "generator.controlnet: {t}/controlnet holds no trained outpainting ControlNet",
                "python -m generation.train generator=outpaint data=ovcamo",
            ],
        ),
    ],
)
def test_check_names_what_is_missing_and_how_to_make_it(name, expected, tmp_path, capsys):
    cfg = paper_cfg(tmp_path, name, "check=true")
    with pytest.raises(SystemExit) as e:
        generate_main(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovcamo-generate: ") and "\n" not in err
    for text in expected:
        assert text.format(t=tmp_path) in err, text
    assert not (tmp_path / "cache").exists(), "check computed something"
    # Building the generator says the same, before loading anything.
    with pytest.raises(MissingWeightsError) as built:
        build_generator(cfg.generator, cache_dir=tmp_path, device="cpu")
    assert str(built.value) == err.removeprefix("ovcamo-generate: ")


def test_check_names_only_what_is_missing(tmp_path):
    cfg = paper_cfg(tmp_path, "outpaint")
    tiny_parts(9).save(tmp_path / "sd2-inpainting")
    (problem,) = missing_weights(cfg.generator)
    assert problem.startswith(f"generator.controlnet: {tmp_path}/controlnet holds no")
    cfg = paper_cfg(tmp_path, "diffumatting", "generator.background=classic")
    (tmp_path / "dm" / "unet").mkdir(parents=True)
    (problem, base) = missing_weights(cfg.generator)
    assert "lacks unet/, vae/, text_encoder/, tokenizer/, scheduler/" in problem
    assert base.startswith("generator.base_model:")


def test_training_entry_point_reports_without_a_traceback(tmp_path):
    env = {"OVCAMO_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path), "PATH": "/usr/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "generation.train", "generator=outpaint", "check=true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("python -m generation.train: generator.pretrained: ")
    assert "stabilityai/stable-diffusion-2-inpainting" in line


def tiny_paper_overrides(name: str) -> list[str]:
    train = {
        "diffumatting": ["generator.train.stages.generation=2", "generator.train.stages.joint=2"],
        "outpaint": ["generator.train.steps=2"],
    }[name]
    return [
        "generator.resolution=32",
        "generator.train.batch_size=2",
        "generator.train.max_samples=4",
        "generator.sampler.num_inference_steps=2",
        *train,
    ]


@pytest.mark.parametrize("name", ["diffumatting", "outpaint"])
def test_paper_generators_run_from_weights_the_entry_point_trains(name, tmp_path):
    """From local Stable Diffusion folders (tiny stand-ins for the hub downloads), the training
    entry point makes what the paper config lacks; the paper generator then builds and samples."""
    background = ["generator.background=classic"] if name == "diffumatting" else []
    cfg = paper_cfg(tmp_path, name, *tiny_paper_overrides(name), *background)
    if name == "diffumatting":
        tiny_parts(4).save(tmp_path / "sd15")
    else:
        tiny_parts(9).save(tmp_path / "sd2-inpainting")
    cfg.check = True
    assert "would " in train_generator(cfg)
    assert missing_weights(cfg.generator), "nothing was trained yet"
    cfg.check = False
    assert train_generator(cfg).endswith(": done")
    assert missing_weights(cfg.generator) == []
    assert "already holds it" in train_generator(cfg)

    paths = resolve_data_paths(cfg.data, str(tmp_path / "cache"))
    gen = build_generator(cfg.generator, data=paths, cache_dir=tmp_path / "cache", device="cpu")
    if name == "diffumatting":
        gen.head = DiscHead()  # a few training steps do not make a usable matte yet
    record = resolve_records(paths, "train")[0][0]
    s = load_sample(record)
    sample = gen.generate(SourceObject(s["image"], s["mask"], record.class_name, "x"), "owl", 0)
    assert sample.image.shape == s["image"].shape and sample.mask.any()
    if name == "outpaint":
        np.testing.assert_array_equal(sample.image[s["mask"]], s["image"][s["mask"]])


def test_micro_configs_need_nothing_from_disk(tmp_path):
    for name in ("bgaug_micro", "outpaint_micro", "diffumatting_micro"):
        cfg = compose_generate(tmp_path, f"generator={name}")
        cfg.generator.micro = TINY_MICRO
        assert missing_weights(cfg.generator) == []


@pytest.mark.parametrize(
    ("name", "key"),
    [("diffumatting", "pretrained"), ("bgaug", "pretrained"), ("outpaint", "controlnet")],
)
def test_paper_synthetic_loop_check_names_the_generator_weights(name, key, tmp_path, capsys):
    """``ovcamo-loop experiment=paper_synthetic generator=<name> check=true``."""
    from ovcamo.engine.loop import main as loop_main

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(
            "loop",
            overrides=[
                "experiment=paper_synthetic",
                f"generator={name}",
                "check=true",
                "out_dir=unused",
                f"cache_dir={tmp_path / 'cache'}",
                f"generator.{key}={tmp_path / 'missing'}",
            ],
        )
    with pytest.raises(SystemExit) as e:
        loop_main(cfg)
    assert e.value.code == 2
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"  - generator.{key}: "))
    assert str(tmp_path / "missing") in line
    assert ("python -m generation.train" in line) or ("huggingface-cli download" in line)
