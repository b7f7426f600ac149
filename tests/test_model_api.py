"""The model API: ``BaCLIP.from_pretrained`` / ``save_pretrained`` (one loader for saved, checkpoint
and run folders and Hub ids), ``create_model`` by name, ``predict`` with one result type and
``BaCLIPPredictor``; and the README's Python API section, run as written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_data import write_tiny_checkpoint
from huggingface_hub import ModelCard
from PIL import Image

from ovcamo.checkpoint import STATE_FILE, load_state, save_state
from ovcamo.data.io import write_png
from ovcamo.models import (
    BaCLIP,
    BaCLIPPredictor,
    ModelNotFoundError,
    Prediction,
    create_model,
    list_models,
    load_model,
)
from ovcamo.models.hub import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ["owl", "frog", "crab"]
BASE_CLASSES = ["snow leopard", "reccoon", "owl"]
SIZE = 32  # the tiny checkpoint's input size


def _write_run(run: Path, select: str, names: tuple[str, ...] = ("last",)) -> Path:
    """An ``ovcamo-train`` run folder: ``config.yaml``, ``run_info.json`` and a tiny checkpoint per
    name (a different seed each, so their weights differ), with validation metrics."""
    for seed, name in enumerate(names):
        folder = write_tiny_checkpoint(run / "checkpoints" / name, seed=seed)
        state = load_state(folder / STATE_FILE)
        metrics = {"cIoU": 0.25 + seed / 10, "cSm": 0.5}
        save_state(
            folder / STATE_FILE, {**state, "step": 6, "val_metrics": metrics, "best": metrics}
        )
    (run / "config.yaml").write_text(f"seed: 0\ntrain:\n  select: {select}\n", encoding="utf-8")
    info = {"seed": 0, "base_classes": BASE_CLASSES}
    (run / "run_info.json").write_text(json.dumps(info), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_run(tmp_path_factory.mktemp("run") / "run", "best", ("last", "best"))


@pytest.fixture(scope="module")
def model(run_dir: Path) -> BaCLIP:
    return BaCLIP.from_pretrained(run_dir)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """An image at the model's input size (a tensor of it needs no resizing either)."""
    img = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    img[8:20, 10:24] = (200, 120, 40)
    return img


def _outputs(model: BaCLIP) -> dict[str, torch.Tensor]:
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(images, CANDIDATES)


def _assert_same(a: Prediction, b: Prediction) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.mask_probs, b.mask_probs)
    assert a.class_probs == b.class_probs
    assert (a.class_name, a.score) == (b.class_name, b.score)


