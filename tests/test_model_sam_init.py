"""Initialising BaCLIP's prompt encoder and mask decoder from a SAM checkpoint with the official key
layout (a tiny ``Sam`` the test builds with segment-anything's own classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from segment_anything.modeling import ImageEncoderViT, Sam

from ovcamo.models import build_model, load_model, model_config, save_model
from ovcamo.models.sam_decoder import (
    build_mask_decoder,
    build_prompt_encoder,
    load_sam_weights,
)


def _official_state_dict() -> dict[str, torch.Tensor]:
    """A ``Sam`` state dict: tiny ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``."""
    torch.manual_seed(123)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=256
        ),
        prompt_encoder=build_prompt_encoder(256, 1024),
        mask_decoder=build_mask_decoder(256, depth=2, mlp_dim=2048, num_heads=8),
    )
    return sam.state_dict()


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(_official_state_dict(), path)
    return path


def _overrides(sam: Path | str) -> list[str]:
    return [
        "backbone.pretrained=null",
        "backbone.image_size=64",
        f"model.sam_checkpoint='{sam}'",
        "model.decoder.dim=256",
        "model.decoder.mlp_dim=2048",
        "model.decoder.num_heads=8",
    ]


def test_sam_checkpoint_initialises_prompt_encoder_and_decoder(
    sam_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    model = build_model(model_config("baclip_micro", "micro", _overrides(sam_file)))
    official = torch.load(sam_file, weights_only=True)
    for prefix, module in (
        ("prompt_encoder.", model.prompt_encoder),
        ("mask_decoder.", model.mask_decoder),
    ):
        for key, tensor in module.state_dict().items():
            assert torch.equal(tensor, official[prefix + key]), prefix + key
    report = model.sam_load_report
    assert report is not None and report.complete
    assert len(report.loaded) == sum(
        k.startswith(("prompt_encoder.", "mask_decoder.")) for k in official
    )
    # The SAM tensors are stored with the model (frozen or not), so it loads without the file.
    assert all(
        any(k.startswith(p) for k in model.trainable_state_dict())
        for p in ("prompt_encoder.", "mask_decoder.")
    )
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert model(torch.rand(1, 3, 64, 64), ["owl", "frog"])["mask_logits"].shape == (1, 1, 64, 64)
    save_model(model, tmp_path / "saved")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert saved.keys() == model.trainable_state_dict().keys()


def test_saved_model_loads_without_the_sam_and_clip_files(tmp_path: Path) -> None:
    """A model initialised from SAM, on CLIP weights from a local file, saved, then both files
    moved away: load_model rebuilds it from its folder alone, giving identical outputs."""
    sam = tmp_path / "weights" / "sam_vit_b_01ec64.pth"
    sam.parent.mkdir()
    torch.save(_official_state_dict(), sam)
    clip = tmp_path / "weights" / "micro_clip.pt"
    torch.manual_seed(5)
    torch.save(open_clip.create_model("ovcamo_micro_convnext").state_dict(), clip)
    torch.manual_seed(0)
    model = build_model(
        model_config("baclip_micro", "micro", [*_overrides(sam), f"backbone.pretrained='{clip}'"])
    )
    # Train a little so that the saved decoder differs from SAM's.
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = (images[:, :1] > 0.5).float()
    model.loss(model(images, ["owl", "frog"]), masks)["loss"].backward()
    opt.step()
    model.eval()
    save_model(model, tmp_path / "saved")
    assert (tmp_path / "saved" / "backbone.safetensors").is_file()
    (tmp_path / "weights").rename(tmp_path / "moved")
    loaded = load_model(tmp_path / "saved").eval()
    assert loaded.config["sam_checkpoint"] == str(sam)  # kept as provenance, not read
    with torch.no_grad():
        a, b = model(images, ["owl", "frog"]), loaded(images, ["owl", "frog"])
    for key in ("mask_logits", "class_logits", "image_text_logits"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key


def test_sam_checkpoint_report_lists_missing_unexpected_and_mismatched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _official_state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.not_in_sam.weight"] = torch.zeros(3)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    path = tmp_path / "edited_sam.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    prompt_encoder = build_prompt_encoder(256, 64)
    decoder = build_mask_decoder(256)
    kept = prompt_encoder.no_mask_embed.weight.clone()
    with caplog.at_level(logging.WARNING, logger="ovcamo.models.sam_decoder"):
        report = load_sam_weights(prompt_encoder, decoder, path)
    assert report.missing == ["mask_decoder.iou_token.weight"]
    assert report.unexpected == ["mask_decoder.not_in_sam.weight"]
    assert len(report.mismatched) == 1
    assert "prompt_encoder.no_mask_embed.weight" in report.mismatched[0]
    assert "(1, 128)" in report.mismatched[0] and "(1, 256)" in report.mismatched[0]
    assert not report.complete
    assert torch.equal(prompt_encoder.no_mask_embed.weight, kept), "mismatched tensors are skipped"
    assert torch.equal(decoder.mask_tokens.weight, state["mask_decoder.mask_tokens.weight"])
    assert "shape mismatch" in caplog.text and str(path) in caplog.text


def test_sam_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_model(
            model_config("baclip_micro", "micro", [*_overrides(missing), "model.sam_type=vit_h"])
        )
    message = str(err.value)
    assert str(missing) in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    assert "model.sam_checkpoint" in message
    with pytest.raises(ValueError, match="decoder.dim=256"):
        build_model(
            model_config(
                "baclip_micro",
                "micro",
                [
                    "backbone.pretrained=null",
                    "backbone.image_size=64",
                    f"model.sam_checkpoint='{missing}'",
                ],
            )
        )
    not_sam = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, not_sam)
    with pytest.raises(ValueError, match="no usable"):
        load_sam_weights(build_prompt_encoder(256, 64), build_mask_decoder(256), not_sam)


def test_a_pickled_sam_file_is_refused_without_advising_unpickling(tmp_path: Path) -> None:
    """A SAM file holding Python objects beyond tensors is a CheckpointError naming the file, and
    the message never passes on torch's advice to reload it with ``weights_only`` off."""
    import argparse

    from ovcamo.checkpoint import CheckpointError

    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"model": _official_state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    decoder = build_mask_decoder(256, depth=2, mlp_dim=2048, num_heads=8)
    with pytest.raises(CheckpointError, match="not a safe checkpoint") as info:
        load_sam_weights(build_prompt_encoder(256, 1024), decoder, path)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)
