"""The micro CLIP: CamoPrompts embeddings, class-grouped batches, training, caching, open_clip loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import ovcamo.models  # noqa: F401  (registers the micro architecture)
from ovcamo import CONF_DIR
from ovcamo.engine.micro_clip import (
    REPORT_FILE,
    augment,
    class_grouped_batches,
    ensure_micro_clip,
    main,
    zero_shot_top1,
)
from ovcamo.models.camo_prompts import CAMO_PROMPTS, class_prompts, class_text_embeddings

TINY_CLIP = "ovcamo_test_tiny_clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "image_size": 32,
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 32 px ConvNeXt-atto CLIP with a one-layer text tower, registered with open_clip."""
    if TINY_CLIP not in open_clip.list_models():
        folder = tmp_path_factory.mktemp("model_configs")
        (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(folder)
    return TINY_CLIP


def tiny_world_cfg() -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "world" / "micro.yaml"))
    cfg.update(
        name="tiny",
        image_size=32,
        classes={"train": ["mantis", "flatfish"], "test": ["cat", "crab", "moth"]},
        train_counts={"min": 1, "max": 2},
        test_count=2,
        salient_per_class=4,
        salient_heldout_per_class=2,
        camouflaged_web_per_class=2,
    )
    return cfg


def tiny_clip_cfg(model: str, **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "clip" / "micro.yaml"))
    cfg.update(model=model, epochs=12, batch_size=10, group_size=5, warmup_steps=2, lr=3e-3)
    cfg.update(train_size=None)
    cfg.update({"progress": False, **overrides})
    return cfg


def test_camo_prompts_are_the_six_sentences() -> None:
    assert len(CAMO_PROMPTS) == 6
    assert CAMO_PROMPTS[0].format("snow leopard") == "A photo of the camouflaged snow leopard."
    assert all(t.count("{}") == 1 for t in CAMO_PROMPTS)