def test_save_pretrained_round_trip_gives_identical_outputs_and_a_model_card(
    model: BaCLIP, tmp_path: Path
) -> None:
    assert not model.training
    assert model.training_info == {
        "checkpoint": "best",
        "classes": BASE_CLASSES,
        "step": 6,
        "metrics": {"cIoU": 0.35, "cSm": 0.5},
    }
    model.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md",
        "backbone.safetensors",
        "config.json",
        "model.safetensors",
    ]
    loaded = BaCLIP.from_pretrained(saved)
    assert not loaded.training and loaded.config == model.config
    assert loaded.training_info == model.training_info
    a, b = _outputs(model), _outputs(loaded)
    for key in ("mask_logits", "class_logits"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "ovcamo" and card.data.pipeline_tag == "image-segmentation"
    text = card.text
    assert "`baclip_micro`" in text and "`ovcamo_micro_convnext`" in text
    assert "3 base classes: snow leopard, reccoon, owl." in text
    assert "| cIoU | 0.3500 |" in text and "checkpoint step 6" in text
    assert f'BaCLIP.from_pretrained("{saved}")' in text
    assert "MFMSA blocks (CCE) | 3 |" in text


def test_a_built_model_saves_a_card_without_training_facts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("ladder_conv_micro", clip_checkpoint=None, image_size=SIZE)
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert "FPN decoder" in text and "random weights" in text
    assert "## Trained on" not in text and "## Metrics" not in text
    assert "training" not in json.loads((tmp_path / "m" / "config.json").read_text())
    loaded = BaCLIP.from_pretrained(tmp_path / "m")
    assert loaded.conv_decoder is not None and dict(loaded.training_info) == {}
    torch.testing.assert_close(
        _outputs(model)["mask_logits"], _outputs(loaded)["mask_logits"], rtol=0, atol=0
    )


def test_run_folder_resolves_to_the_checkpoint_train_select_chose(
    run_dir: Path, model: BaCLIP, tmp_path: Path
) -> None:
    checkpoints = run_dir / "checkpoints"
    assert resolve_model_dir(run_dir) == checkpoints / "best"
    for name in ("last", "best"):
        assert resolve_model_dir(checkpoints / name) == checkpoints / name
    last = load_model(checkpoints / "last")
    assert last.training_info["checkpoint"] == "last"
    # The run's best weights, not its last (seeds 1 and 0 made them differ).
    torch.testing.assert_close(
        _outputs(model)["mask_logits"],
        _outputs(load_model(checkpoints / "best"))["mask_logits"],
        rtol=0,
        atol=0,
    )
    assert not torch.equal(_outputs(model)["mask_logits"], _outputs(last)["mask_logits"])

    # select=final (the default): checkpoints/last is the result.
    final = tmp_path / "final"
    shutil.copytree(run_dir, final)
    (final / "config.yaml").write_text("train:\n  select: final\n", encoding="utf-8")
    assert resolve_model_dir(final) == final / "checkpoints" / "last"
    torch.testing.assert_close(
        _outputs(BaCLIP.from_pretrained(final))["mask_logits"],
        _outputs(last)["mask_logits"],
        rtol=0,
        atol=0,
    )
    # select=best without a validated checkpoint: the last one; a swap cut short: <name>.old.
    shutil.rmtree(final / "checkpoints" / "best")
    (final / "config.yaml").write_text("train:\n  select: best\n", encoding="utf-8")
    assert resolve_model_dir(final) == final / "checkpoints" / "last"
    (final / "checkpoints" / "last").rename(final / "checkpoints" / "last.old")
    assert resolve_model_dir(final) == final / "checkpoints" / "last.old"

    shutil.rmtree(final / "checkpoints" / "last.old")
    with pytest.raises(ModelNotFoundError, match=r"train.select=best\) holds no complete"):
        BaCLIP.from_pretrained(final)
    with pytest.raises(ModelNotFoundError, match="no model at .*config.json"):
        BaCLIP.from_pretrained(tmp_path / "nothing" / "here")


def test_hub_id_loads_from_the_cache_and_fails_clearly_offline(
    model: BaCLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hub"
    with pytest.raises(ModelNotFoundError, match=r"offline\?.*hf download ovcamo/tiny"):
        BaCLIP.from_pretrained("ovcamo/tiny", cache_dir=cache)

    # A model in the local Hub cache loads with no network.
    commit = "0" * 40
    repo = cache / "models--ovcamo--tiny"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    loaded = BaCLIP.from_pretrained("ovcamo/tiny", cache_dir=cache)
    torch.testing.assert_close(
        _outputs(model)["class_logits"], _outputs(loaded)["class_logits"], rtol=0, atol=0
    )


def test_every_input_type_gives_one_prediction_with_equal_masks(
    model: BaCLIP, rgb: np.ndarray, tmp_path: Path
) -> None:
    write_png(tmp_path / "a.png", rgb)
    inputs = {
        "path": tmp_path / "a.png",
        "str": str(tmp_path / "a.png"),
        "pil": Image.fromarray(rgb),
        "array": rgb,
        "tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    }
    results = {kind: model.predict(image, CANDIDATES) for kind, image in inputs.items()}
    for kind, result in results.items():
        assert type(result) is Prediction, kind
        _assert_same(result, results["array"])
    result = results["array"]
    assert result.mask.dtype == np.uint8 and result.mask.shape == (SIZE, SIZE)
    assert result.mask_probs.dtype == np.float32 and result.mask_probs.shape == (SIZE, SIZE)
    assert list(result.class_probs) == CANDIDATES
    assert sum(result.class_probs.values()) == pytest.approx(1.0)
    assert result.class_name == max(result.class_probs, key=result.class_probs.get)

    # Another size: the mask comes back at it, for a tensor as for an array.
    wide = np.ascontiguousarray(np.concatenate([rgb, rgb[:, :8]], axis=1))
    by_array = model.predict(wide, CANDIDATES)
    by_tensor = model.predict(torch.from_numpy(wide).permute(2, 0, 1).float() / 255, CANDIDATES)
    assert by_array.mask.shape == by_tensor.mask.shape == (SIZE, SIZE + 8)
    # uint8 resizing rounds where float resizing does not: a few mask levels at most.
    assert np.abs(by_array.mask.astype(int) - by_tensor.mask.astype(int)).max() <= 4
    assert by_array.class_probs == pytest.approx(by_tensor.class_probs, abs=1e-2)

    with pytest.raises(ValueError, match="float 3×H×W"):
        model.predict(torch.zeros(1, SIZE, SIZE), CANDIDATES)
    with pytest.raises(TypeError, match="list of names"):
        model.predict(rgb, "owl")
    with pytest.raises(ValueError, match="at least one"):
        model.predict(rgb, [])


def test_a_list_in_gives_a_list_out(model: BaCLIP, rgb: np.ndarray) -> None:
    small = rgb[:20, :28].copy()
    images = [rgb, Image.fromarray(small), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255]
    singles = [model.predict(image, CANDIDATES) for image in images]
    model.train()
    listed = model.predict(images, CANDIDATES)
    assert model.training, "predict restores train mode"
    model.eval()
    assert isinstance(listed, list) and len(listed) == 3
    assert [r.mask.shape for r in listed] == [(SIZE, SIZE), (20, 28), (SIZE, SIZE)]
    for one, other in zip(singles, listed, strict=True):
        np.testing.assert_array_equal(one.mask, other.mask)
        assert one.class_probs == pytest.approx(other.class_probs, abs=1e-6)
    assert len(model.predict(tuple(images[:1]), CANDIDATES)) == 1
    batch = torch.stack([images[2], images[2]])
    assert [type(r) for r in model.predict(batch, CANDIDATES)] == [Prediction, Prediction]


def test_predictor_computes_image_features_once(model: BaCLIP, rgb: np.ndarray) -> None:
    calls = []
    hook = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        predictor = BaCLIPPredictor(model)
        with pytest.raises(RuntimeError, match="set_image"):
            predictor.predict(CANDIDATES)
        predictor.set_image(rgb)
        assert len(calls) == 1 and predictor.is_image_set
        class_lists = [CANDIDATES, ["snow leopard", "owl"], ["moss"]]
        answers = [predictor.predict(classes) for classes in class_lists]
        assert len(calls) == 1
    finally:
        hook.remove()
    for classes, answer in zip(class_lists, answers, strict=True):
        assert list(answer.class_probs) == classes
        _assert_same(answer, model.predict(rgb, classes))
    predictor.reset_image()
    assert not predictor.is_image_set


def test_create_model_by_name_with_options(tmp_path: Path) -> None:
    names = list_models()
    assert names == sorted(p.stem for p in (ROOT / "ovcamo" / "conf" / "model").glob("*.yaml"))
    assert {"baclip", "baclip_micro", "ladder_conv_micro"} <= set(names)
    torch.manual_seed(0)
    model = create_model(
        "baclip_micro",
        clip_checkpoint=None,
        num_mfmsa=2,
        image_size=SIZE,
        mrem={"mode": "text_to_vision"},
    )
    assert isinstance(model, BaCLIP) and not model.training
    assert model.config["cce"]["num_blocks"] == 2 and len(model.cce.blocks) == 2
    assert model.config["mrem"] == {"mode": "text_to_vision", "num_heads": 4}
    assert model.backbone.image_size == SIZE and model.config["backbone"]["pretrained"] is None
    assert model.predict(torch.rand(3, SIZE, SIZE), CANDIDATES).mask.shape == (SIZE, SIZE)

    with pytest.raises(ValueError, match="unknown model 'baclip_tiny'; choose one of baclip,"):
        create_model("baclip_tiny")
    with pytest.raises(ValueError, match="unknown option.*num_block.*cce"):
        create_model("baclip_micro", clip_checkpoint=None, num_block=2)
    with pytest.raises(ValueError, match="pass clip_checkpoint="):
        create_model("baclip_micro")
    with pytest.raises(ValueError, match="unknown backbone 'vit_xxl'"):
        create_model("baclip_micro", backbone="vit_xxl")


def _api_section() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray
) -> None:
    blocks = _api_section()
    assert len(blocks) == 2 and "BaCLIP.from_pretrained" in blocks[0]
    _write_run(tmp_path / "runs" / "train" / "micro", "final")
    Image.fromarray(np.ascontiguousarray(rgb[:, :28])).save(tmp_path / "photo.jpg")
    mask = np.zeros((SIZE, 28), dtype=np.uint8)
    mask[8:20, 10:24] = 255
    write_png(tmp_path / "photo_mask.png", mask)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace["result"], Prediction)
    assert namespace["result"].mask.shape == (SIZE, 28)
    assert len(namespace["results"]) == 2 and list(namespace["others"].class_probs) == [
        "crab",
        "moth",
    ]
    assert (tmp_path / "my-baclip" / "README.md").is_file()
