"""The assembled BaCLIP on the micro CLIP (random weights): every config variant, freezing,
batching, save/load, weights errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from test_model_pooling import tiny_vit_backbone

from ovcamo.models import BaCLIP, build_model, load_model, model_config, save_model
from ovcamo.models.build import CONF_DIR
from ovcamo.models.clip_backbone import CLIPBackbone, WeightsNotFoundError, build_clip_backbone

CLASSES = ["owl", "snow leopard", "frog"]
MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
MICRO_BACKBONE = {"name": "ovcamo_micro_convnext", "pretrained": None, "image_size": 64}


@pytest.fixture(autouse=True)
def _quiet_open_clip(caplog: pytest.LogCaptureFixture) -> None:
    # open_clip warns at root level for every randomly initialised model.
    caplog.set_level(logging.ERROR)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro CLIP checkpoint, so that a saved model's backbone can be rebuilt identically."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("clip") / "micro_clip.pt"
    torch.save(open_clip.create_model("ovcamo_micro_convnext").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backbone(clip_file: Path) -> CLIPBackbone:
    return build_clip_backbone({**MICRO_BACKBONE, "pretrained": str(clip_file)})


@pytest.fixture(scope="module")
def make(clip_file: Path, backbone: CLIPBackbone) -> Callable[..., BaCLIP]:
    """``make(model_name, *hydra_overrides)``: a variant on the shared micro CLIP, seeded."""

    def make(model: str = "baclip_micro", *overrides: str) -> BaCLIP:
        torch.manual_seed(0)
        cfg = model_config(
            model,
            "micro",
            # The shared backbone is the fp32 tower: the stored config must say so.
            [
                f"backbone.pretrained='{clip_file}'",
                "backbone.image_size=64",
                "backbone.cpu_bf16=false",
                *overrides,
            ],
        )
        return build_model(cfg, backbone=backbone)

    return make


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def masks() -> torch.Tensor:
    m = torch.zeros(2, 1, 64, 64)
    m[0, :, 10:40, 20:50] = 1
    m[1, :, 30:60, 5:30] = 1
    return m


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_variant_builds_runs_and_backpropagates(
    make: Callable[..., BaCLIP], name: str, images: torch.Tensor, masks: torch.Tensor
) -> None:
    model = make(name)
    assert model.config["name"] == name
    out = model(images, CLASSES)
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    assert out["class_logits"].shape == (2, 3)
    assert out["image_text_logits"].shape == (2, 3)
    losses = model.loss(out, masks)
    assert set(losses) == {"loss", "bce", "dice"}
    losses["loss"].backward()
    trainable = model.trainable_parameters()
    assert trainable
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_model_configs_cover_the_ladder_and_ablations(make: Callable[..., BaCLIP]) -> None:
    required = {
        "baclip",
        "baclip_micro",
        "ladder_conv",
        "ladder_sam",
        "ladder_sam_cce",
        "mrem_t2v",
        "mrem_v2t",
        "no_prompt_sa",
    }
    assert required <= set(MODEL_CONFIGS)
    assert make("ladder_conv_micro").conv_decoder is not None
    sam = make("ladder_sam_micro")
    assert sam.mrem.mode == "off" and len(sam.cce.blocks) == 0
    assert make("ladder_sam_cce_micro").mrem.mode == "off"
    full = make("baclip_micro")
    assert full.mrem.mode == "both" and len(full.cce.blocks) == 3
    assert len(make("baclip_micro", "model.cce.num_blocks=5").cce.blocks) == 5
    assert make("mrem_t2v").mrem.mode == "text_to_vision"
    assert make("no_prompt_sa").prompt_adapter.self_attention is None


def test_optimiser_step_changes_everything_but_clip_and_prompt_encoder(
    make: Callable[..., BaCLIP], images: torch.Tensor, masks: torch.Tensor
) -> None:
    model = make()
    model.train()
    assert not model.backbone.training and not model.backbone.clip.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Plain Adam (no weight decay): a parameter moves only if it received a gradient.
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    model.loss(model(images, CLASSES), masks)["loss"].backward()
    opt.step()
    after = model.state_dict()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for key, value in after.items():
        unchanged = torch.equal(before[key], value)
        if key.startswith(("backbone.", "prompt_encoder.")):
            assert unchanged, f"frozen tensor {key} changed"
        elif key in frozen:
            # SAM's IoU head and multimask hypernetworks: kept for the checkpoint layout only.
            assert key.startswith(
                ("mask_decoder.iou_prediction_head.", "mask_decoder.output_hypernetworks_mlps.")
            ), key
            assert unchanged
        elif key in dict(model.named_parameters()):
            assert not unchanged, f"trainable parameter {key} did not change"
    for module in ("mrem", "cce", "prompt_adapter", "mask_decoder"):
        keys = [k for k in after if k.startswith(module + ".")]
        assert keys and all(not torch.equal(before[k], after[k]) for k in keys if k not in frozen)


def test_backbone_is_frozen_and_keeps_no_graph(
    make: Callable[..., BaCLIP], images: torch.Tensor
) -> None:
    model = make()
    model.train()
    feats = model.backbone(images)
    assert not feats.dense.requires_grad
    assert all(not f.requires_grad for f in feats.features)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(not p.requires_grad for p in model.prompt_encoder.parameters())
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in model.trainable_parameters())
    assert counts["frozen"] >= sum(p.numel() for p in model.backbone.parameters())


def test_global_score_is_clips_own_image_embedding(
    make: Callable[..., BaCLIP], images: torch.Tensor
) -> None:
    model = make().eval()
    out = model(images, CLASSES)
    clip = model.backbone.clip
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(
            clip.encode_image(model.backbone.normalize(images)), dim=-1
        )
    text = model.backbone.text_embeddings(CLASSES)
    expected = clip.logit_scale.exp() * image_emb @ text.t()
    torch.testing.assert_close(out["image_text_logits"], expected, rtol=1e-4, atol=1e-4)


def test_batched_forward_equals_per_image(
    make: Callable[..., BaCLIP], images: torch.Tensor
) -> None:
    for name in ("baclip_micro", "ladder_conv_micro"):
        # fp32 neck: bf16 rounding differs between a batch and its images on a bf16 CPU.
        model = make(name, "model.prompt.mode=topk", "model.neck.cpu_bf16=false").eval()
        with torch.no_grad():
            batched = model(images, CLASSES)
            single = [model(images[i : i + 1], CLASSES) for i in range(2)]
        for key in ("mask_logits", "class_logits"):
            torch.testing.assert_close(
                batched[key], torch.cat([s[key] for s in single]), rtol=1e-4, atol=1e-4
            )


def test_predict_and_class_cache(make: Callable[..., BaCLIP], images: torch.Tensor) -> None:
    model = make()
    model.train()
    preds = model.predict(images, CLASSES)
    assert model.training, "predict must restore train mode"
    assert len(preds) == 2
    model.eval()
    with torch.no_grad():
        out = model(images, CLASSES)
    for i, pred in enumerate(preds):
        # The probabilities are the sigmoid of the forward's mask logits at the image's size and
        # the softmax of its class logits.
        expected = F.interpolate(
            torch.sigmoid(out["mask_logits"][i : i + 1].float()), size=(64, 64), mode="bilinear"
        )[0, 0]
        np.testing.assert_allclose(pred.mask_probs, expected.numpy(), atol=1e-6)
        soft = out["class_logits"][i].softmax(-1).tolist()
        assert list(pred.class_probs.values()) == pytest.approx(soft, abs=1e-6)
        assert pred.class_name == CLASSES[int(np.argmax(soft))]
        assert pred.score == pytest.approx(max(soft), abs=1e-6)
    first = model.backbone.text_embeddings(CLASSES)
    assert model.backbone.text_embeddings(tuple(CLASSES)).data_ptr() == first.data_ptr()
    assert model.backbone.text_embeddings(CLASSES[:2]).shape[0] == 2
    with pytest.raises(ValueError, match="empty"):
        model(images, [])


def test_save_load_round_trip(
    make: Callable[..., BaCLIP],
    tmp_path: Path,
    images: torch.Tensor,
    masks: torch.Tensor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = make()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.loss(model(images, CLASSES), masks)["loss"].backward()
    opt.step()
    save_model(model.eval(), tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    # The CLIP comes from a local file, which another machine does not have: it is stored too.
    assert files == ["backbone.safetensors", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["name"] == "baclip_micro"
    sd = model.trainable_state_dict()
    assert not any(k.startswith("backbone.") for k in sd)
    assert any(k.startswith("prompt_encoder.") for k in sd), "a random prompt encoder is stored"
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path / "m").eval()
    # The stored CLIP is what the backbone is built from, not random weights overwritten later.
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with torch.no_grad():
        a, b = model(images, CLASSES), loaded(images, CLASSES)
    torch.testing.assert_close(a["mask_logits"], b["mask_logits"], rtol=0, atol=0)
    torch.testing.assert_close(a["class_logits"], b["class_logits"], rtol=0, atol=0)


def test_load_trainable_state_dict_reports_mismatch(make: Callable[..., BaCLIP]) -> None:
    model = make()
    sd = model.trainable_state_dict()
    dropped = next(iter(sd))
    with pytest.raises(KeyError, match="missing") as err:
        model.load_trainable_state_dict({k: v for k, v in sd.items() if k != dropped})
    assert dropped in str(err.value)
    with pytest.raises(KeyError, match="unexpected.*extra.weight"):
        model.load_trainable_state_dict({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model("/nonexistent/model")


def test_local_clip_weights_file_is_loaded(clip_file: Path, backbone: CLIPBackbone) -> None:
    saved = torch.load(clip_file, weights_only=True)
    loaded = backbone.clip.state_dict()
    assert saved.keys() == loaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, loaded[name]), name


def test_weights_errors_are_one_clear_paragraph(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="placeholder `micro`"):
        build_clip_backbone({**MICRO_BACKBONE, "pretrained": "micro"})
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsNotFoundError) as err:
        build_clip_backbone({**MICRO_BACKBONE, "pretrained": str(missing)})
    assert str(missing) in str(err.value) and "backbone.pretrained" in str(err.value)
    with pytest.raises(KeyError, match="image_size"):
        build_clip_backbone({"name": "ovcamo_micro_convnext", "pretrained": None})


def test_unavailable_hub_tag_names_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.load(CONF_DIR / "backbone" / "convnext_large_d_320.yaml")
    with pytest.raises(WeightsNotFoundError) as err:
        build_clip_backbone(cfg)
    message = str(err.value)
    assert "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup" in message
    assert "laion2b_s29b_b131k_ft_soup" in message and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.slow
def test_paper_configuration_maps_384_image_to_384_mask_and_a_class() -> None:
    torch.manual_seed(0)
    model = build_model(
        model_config("baclip", "convnext_large_d_320", ["backbone.pretrained=null"])
    )
    assert model.backbone.embed_dim == 768 and model.backbone.dense_channels == 1536
    names = ["snow leopard", "reccoon", "owl"]
    pred = model.predict(torch.rand(3, 384, 384), names)
    assert pred.mask_probs.shape == (384, 384) and pred.mask.shape == (384, 384)
    assert list(pred.class_probs) == names and pred.class_name in names


def test_vit_backbone_gets_a_simple_feature_pyramid(
    images: torch.Tensor, masks: torch.Tensor
) -> None:
    backbone = tiny_vit_backbone()
    assert backbone.is_vit and backbone.embed_dim == 32
    # Any input size is resized to the ViT's own size: 64 px = 4×4 tokens.
    feats = backbone(torch.rand(1, 3, 96, 80))
    assert feats.dense.shape == (1, 64, 4, 4)
    for name in ("baclip_micro", "ladder_conv_micro"):
        cfg = model_config(name, "micro", ["backbone.pretrained=null", "backbone.image_size=64"])
        model = build_model(cfg, backbone=backbone)
        if name == "ladder_conv_micro":
            shapes = [f.shape[-2:] for f in model.pyramid(feats.dense)]
            assert shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]
        else:
            assert model.pyramid is None
        out = model(images, CLASSES)
        assert out["mask_logits"].shape == (2, 1, 64, 64) and out["class_logits"].shape == (2, 3)
        model.loss(out, masks)["loss"].backward()
        assert all(p.grad is not None for p in model.trainable_parameters())


def test_cpu_bf16_backbone_hands_on_fp32_maps_close_to_fp32(
    clip_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``cpu_bf16`` the tower runs under bf16 autocast where the processor has it: maps stay
    fp32 and within bf16 rounding of the fp32 tower's; without native bf16 it is the fp32 tower."""
    from ovcamo.models import clip_backbone

    images = torch.rand(2, 3, 64, 64)
    reference = build_clip_backbone({**MICRO_BACKBONE, "pretrained": str(clip_file)})(images)
    monkeypatch.setattr(clip_backbone, "native_cpu_bf16", lambda: True)
    bf16 = build_clip_backbone({**MICRO_BACKBONE, "pretrained": str(clip_file), "cpu_bf16": True})
    assert bf16.cpu_bf16
    out = bf16(images)
    for got, want in zip(
        [*out.features, out.dense, out.embedding],
        [*reference.features, reference.dense, reference.embedding],
        strict=True,
    ):
        assert got.dtype == torch.float32
        assert not torch.equal(got, want)  # bf16 did run
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * want.abs().max().item())
    monkeypatch.setattr(clip_backbone, "native_cpu_bf16", lambda: False)
    plain = build_clip_backbone({**MICRO_BACKBONE, "pretrained": str(clip_file), "cpu_bf16": True})
    assert not plain.cpu_bf16
    torch.testing.assert_close(plain(images).dense, reference.dense, rtol=0, atol=0)
