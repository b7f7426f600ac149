"""backbone.pretrained=micro is resolved to the micro CLIP checkpoint before a model is built."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from ovcamo import CONF_DIR
from ovcamo.engine.resolve import resolve_pretrained


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=list(overrides))


def test_micro_is_replaced_by_the_cached_checkpoint(monkeypatch, tmp_path):
    seen = {}

    def fake_ensure(clip_cfg, world_cfg, cache_dir):
        seen.update(clip=clip_cfg.model, world=world_cfg.name, cache=cache_dir)
        return tmp_path / "clip.safetensors"

    monkeypatch.setattr("ovcamo.engine.micro_clip.ensure_micro_clip", fake_ensure)
    cfg = _cfg(f"cache_dir={tmp_path}")
    assert cfg.model.backbone.pretrained == "micro"
    out = resolve_pretrained(cfg)
    assert (
        out.model.backbone.pretrained
        == out.backbone.pretrained
        == str(tmp_path / "clip.safetensors")
    )
    assert seen == {"clip": "ovcamo_micro_convnext", "world": "micro", "cache": str(tmp_path)}
    assert cfg.model.backbone.pretrained == "micro"  # the input config is left alone


def test_other_values_pass_through_and_micro_needs_a_world():
    assert resolve_pretrained(_cfg("backbone.pretrained=null")).model.backbone.pretrained is None
    with pytest.raises(KeyError, match="data=micro"):
        resolve_pretrained(_cfg("data=ovcamo"))
