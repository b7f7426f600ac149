"""Quality of a synthetic set: FID and KID through torchmetrics with a pluggable feature
extractor, foreground preservation, mask integrity, a camouflage score, a background-texture
distance to real backgrounds, a seam/halo score at the object boundary and, with a segmenter,
the object expansion (docs/generation.md)."""

from __future__ import annotations

import importlib
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from generation.base import Placement, place_object
from generation.outpaint.expansion import Segmenter, object_expansion
from ovcamo.checkpoint import load_torch_file
from ovcamo.data import DataPaths, Record, load_sample, load_sample_info, resolve_records
from ovcamo.data.io import read_gray, read_image

INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"


class SmallFeatureExtractor(nn.Module):
    """A fixed, randomly initialised conv net (seeded) as FID/KID feature extractor.

    Random-network features rank image sets by distribution shift without any download; their
    absolute values are not comparable with Inception FID. Input float ``B×3×H×W`` in [0, 1],
    output ``B×num_features`` (mean and standard deviation of each last-layer channel).
    """

    def __init__(self, width: int = 32, seed: int = 0, image_size: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, width // 2, width, width]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:], strict=False)
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / fan_in**0.5)
                conv.bias.zero_()
        self.image_size = image_size
        self.num_features = 2 * width
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(
            x.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True
        )
        x = (x - 0.5) / 0.25
        for conv in self.convs:
            x = torch.relu(conv(x))
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


class InceptionFeatureExtractor(nn.Module):
    """torchvision Inception-v3 pool features (2048-d) from a local weights file.

    Input float ``B×3×H×W`` in [0, 1] (resized to 299), output ``B×2048``.
    """

    def __init__(self, weights: str | os.PathLike | None):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(os.path.expanduser(str(weights))) if weights else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"Inception-v3 weights not found at {path}. FID/KID with Inception features needs "
                f"torchvision's ImageNet Inception-v3 weights, which cannot be downloaded here: fetch "
                f"{INCEPTION_URL} on a connected machine, copy it over and pass its path as "
                "quality.inception_weights=/path/to/inception_v3_google-0cc3c7bd.pth (or use "
                "quality.extractor=small, a seeded random-feature network that needs no file)."
            )
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        net.load_state_dict(load_torch_file(path, "Inception-v3 weights"))
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.num_features = 2048
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x.float(), size=(299, 299), mode="bilinear", antialias=True)
        return self.net((x - self.mean) / self.std)


def build_feature_extractor(name: str = "small", **kwargs: Any) -> nn.Module:
    """``small`` (:class:`SmallFeatureExtractor`), ``inception`` (needs ``weights=``), or
    ``"module.path:callable"`` returning an ``nn.Module`` with a ``num_features`` attribute."""
    if name == "small":
        return SmallFeatureExtractor(**kwargs)
    if name == "inception":
        return InceptionFeatureExtractor(kwargs.get("weights"))
    if ":" in name:
        module, func = name.split(":", 1)
        return getattr(importlib.import_module(module), func)(**kwargs)
    raise KeyError(
        f"quality.extractor must be 'small', 'inception' or 'module:callable', got {name!r}"
    )


def _batches(images: Iterable[np.ndarray], size: int, batch: int) -> Iterable[torch.Tensor]:
    buf: list[np.ndarray] = []
    for im in images:
        buf.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA))
        if len(buf) == batch:
            yield torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 255.0
            buf = []
    if buf:
        yield torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2).float() / 255.0


def image_features(
    images: Iterable[np.ndarray],
    extractor: nn.Module,
    *,
    image_size: int = 128,
    batch_size: int = 16,
) -> torch.Tensor:
    """The extractor's features ``N×F`` of uint8 ``H×W×3`` images (any sizes; resized to
    ``image_size`` before the extractor's own resize)."""
    feats = [extractor(x) for x in _batches(images, image_size, batch_size)]
    return torch.cat(feats) if feats else torch.zeros(0, extractor.num_features)


