from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from generation_data import ellipse, textured, write_dataset
from scipy import linalg

from generation.quality import (
    InceptionFeatureExtractor,
    SmallFeatureExtractor,
    background_texture_descriptor,
    background_texture_distance,
    build_feature_extractor,
    camouflage_score,
    evaluate_set,
    fid_kid,
    foreground_preservation,
    image_features,
    mask_integrity,
    seam_halo_score,
)
from ovcamo.data import DataPaths, load_sample_info
from ovcamo.data.io import read_image, read_mask
from ovcamo.data.ovcamo_format import resolve_records
from ovcamo.data.samples import load_sample


def images(n: int, colour, seed: int = 0, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [textured(rng, size, size, np.asarray(colour, float)) for _ in range(n)]


def reference_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_the_closed_form_on_the_extractor_features():
    ext = SmallFeatureExtractor(width=8)
    real, fake = images(24, (100, 120, 60), 0), images(24, (130, 100, 70), 1)
    out = fid_kid(real, fake, ext, image_size=48, kid_subset_size=10, kid_subsets=20)

    def feats(ims):
        x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255
        return ext(x)

    assert out["fid"] == pytest.approx(reference_fid(feats(real), feats(fake)), rel=1e-3, abs=1e-4)
    assert out["n_real"] == out["n_fake"] == 24


def test_fid_and_kid_grow_with_distribution_shift():
    ext = SmallFeatureExtractor(width=8)
    real = images(20, (100, 120, 60), 0)
    near = fid_kid(real, images(20, (100, 120, 60), 1), ext, image_size=48, kid_subset_size=10)
    far = fid_kid(real, images(20, (200, 40, 150), 2), ext, image_size=48, kid_subset_size=10)
    assert far["fid"] > 5 * near["fid"] and far["kid_mean"] > near["kid_mean"]


def test_fid_needs_two_images():
    with pytest.raises(ValueError, match="two images"):
        fid_kid(images(1, (0, 0, 0)), images(3, (0, 0, 0)), SmallFeatureExtractor(width=8))


def test_small_extractor_is_deterministic():
    x = torch.rand(2, 3, 40, 40)
    a, b = SmallFeatureExtractor(seed=1), SmallFeatureExtractor(seed=1)
    torch.testing.assert_close(a(x), b(x))
    assert a(x).shape == (2, a.num_features)
    assert not torch.allclose(a(x), SmallFeatureExtractor(seed=2)(x))


def test_missing_inception_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception_v3_google"):
        build_feature_extractor("inception", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(KeyError):
        build_feature_extractor("clip")


def test_inception_extractor_loads_a_local_torchvision_file(tmp_path):
    from torchvision.models import inception_v3

    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    ext = InceptionFeatureExtractor(path)
    assert ext(torch.rand(1, 3, 64, 64)).shape == (1, 2048)


def test_foreground_preservation_and_mask_integrity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)
    m = ellipse(20, 20, 10, 10, 5, 5)
    assert foreground_preservation(img, m, img) == 1.0
    other = img.copy()
    other[10, 10, 1] ^= 1
    assert foreground_preservation(other, m, img) == pytest.approx(1 - 1 / m.sum())
    assert mask_integrity(m, m) == 1.0
    shifted = np.roll(m, 1, axis=1)
    assert 0.5 < mask_integrity(shifted, m) < 1.0
    assert np.isnan(foreground_preservation(img, np.zeros_like(m), img))


def test_camouflage_score_separates_hidden_and_salient_objects():
    rng = np.random.default_rng(0)
    m = ellipse(64, 64, 32, 32, 14, 18)
    hidden = textured(rng, 64, 64, np.array([90.0, 120.0, 60.0]))
    salient = hidden.copy()
    salient[m] = (230, 30, 200)
    assert camouflage_score(hidden, m) > 0.8
    assert camouflage_score(salient, m) < 0.3
    assert np.isnan(camouflage_score(hidden, np.zeros_like(m)))


def _scenes(n: int, seed: int, size: int = 64, difficulty: float = 0.5):
    """Micro-world camouflaged scenes of two classes: the real data the metrics compare with."""
    from ovcamo.data.world_render import class_style, render_camouflaged

    out = []
    for i in range(n):
        style = class_style(("mantis", "owl")[i % 2], i % 2, 0)
        out.append(
            (
                render_camouflaged(style, size, difficulty, np.random.default_rng(seed * 1000 + i)),
                style.name,
            )
        )
    return out


def _with_background(scene, background: np.ndarray):
    return np.where(scene.mask[..., None], scene.image, background), scene.mask


def test_background_texture_distance_sees_flat_blurred_and_foreign_backgrounds():
    import cv2

    real, test = _scenes(40, 0), _scenes(12, 1)
    ref = np.array([background_texture_descriptor(sc.image, sc.mask) for sc, _ in real])
    ref_classes = [c for _, c in real]
    classes = [c for _, c in test]

    def distance(make) -> float:
        d = np.array([background_texture_descriptor(*make(sc)) for sc, _ in test])
        return background_texture_distance(d, ref, classes, ref_classes)

    like_real = distance(lambda sc: (sc.image, sc.mask))
    blurred = distance(
        lambda sc: _with_background(sc, cv2.GaussianBlur(sc.background_layer, (0, 0), 2))
    )
    flat = distance(
        lambda sc: _with_background(
            sc, np.broadcast_to(sc.background_layer.mean((0, 1)).astype(np.uint8), sc.image.shape)
        )
    )
    object_texture = distance(lambda sc: _with_background(sc, sc.object_layer))
    assert like_real < 1.5
    for worse in (blurred, flat, object_texture):
        assert worse > 3 * like_real and worse > 2.5
    assert flat > blurred  # no texture at all is farther than a softened one
    # the real classes are weighted to the compared set's mix
    only_owl = [i for i, c in enumerate(classes) if c == "owl"]
    d_owl = np.array(
        [background_texture_descriptor(test[i][0].image, test[i][0].mask) for i in only_owl]
    )
    weighted = background_texture_distance(d_owl, ref, ["owl"] * len(only_owl), ref_classes)
    assert weighted < background_texture_distance(d_owl, ref)
    assert np.isnan(background_texture_descriptor(test[0][0].image, np.ones((64, 64), bool))).all()


def test_seam_halo_score_sees_halos_and_smeared_rings():
    import cv2

    from generation.quality import _distance_to_object

    # The faintest rim shading and shadow the world draws: the real boundary is nearly seamless.
    test = [sc for sc, _ in _scenes(12, 1, difficulty=1.0)]

    def score(make) -> float:
        return float(np.nanmean([seam_halo_score(*make(sc)) for sc in test]))

    def halo(sc, amount):
        ring = (_distance_to_object(sc.mask) >= 1) & (_distance_to_object(sc.mask) <= 3)
        image = sc.image.astype(np.int32)
        image[ring] += amount
        return np.clip(image, 0, 255).astype(np.uint8), sc.mask

    def smeared(sc):
        d = _distance_to_object(sc.mask)
        ring = (d >= 1) & (d <= 4)
        image = sc.image.copy()
        image[ring] = cv2.GaussianBlur(sc.image, (0, 0), 1.5)[ring]
        return image, sc.mask

    # The world's own faint shadow gives real scenes a small score; added halos give far more.
    real = score(lambda sc: (sc.image, sc.mask))
    assert real < 0.6
    assert score(lambda sc: halo(sc, 15)) > 2.5 * real
    assert score(lambda sc: halo(sc, 40)) > score(lambda sc: halo(sc, 15))
    assert score(smeared) > 3 * real
    assert np.isnan(seam_halo_score(test[0].image, np.ones((64, 64), bool)))


def test_evaluate_set_on_a_classic_set(tmp_path):
    from test_generation_writer import cfg_for

    from generation.run import generate

    write_dataset(tmp_path / "ds")
    out = generate(
        cfg_for(
            tmp_path / "ds",
            tmp_path / "syn",
            "planner.rule=k_rarest",
            "planner.k=2",
            "planner.per_class=3",
        )
    )
    source = DataPaths.from_paths_json(tmp_path / "ds" / "paths.json")
    q = evaluate_set(out, source, SmallFeatureExtractor(width=8), kid_subset_size=4)
    assert q["n"] == 6
    assert q["foreground_preservation"] == 1.0 and q["foreground_exact"] == 1.0
    assert q["mask_iou"] == 1.0 and q["mask_binary"] == 1.0
    # Camouflage and FID redone from the files: the set's images against the source's 13 train
    # images, and the samples' source images (one per sample; each source once for camouflage).
    synth = DataPaths.from_paths_json(out / "paths.json")
    samples = load_sample_info(synth.sample_info)
    fake = [read_image(synth.train_image_dir / s.image_name) for s in samples]
    masks = [read_mask(synth.train_mask_dir / s.mask_name) for s in samples]
    records = {r.unique_id: r for r in resolve_records(source, "train", check_files="none")[0]}
    sources = [load_sample(records[s.extra["source_unique_id"]]) for s in samples]
    unique = {s.extra["source_unique_id"]: src for s, src in zip(samples, sources, strict=True)}
    assert q["camouflage"] == pytest.approx(np.mean(list(map(camouflage_score, fake, masks))))
    assert q["camouflage_source"] == pytest.approx(
        np.mean([camouflage_score(x["image"], x["mask"]) for x in unique.values()])
    )
    ext = SmallFeatureExtractor(width=8)
    real = image_features([load_sample(r)["image"] for r in records.values()], ext)
    assert q["n_real"] == len(real) == 13
    for key, images in (("fid", fake), ("fid_source", [x["image"] for x in sources])):
        expected = reference_fid(real, image_features(images, ext))
        assert q[key] == pytest.approx(expected, rel=1e-3, abs=1e-4), key
    for key in ("background_texture", "seam_halo"):
        assert np.isfinite(q[key]) and np.isfinite(q[f"{key}_source"]), key


def grow_by_two(checkpoint=None):
    """A stand-in segmenter (``quality.segmenter=test_generation_quality:grow_by_two``): the
    object mask dilated by two pixels, so the expansion is the 2-px ring's share of the image."""

    def segment(image, class_name, object_mask):
        kernel = np.ones((5, 5), np.uint8)
        return cv2.dilate(object_mask.astype(np.uint8), kernel).astype(bool)

    return segment


def ring_share(mask: np.ndarray) -> float:
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return float((grown & ~mask).sum() / mask.size)


def test_object_expansion_of_a_set_and_of_its_sources(tmp_path):
    from test_generation_writer import cfg_for

    from generation.outpaint.expansion import build_segmenter
    from generation.run import generate

    write_dataset(tmp_path / "ds")
    out = generate(cfg_for(tmp_path / "ds", tmp_path / "syn", "planner.rule=k_rarest"))
    source = DataPaths.from_paths_json(tmp_path / "ds" / "paths.json")
    segmenter = build_segmenter("test_generation_quality:grow_by_two")
    q = evaluate_set(out, source, segmenter=segmenter)
    synth = DataPaths.from_paths_json(out / "paths.json")
    masks = [
        read_mask(synth.train_mask_dir / s.mask_name) for s in load_sample_info(synth.sample_info)
    ]
    assert q["object_expansion"] == pytest.approx(np.mean([ring_share(m) for m in masks]))
    assert 0 < q["object_expansion_source"] < 0.2
    assert "object_expansion" not in evaluate_set(out, source)
    with pytest.raises(KeyError, match="quality.segmenter"):
        build_segmenter("sam2")
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64.pth"):
        build_segmenter("sam", tmp_path / "sam.pth")
    with pytest.raises(FileNotFoundError, match="checkpoints/best"):
        build_segmenter("baclip", tmp_path)


def test_ovcamo_generate_measures_object_expansion_with_a_baclip_checkpoint(tmp_path):
    """``ovcamo-generate quality.enabled=true quality.segmenter=baclip`` on a micro generator: the
    project's segmenter (a micro BaCLIP checkpoint) reads the set and its sources."""
    from _engine_data import write_tiny_checkpoint
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from test_generation_diffumatting_micro import TINY_WORLD, tiny_generator_cfg

    from generation.run import generate
    from ovcamo.cli import CONF_DIR

    checkpoint = write_tiny_checkpoint(tmp_path / "baclip")
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(
            "generate",
            overrides=[
                "generator=bgaug_micro",
                f"cache_dir={tmp_path / 'cache'}",
                f"out_dir={tmp_path / 'out'}",
                "progress=false",
                "device=cpu",
                "planner.per_class=2",
                "quality.enabled=true",
                "quality.kid_subset_size=2",
                "quality.segmenter=baclip",
                f"quality.segmenter_checkpoint={checkpoint}",
            ],
        )
    cfg.data.world = OmegaConf.merge(cfg.data.world, TINY_WORLD)
    cfg.generator = tiny_generator_cfg("bgaug_micro")
    root = generate(cfg)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["written"] >= 2
    quality = summary["quality"]
    # What that checkpoint's BaCLIP finds beyond each written mask, redone on the set's files.
    from generation.outpaint.expansion import build_segmenter, object_expansion

    segmenter = build_segmenter("baclip", checkpoint)
    synth = DataPaths.from_paths_json(root / "paths.json")
    samples = load_sample_info(synth.sample_info)
    grown = [
        object_expansion(
            read_image(synth.train_image_dir / s.image_name),
            read_mask(synth.train_mask_dir / s.mask_name),
            segmenter,
            s.base_class,
        )
        for s in samples
    ]
    assert quality["object_expansion"] == pytest.approx(np.mean(grown), abs=1e-9)
    records = resolve_records(DataPaths(**summary["data"]), "train", check_files="none")[0]
    by_id = {r.unique_id: r for r in records}
    sources = [load_sample(by_id[u]) for u in {s.extra["source_unique_id"]: 0 for s in samples}]
    spill = [object_expansion(x["image"], x["mask"], segmenter, x["class_name"]) for x in sources]
    assert quality["object_expansion_source"] == pytest.approx(np.mean(spill), abs=1e-9)
