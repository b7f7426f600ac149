"""The paper configuration builds the published architecture; each addition the micro model uses
is a named option, and turning them on over ``model=baclip`` gives the micro model bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from segment_anything.modeling.common import LayerNorm2d
from test_ablation import ROWS
from test_model_sam_init import _official_state_dict

from ovcamo import CONF_DIR
from ovcamo.models import build_model, model_config
from ovcamo.models.breakdown import model_breakdown_lines, parameter_breakdown
from ovcamo.models.neck import FeatureNeck, HighResSkips, TrunkLevel
from ovcamo.models.sam_decoder import build_prompt_encoder, text_prompt_embeddings

CLASSES = ["owl", "snow leopard", "frog"]
#: The micro model's widths, on top of model=baclip.
MICRO_WIDTHS = [
    "model.dim=64",
    "model.sam_checkpoint=null",
    "model.decoder.dim=128",
    "model.decoder.mlp_dim=512",
    "model.decoder.num_heads=4",
    "model.mrem.num_heads=4",
    "model.cce.reduction=8",
    "model.prompt.num_heads=4",
    "model.neck.cpu_bf16=true",
]
#: The micro model's additions to the paper's architecture, by their option names.
MICRO_ADDITIONS = [
    "model.neck.enabled=true",
    "model.neck.refine=true",
    "model.decoder.high_res=true",
    "model.decoder.high_res_init=default",
    "model.decoder.image_proj=true",
    "model.prompt.mode=weighted",
    "model.prompt.prompt_encoder=false",
]
#: Top-level blocks of the published BaCLIP (SAM-decoder rows), and what holds parameters.
PAPER_BLOCKS = {
    "backbone",
    "neck",
    "mrem",
    "cce",
    "image_proj",
    "prompt_adapter",
    "prompt_encoder",
    "mask_decoder",
}
PAPER_PARAMETER_BLOCKS = {
    "backbone",
    "mrem",
    "cce",
    "prompt_adapter",
    "prompt_encoder",
    "mask_decoder",
}
#: mask_logits of baclip_micro (seed 0, random micro CLIP, the images below) at the commit that
#: made the additions options: the micro default model must not change.
MICRO_MASK_LOGIT_SUM = 766.0981789790385


@pytest.fixture(autouse=True)
def _quiet_open_clip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def _micro_output(model_name: str, *overrides: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(model_config(model_name, "micro", ["backbone.pretrained=null", *overrides]))
    with torch.no_grad():
        return model.eval()(_images(), CLASSES)["mask_logits"]


def test_micro_model_is_the_paper_model_plus_named_additions() -> None:
    micro = _micro_output("baclip_micro")
    assert micro.double().sum().item() == pytest.approx(MICRO_MASK_LOGIT_SUM, rel=1e-6)
    explicit = _micro_output("baclip", *MICRO_WIDTHS, *MICRO_ADDITIONS)
    torch.testing.assert_close(explicit, micro, rtol=0, atol=0)
    # One option less and it is another model.
    other = _micro_output("baclip", *MICRO_WIDTHS, *MICRO_ADDITIONS, "model.prompt.mode=all")
    assert not torch.allclose(other, micro)


def _paper_model_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["experiment=paper", "out_dir=unused", *overrides])
    return cfg.model


def _assert_published_blocks(model) -> None:
    assert {name for name, _ in model.named_children()} == PAPER_BLOCKS
    holding = {row[0] for row in parameter_breakdown(model)}
    assert {"mrem", "prompt_adapter", "mask_decoder"} <= holding <= PAPER_PARAMETER_BLOCKS
    assert isinstance(model.neck, TrunkLevel) and isinstance(model.image_proj, torch.nn.Identity)
    assert model.high_res is None and model.prompt_through_encoder
    assert model.prompt_adapter.mode == "all"
    for name, module in model.named_modules():
        assert not isinstance(module, (FeatureNeck, HighResSkips)), name
        if isinstance(module, LayerNorm2d):  # SAM's own upsampling and mask-prompt path only
            assert name.startswith(("mask_decoder.", "prompt_encoder.")), name


def test_paper_experiment_builds_only_the_papers_blocks() -> None:
    """experiment=paper with random ConvNeXt-L weights at 64 px: MREM reads ConvNeXt-L's stride-16
    stage through its own 1×1 convolution, and nothing the paper lacks is built."""
    node = _paper_model_config("backbone.pretrained=null", "backbone.image_size=64")
    node.sam_checkpoint = None
    torch.manual_seed(0)
    model = build_model(node)
    _assert_published_blocks(model)
    assert model.neck.index == 2 and model.mrem.f_v.in_channels == 768
    assert model.mrem.f_v.out_channels == model.mask_decoder.transformer_dim == 256
    out = model(torch.rand(1, 3, 64, 64), CLASSES)
    assert out["mask_logits"].shape == (1, 1, 64, 64)


@pytest.mark.parametrize("row", [r for r in ROWS if r != "conv"])
def test_every_paper_scale_ablation_row_builds_the_published_blocks(row: str) -> None:
    """Each paper-scale row's model config, on the micro CLIP (the blocks do not depend on it)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "loop", overrides=["experiment=ablation", f"ablation_row={row}", "out_dir=unused"]
        )
    node = OmegaConf.to_container(cfg.model, resolve=False)
    node["backbone"] = {"name": "ovcamo_micro_convnext", "pretrained": None, "image_size": 64}
    node["sam_checkpoint"] = None
    model = build_model(OmegaConf.create(node))
    _assert_published_blocks(model)


