"""CLIP's own pooling: the global embedding equals ``encode_image`` (ConvNeXt and ViT, random
weights), and the region pooling that classifies the mask reduces to it for a full mask."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovcamo.models import build_model, model_config
from ovcamo.models.clip_backbone import CLIPBackbone

CLASSES = ["owl", "snow leopard", "frog"]


@pytest.fixture(autouse=True)
def _quiet_open_clip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)


def _convnext() -> CLIPBackbone:
    torch.manual_seed(0)
    clip = open_clip.create_model("ovcamo_micro_convnext")
    return CLIPBackbone(clip, open_clip.get_tokenizer("ovcamo_micro_convnext"), image_size=64)


def tiny_vit_backbone() -> CLIPBackbone:
    """A 3-block ViT CLIP (64 px, 16-px patches: 4×4 tokens) with random weights, seeded."""
    torch.manual_seed(0)
    clip = open_clip.create_model(
        "ViT-B-32",
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return CLIPBackbone(clip, open_clip.get_tokenizer("ViT-B-32"), image_size=64)


BACKBONES = {"convnext": _convnext, "vit": tiny_vit_backbone}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request: pytest.FixtureRequest) -> CLIPBackbone:
    return BACKBONES[request.param]()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_embedding_is_encode_image(backbone: CLIPBackbone, images: torch.Tensor) -> None:
    feats = backbone(images)
    with torch.no_grad():
        expected = backbone.clip.encode_image(backbone.normalize(images))
    assert feats.embedding.shape == expected.shape == (3, backbone.embed_dim)
    torch.testing.assert_close(feats.embedding, expected, rtol=0, atol=1e-5)
    # Not a coincidence of the pooling: the patch-token mean through the head is far from it.
    if backbone.is_vit:
        mean_tokens = feats.dense.mean((2, 3)) @ backbone.clip.visual.proj
        cosine = F.cosine_similarity(mean_tokens, expected).mean()
        assert cosine < 0.99


def test_uniform_region_pooling_is_encode_image(
    backbone: CLIPBackbone, images: torch.Tensor
) -> None:
    feats = backbone(images)
    h, w = feats.dense.shape[-2:]
    with torch.no_grad():
        pooled = backbone.pool(feats, torch.full((3, h, w), 0.37))
    torch.testing.assert_close(pooled, feats.embedding, rtol=0, atol=1e-5)


def test_region_pooling_matches_clip_restricted_to_the_region(
    backbone: CLIPBackbone, images: torch.Tensor
) -> None:
    """A hard region equals CLIP run on that region alone: ConvNeXt averages only the region's
    cells; the ViT's class token sees only the region's patches in the last block."""
    feats = backbone(images)
    h, w = feats.dense.shape[-2:]
    region = torch.zeros(h, w, dtype=torch.bool)
    region[1:3, 0:2] = True
    weights = torch.where(region, 1.0, 1e-12).expand(3, h, w)
    with torch.no_grad():
        pooled = backbone.pool(feats, weights)
        visual = backbone.clip.visual
        if backbone.is_vit:
            tokens = feats.last_block_input
            keep = torch.cat([torch.tensor([True]), region.flatten()])
            out = visual.transformer.resblocks[-1](tokens[:, keep])
            expected = visual.ln_post(out[:, 0]) @ visual.proj
        else:
            cells = feats.dense[:, :, region].mean(-1)
            expected = visual.head(visual.trunk.forward_head(cells[:, :, None, None]))
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(pooled, feats.embedding, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_full_mask_classifies_like_the_global_score(kind: str, images: torch.Tensor) -> None:
    backbone = BACKBONES[kind]()
    torch.manual_seed(0)
    model = build_model(
        model_config(
            "baclip_micro", "micro", ["backbone.pretrained=null", "backbone.image_size=64"]
        ),
        backbone=backbone,
    ).eval()
    feats = backbone(images)
    text = backbone.text_embeddings(CLASSES)
    full = torch.full((3, 1, 64, 64), 30.0)  # sigmoid = 1 everywhere
    with torch.no_grad():
        logits = model.classify(feats, full, text)
        out = model(images, CLASSES)
    torch.testing.assert_close(logits, out["image_text_logits"], rtol=0, atol=1e-4)
    assert out["class_logits"].shape == (3, 3)