def test_class_text_embeddings_is_the_template_ensemble(tiny_clip_name: str) -> None:
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name).train()
    tokenizer = open_clip.get_tokenizer(tiny_clip_name)
    names = ["snow leopard", "reccoon", "cat"]
    emb = class_text_embeddings(model, tokenizer, names)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        per_template = F.normalize(
            model.encode_text(tokenizer([t.format("reccoon") for t in CAMO_PROMPTS])), dim=-1
        )
    expected = F.normalize(per_template.mean(0), dim=-1)
    assert torch.allclose(emb[1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="class_names is empty"):
        class_text_embeddings(model, tokenizer, [])


class _ColourClip(torch.nn.Module):
    """A CLIP stand-in: an image's feature is its mean normalised colour, a class's text feature a
    one-hot row; so the zero-shot class of an image is its strongest normalised channel."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.visual = torch.nn.Module()
        self.visual.preprocess_cfg = {"mean": (0.8, 0.2, 0.2), "std": (0.1, 0.1, 0.1)}
        self.rows = {s: i for i, n in enumerate(names) for s in class_prompts(n)}

    def tokenize(self, sentences: list[str]) -> torch.Tensor:
        return torch.tensor([self.rows[s] for s in sentences])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.eye(3)[tokens]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_zero_shot_top1_classifies_normalised_images_among_the_candidates() -> None:
    names = ["fox", "hare", "newt"]
    model = _ColourClip(names)
    # Normalised with mean (0.8, 0.2, 0.2) / std 0.1: (230, 20, 20) is channel 0, (153, 128, 26)
    # channel 1 (channel 0 raw), (20, 20, 230) channel 2.
    colours = [(230, 20, 20), (153, 128, 26), (20, 20, 230), (230, 20, 20)]
    images = torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(4, 3, 4, 4)
    labels = ["fox", "hare", "newt", "newt"]
    assert zero_shot_top1(model, model.tokenize, images, labels, names) == 0.75
    # The candidates' order changes nothing: each label is found in the list it is scored in.
    assert zero_shot_top1(model, model.tokenize, images, labels, ["newt", "fox", "hare"]) == 0.75


def test_class_grouped_batches_have_distinct_classes_per_group() -> None:
    labels = np.repeat(np.arange(7), [3, 9, 1, 4, 4, 2, 5])
    rng = np.random.default_rng(0)
    idx = class_grouped_batches(labels, batch_size=12, group_size=4, rng=rng)
    assert idx.shape == (12,)
    for group in idx.reshape(3, 4):
        assert len(set(labels[group])) == 4
    # More classes asked than exist: smaller groups, each class once per group, same batch size.
    idx = class_grouped_batches(labels[:4], batch_size=8, group_size=8, rng=rng)
    assert [sorted(g) for g in labels[:4][idx].reshape(4, 2)] == [[0, 1]] * 4


def test_augment_keeps_shape_and_range() -> None:
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    cfg = {"scale": [0.5, 1.0], "hflip": True, "brightness": 0.2, "contrast": 0.2}
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    small = augment(x, cfg, torch.Generator().manual_seed(0), size=12)
    assert small.shape == (4, 3, 12, 12)
    # Whole-image crops without jitter: each image unchanged or mirrored, as uint8 / 255.
    still = {"scale": [1.0, 1.0], "hflip": True, "brightness": 0.0, "contrast": 0.0}
    out = augment(x, still, torch.Generator().manual_seed(0))
    flipped = [
        torch.allclose(o, y.float().flip(-1) / 255, atol=1e-6) for o, y in zip(out, x, strict=True)
    ]
    kept = [torch.allclose(o, y.float() / 255, atol=1e-6) for o, y in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_training_lowers_loss_and_checkpoint_loads_in_open_clip(
    tiny_clip_name: str, tmp_path: Path
) -> None:
    checkpoint = ensure_micro_clip(tiny_clip_cfg(tiny_clip_name), tiny_world_cfg(), tmp_path)
    assert checkpoint.suffix == ".safetensors" and checkpoint.is_file()
    report = json.loads((checkpoint.parent / REPORT_FILE).read_text())
    assert report["n_eval_salient"] == 3 * 2 and report["n_eval_camouflaged"] == 3 * 2
    assert report["train_seconds"] > 0
    assert (checkpoint.parent / report["checkpoint"]) == checkpoint
    assert report["loss_last_epoch"] < report["loss_first_epoch"]

    from safetensors.torch import load_file

    loaded = open_clip.create_model(tiny_clip_name, pretrained=str(checkpoint))
    saved = load_file(str(checkpoint))
    state = loaded.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    # The reported salient zero-shot top-1, redone from the held-out salient renders of the novel
    # classes with the loaded checkpoint.
    world = Path(json.loads((checkpoint.parent / "world.json").read_text())["world_dir"])
    held = [
        e
        for e in json.loads((world / "salient" / "captions.json").read_text())
        if e["split"] == "val" and e["class_name"] in report["novel_classes"]
    ]
    pixels = np.stack([np.asarray(Image.open(world / "salient" / e["image"])) for e in held])
    mean, std = (
        torch.tensor(loaded.visual.preprocess_cfg[k]).view(3, 1, 1) for k in ("mean", "std")
    )
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    loaded.eval()
    with torch.no_grad():
        text = class_text_embeddings(
            loaded, open_clip.get_tokenizer(tiny_clip_name), report["novel_classes"]
        )
        guess = (F.normalize(loaded.encode_image(x), dim=-1) @ text.T).argmax(1)
    truth = torch.tensor([report["novel_classes"].index(e["class_name"]) for e in held])
    assert len(held) == report["n_eval_salient"]
    assert report["zero_shot_top1_salient"] == np.mean((guess == truth).numpy())

    # A second call finds the cache entry and trains nothing.
    mtime = checkpoint.stat().st_mtime_ns
    again = ensure_micro_clip(tiny_clip_cfg(tiny_clip_name), tiny_world_cfg(), tmp_path)
    assert again == checkpoint and checkpoint.stat().st_mtime_ns == mtime
    assert not [p for p in checkpoint.parents[1].iterdir() if p.name.endswith(".tmp")]

    # A changed recipe is another cache entry; progress is not part of the hash.
    quiet = ensure_micro_clip(
        tiny_clip_cfg(tiny_clip_name, progress=True, num_threads=1), tiny_world_cfg(), tmp_path
    )
    assert quiet == checkpoint


def test_main_prints_report(tiny_clip_name: str, tmp_path: Path, capsys) -> None:
    cfg = {
        "clip": tiny_clip_cfg(tiny_clip_name, epochs=2),
        "world": tiny_world_cfg(),
        "cache_dir": str(tmp_path),
    }
    checkpoint = main(cfg)
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint"] == str(checkpoint) and checkpoint.is_file()
    assert set(printed) >= {"zero_shot_top1_salient", "zero_shot_top1_camouflaged", "train_seconds"}


def test_bad_clip_config_is_named(tmp_path: Path) -> None:
    cfg = tiny_clip_cfg("ovcamo_micro_convnext")
    del cfg["lr"]
    with pytest.raises(KeyError, match="clip.lr"):
        ensure_micro_clip(cfg, tiny_world_cfg(), tmp_path)
    with pytest.raises(ValueError, match="multiple of clip.group_size"):
        ensure_micro_clip(
            tiny_clip_cfg("x", batch_size=10, group_size=3), tiny_world_cfg(), tmp_path
        )
    assert not any(tmp_path.iterdir())