def test_zero_initialised_skips_leave_the_sam_decoder_unchanged(tmp_path) -> None:
    """Skips on at paper widths with a SAM file: at step 0 the mask equals the one without skips
    (the same model with its skips removed); default-initialised skips change it."""
    sam = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(_official_state_dict(), sam)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for init in ("zero", "default"):
        torch.manual_seed(0)
        model = build_model(
            model_config(
                "baclip",
                "micro",
                [
                    "backbone.pretrained=null",
                    "backbone.image_size=64",
                    f"model.sam_checkpoint='{sam}'",
                    "model.neck.enabled=true",
                    "model.decoder.high_res=true",
                    f"model.decoder.high_res_init={init}",
                ],
            )
        ).eval()
        with torch.no_grad():
            with_skips = model(images, CLASSES)["mask_logits"]
            model.high_res = None
            outputs[init] = (with_skips, model(images, CLASSES)["mask_logits"])
    torch.testing.assert_close(*outputs["zero"], rtol=0, atol=0)
    assert not torch.allclose(*outputs["default"])


def test_skips_need_the_neck_and_no_projection_needs_equal_widths() -> None:
    with pytest.raises(ValueError, match="model.neck.enabled=true"):
        build_model(
            model_config(
                "baclip", "micro", ["backbone.pretrained=null", "model.decoder.high_res=true"]
            )
        )
    with pytest.raises(ValueError, match="model.decoder.image_proj=true"):
        build_model(model_config("baclip", "micro", ["backbone.pretrained=null", "model.dim=64"]))
    with pytest.raises(ValueError, match="high_res_init"):
        build_model(
            model_config(
                "baclip_micro",
                "micro",
                ["backbone.pretrained=null", "model.decoder.high_res_init=ones"],
            )
        )


def test_text_prompts_go_through_the_prompt_encoders_point_path(monkeypatch) -> None:
    """``text_prompt_embeddings`` is SAM's own point embedding with the positional encoding of each
    point replaced by a text token: foreground label embedding added, SAM's padding point last."""
    torch.manual_seed(0)
    encoder = build_prompt_encoder(32, 64)
    tokens = torch.randn(2, 5, 32)
    coords = torch.rand(2, 5, 2) * 64
    labels = torch.ones(2, 5, dtype=torch.long)

    def tokens_as_positions(points, image_size):  # SAM pads one point (0, 0) per image
        return torch.cat([tokens, torch.zeros(2, 1, 32)], dim=1)

    monkeypatch.setattr(encoder.pe_layer, "forward_with_coords", tokens_as_positions)
    sparse, _ = encoder(points=(coords, labels), boxes=None, masks=None)
    ours = text_prompt_embeddings(encoder, tokens)
    assert ours.shape == (2, 6, 32)
    torch.testing.assert_close(ours, sparse, rtol=0, atol=0)


def test_paper_model_prompts_sam_with_every_class() -> None:
    """The decoder's tokens: SAM's IoU and 4 mask tokens, one prompt per candidate class, and the
    padding point, whatever the number of classes."""
    torch.manual_seed(0)
    model = build_model(
        model_config("baclip", "micro", ["backbone.pretrained=null", "backbone.image_size=64"])
    )
    seen = []
    model.mask_decoder.transformer.register_forward_hook(
        lambda module, args, out: seen.append(args[2].shape)
    )
    images = torch.rand(2, 3, 64, 64)
    for classes in (CLASSES, [*CLASSES, "crab", "moth"]):
        model(images, classes)
    assert seen == [(2, 5 + 3 + 1, 256), (2, 5 + 5 + 1, 256)]


def test_check_lines_list_the_papers_blocks_only() -> None:
    node = model_config("baclip", "micro", ["backbone.pretrained=micro"])
    lines = model_breakdown_lines(node)
    text = "\n".join(lines)
    assert "MREM (`mrem`)" in text and "SAM prompt encoder (frozen) (`prompt_encoder`): 0" in text
    assert "addition" not in text
    micro = "\n".join(model_breakdown_lines(model_config("baclip_micro", "micro")))
    assert "FPN neck (addition) (`neck`): 152,192 trainable" in micro
    assert "total: 1,194,507 trainable parameters" in micro