def fid_kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int = 50, kid_subsets: int = 100
) -> dict[str, float]:
    """FID and KID between two feature sets ``N×F`` and ``M×F`` (torchmetrics). KID's subset size
    is capped at the smaller set. Returns ``{"fid", "kid_mean", "kid_std", "n_real", "n_fake"}``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = {"real": real.shape[0], "fake": fake.shape[0]}
    if min(n.values()) < 2:
        raise ValueError(f"FID needs at least two images per set, got {n}")
    identity = _Identity(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity)
    kid = KernelInceptionDistance(
        feature=identity, subsets=kid_subsets, subset_size=min(kid_subset_size, *n.values())
    )
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": n["real"],
        "n_fake": n["fake"],
    }


def fid_kid(
    real: Iterable[np.ndarray],
    fake: Iterable[np.ndarray],
    extractor: nn.Module,
    *,
    kid_subset_size: int = 50,
    kid_subsets: int = 100,
    image_size: int = 128,
    batch_size: int = 16,
) -> dict[str, float]:
    """FID and KID between two sets of uint8 ``H×W×3`` images (:func:`image_features`, then
    :func:`fid_kid_from_features`)."""
    kw = {"image_size": image_size, "batch_size": batch_size}
    return fid_kid_from_features(
        image_features(real, extractor, **kw),
        image_features(fake, extractor, **kw),
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
    )


class _Identity(nn.Module):
    """Passes precomputed features to FID/KID, so each image goes through the extractor once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def foreground_preservation(image: np.ndarray, mask: np.ndarray, expected: np.ndarray) -> float:
    """Share of object pixels (``mask``) of ``image`` identical, in all channels, to ``expected``."""
    if not mask.any():
        return float("nan")
    return float((image[mask] == expected[mask]).all(-1).mean())


def mask_integrity(mask: np.ndarray, expected: np.ndarray) -> float:
    """IoU of a written mask with the mask the object must have (1.0 = exact)."""
    union = np.logical_or(mask, expected).sum()
    return float(np.logical_and(mask, expected).sum() / union) if union else float("nan")


def _ring(mask: np.ndarray, width: int | None) -> np.ndarray:
    if width is None:
        width = max(4, round(0.25 * np.sqrt(mask.sum())))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask


def _bhattacharyya(a: np.ndarray, b: np.ndarray) -> float:
    a = a / max(a.sum(), 1e-12)
    b = b / max(b.sum(), 1e-12)
    return float(np.sqrt(a * b).sum())


def camouflage_score(
    image: np.ndarray, mask: np.ndarray, ring_width: int | None = None, bins: int = 8
) -> float:
    """How alike the object and its surroundings are, in [0, 1] (1 = same statistics).

    Mean of two Bhattacharyya coefficients between the object and a ring of background around it
    (width ``0.25·√area`` by default): joint Lab colour histograms (``bins``³) and histograms of
    gradient magnitude (16 bins), the colour and texture cues camouflage hides.
    """
    ring = _ring(mask, ring_width)
    if not mask.any() or not ring.any():
        return float("nan")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    q = (lab.astype(np.int32) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    colour = _bhattacharyya(
        np.bincount(code[mask], minlength=bins**3).astype(float),
        np.bincount(code[ring], minlength=bins**3).astype(float),
    )
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    edges = np.linspace(0, 400, 17)
    texture = _bhattacharyya(
        np.histogram(np.clip(mag[mask], 0, 399), edges)[0].astype(float),
        np.histogram(np.clip(mag[ring], 0, 399), edges)[0].astype(float),
    )
    return 0.5 * (colour + texture)


def _distance_to_object(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest object pixel (0 on the object)."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


#: Gaussian scales (px) whose differences split the luminance into four texture bands.
TEXTURE_SIGMAS = (1.0, 2.0, 4.0, 8.0)


def background_texture_descriptor(
    image: np.ndarray, mask: np.ndarray, margin: int = 3
) -> np.ndarray:
    """Ten numbers that describe an image's background: ``[log₁₀ E₁…E₄, μ_L, μ_a, μ_b, σ_L, σ_a,
    σ_b]``, or NaNs when no background pixel is left.

    The background is every pixel more than ``margin`` px from the object (``mask``), so the
    boundary does not count. ``E_k`` is the mean energy, over the background, of the luminance
    band between Gaussian blurs of scale ``σ_{k−1}`` and ``σ_k`` (``σ₀ = 0``, then
    :data:`TEXTURE_SIGMAS`): fine grain down to coarse blotches, which a flat or blurred field
    lacks. ``μ``/``σ`` are the mean and spread of the background's Lab colour (OpenCV's 8-bit Lab).
    """
    background = _distance_to_object(mask) > margin
    if not background.any():
        return np.full(10, np.nan)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    lum = lab[..., 0]
    blurred = [lum] + [cv2.GaussianBlur(lum, (0, 0), s) for s in TEXTURE_SIGMAS]
    energy = [
        np.log10(np.mean((a - b)[background] ** 2) + 1e-3)
        for a, b in zip(blurred[:-1], blurred[1:], strict=True)
    ]
    pixels = lab[background]
    return np.concatenate([energy, pixels.mean(0), pixels.std(0)])


def background_texture_distance(
    descriptors: np.ndarray,
    reference: np.ndarray,
    classes: Sequence[str] | None = None,
    reference_classes: Sequence[str] | None = None,
) -> float:
    """How far a set's background descriptors (``N×10``, :func:`background_texture_descriptor`)
    lie from a real set's (``M×10``): the mean over the ten dimensions of the 1-D Wasserstein
    distance between the two sets' values, in units of the real set's standard deviation.

    0 means the same distributions; a real sample of the same size scores its sampling noise.
    With class names given, the real descriptors are weighted so that each class weighs what it
    weighs in the compared set, so a set of rare classes is compared with those classes' real
    backgrounds.
    """
    from scipy.stats import wasserstein_distance

    a = descriptors[~np.isnan(descriptors).any(1)]
    keep = ~np.isnan(reference).any(1)
    b = reference[keep]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    weights = np.ones(len(b))
    if classes is not None and reference_classes is not None:
        names = np.asarray(reference_classes)[keep]
        share = {c: n / len(classes) for c, n in Counter(classes).items()}
        per_class = {c: int((names == c).sum()) for c in share}
        weights = np.array([share.get(c, 0.0) / max(per_class.get(c, 0), 1) for c in names])
        if weights.sum() == 0:
            weights = np.ones(len(b))
    mean = np.average(b, axis=0, weights=weights)
    std = np.sqrt(np.average((b - mean) ** 2, axis=0, weights=weights)) + 1e-6
    return float(
        np.mean(
            [
                wasserstein_distance(a[:, k], b[:, k], v_weights=weights) / std[k]
                for k in range(b.shape[1])
            ]
        )
    )


def seam_halo_score(image: np.ndarray, mask: np.ndarray, width: int | None = None) -> float:
    """How much the background next to the object differs from the background a little farther
    out (0 = not at all), or NaN when either ring is empty.

    Two rings of background around the object: the near ring, ``1…w`` px from it, and the far
    ring, ``2w…4w`` px (``w = max(3, round(0.025·min(H, W)))`` by default). The score adds

    - the shift of the mean Lab colour from the far ring to the near ring, in units of the far
      ring's spread (``‖μ_near − μ_far‖ / (‖σ_far‖ + 1)``): a glow, shadow or smear of the
      object's colour around it;
    - ``|log((g_near + 1)/(g_far + 1))|``, with ``g`` the mean Sobel gradient magnitude of the
      luminance over pixels ``2…w`` px (near) or ``2w…4w`` px (far) from the object, so the
      3×3 filter never reaches the object itself: a ring that is blurrier or sharper than the
      rest of the background.

    A real scene, whose background is the same texture up to the object's edge, scores its own
    small value (its sampling noise); pasted objects with halos or seams score more.
    """
    h, w_img = mask.shape
    w = width or max(3, round(0.025 * min(h, w_img)))
    d = _distance_to_object(mask)
    near, far = (d >= 1) & (d <= w), (d >= 2 * w) & (d <= 4 * w)
    near_g, far_g = near & (d >= 2), far
    if not near_g.any() or not far.any():
        return float("nan")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    colour = np.linalg.norm(lab[near].mean(0) - lab[far].mean(0)) / (
        np.linalg.norm(lab[far].std(0)) + 1.0
    )
    lum = lab[..., 0]
    grad = np.hypot(cv2.Sobel(lum, cv2.CV_32F, 1, 0), cv2.Sobel(lum, cv2.CV_32F, 0, 1))
    texture = abs(np.log((grad[near_g].mean() + 1.0) / (grad[far_g].mean() + 1.0)))
    return float(colour + texture)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.isnan(arr).all() else float("nan")


def _real_reference(
    records: Sequence[Record], extractor: nn.Module | None
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Background descriptors ``N×10`` and, with an extractor, features ``N×F`` of real samples,
    reading each image once."""
    descriptors: list[np.ndarray] = []

    def images() -> Iterator[np.ndarray]:
        for r in records:
            loaded = load_sample(r)
            descriptors.append(background_texture_descriptor(loaded["image"], loaded["mask"]))
            yield loaded["image"]

    if extractor is None:
        deque(images(), maxlen=0)
        return np.array(descriptors), None
    features = image_features(images(), extractor)
    return np.array(descriptors), features


def evaluate_set(
    root: str | os.PathLike,
    source: DataPaths,
    extractor: nn.Module | None = None,
    *,
    max_real: int | None = None,
    kid_subset_size: int = 50,
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Score the synthetic set at ``root`` against the dataset its sources came from.

    FID/KID and the background-texture distance compare the synthetic images with the source's
    train images (all of them, or the first ``max_real``; the texture distance weighs real
    classes as the set does). Each comes with ``*_source``, the same measure of the samples'
    source images (one per sample, so the same size and class mix): the value real data scores.
    Foreground preservation and mask integrity rebuild each sample's expected object from its
    source and recorded ``placement``; samples without one (methods that draw new objects) are
    left out of those two. The camouflage and seam/halo scores are reported for the synthetic
    images and their sources; so is, with a ``segmenter``, the object expansion (what it finds
    beyond each written mask; on the sources, what it finds beyond the real masks: its own
    spill, the value an image that grew nothing scores).
    """
    root = Path(root)
    synth = DataPaths.from_paths_json(root / "paths.json")
    samples = load_sample_info(synth.sample_info)
    records: dict[str, Record] = {}
    for split in ("train", "test"):
        recs, _ = resolve_records(source, split, check_files="none")  # type: ignore[arg-type]
        records.update({r.unique_id: r for r in recs})
    fg, iou, binary, camo, camo_src, seam, seam_src = [], [], [], [], [], [], []
    grown: list[float] = []
    grown_src: list[float] = []
    fake: list[np.ndarray] = []
    src_images: list[np.ndarray] = []
    desc, desc_src, classes, classes_src = [], [], [], []
    seen_sources: set[str] = set()
    for s in samples:
        image = read_image(synth.train_image_dir / s.image_name)
        raw_mask = read_gray(synth.train_mask_dir / s.mask_name)
        binary.append(bool(np.isin(raw_mask, (0, 255)).all()))
        mask = raw_mask > 0
        fake.append(image)
        camo.append(camouflage_score(image, mask))
        seam.append(seam_halo_score(image, mask))
        desc.append(background_texture_descriptor(image, mask))
        classes.append(s.base_class)
        if segmenter is not None:
            grown.append(object_expansion(image, mask, segmenter, s.base_class))
        src = records.get(str(s.extra.get("source_unique_id")))
        if src is None:
            continue
        loaded = load_sample(src)
        src_images.append(loaded["image"])
        desc_src.append(background_texture_descriptor(loaded["image"], loaded["mask"]))
        classes_src.append(src.class_name)
        if src.unique_id not in seen_sources:
            seen_sources.add(src.unique_id)
            camo_src.append(camouflage_score(loaded["image"], loaded["mask"]))
            seam_src.append(seam_halo_score(loaded["image"], loaded["mask"]))
            if segmenter is not None:
                grown_src.append(
                    object_expansion(loaded["image"], loaded["mask"], segmenter, src.class_name)
                )
        if "placement" in s.extra:
            placement = Placement.from_json(s.extra["placement"])
            expected_pixels, expected_mask = place_object(
                loaded["image"], loaded["mask"], placement
            )
            fg.append(foreground_preservation(image, expected_mask, expected_pixels))
            iou.append(mask_integrity(mask, expected_mask))
    real_records = [r for r in records.values() if r.split == "train"][:max_real]
    real_desc, real_feats = _real_reference(real_records, extractor if len(fake) >= 2 else None)
    real_classes = [r.class_name for r in real_records]
    out: dict[str, Any] = {
        "n": len(samples),
        "foreground_preservation": _nanmean(fg),
        "foreground_exact": float(np.mean([v == 1.0 for v in fg])) if fg else float("nan"),
        "mask_iou": _nanmean(iou),
        "mask_binary": float(np.mean(binary)) if binary else float("nan"),
        "camouflage": _nanmean(camo),
        "camouflage_source": _nanmean(camo_src),
        "seam_halo": _nanmean(seam),
        "seam_halo_source": _nanmean(seam_src),
    }
    if segmenter is not None:
        out["object_expansion"] = _nanmean(grown)
        out["object_expansion_source"] = _nanmean(grown_src)
    for key, d, c in (("", desc, classes), ("_source", desc_src, classes_src)):
        out[f"background_texture{key}"] = (
            background_texture_distance(np.array(d), real_desc, c, real_classes)
            if d and len(real_desc)
            else float("nan")
        )
    if real_feats is not None:
        kw = {"kid_subset_size": kid_subset_size}
        out.update(fid_kid_from_features(real_feats, image_features(fake, extractor), **kw))
        if len(src_images) >= 2:
            ref = fid_kid_from_features(real_feats, image_features(src_images, extractor), **kw)
            out.update({f"{k}_source": ref[k] for k in ("fid", "kid_mean", "kid_std")})
    return out
