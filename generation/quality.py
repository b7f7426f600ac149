"""Quality of a synthetic set (DESIGN §7): FID and KID through torchmetrics with a pluggable
feature extractor, foreground preservation, mask integrity and a camouflage score."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from generation.base import Placement, place_object
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
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
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
    """FID and KID between two sets of uint8 ``H×W×3`` images (any sizes; resized to
    ``image_size`` before the extractor's own resize). KID's subset size is capped at the smaller
    set. Returns ``{"fid", "kid_mean", "kid_std", "n_real", "n_fake"}``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    n = {"real": 0, "fake": 0}
    feats: dict[str, list[torch.Tensor]] = {"real": [], "fake": []}
    for key, images in (("real", real), ("fake", fake)):
        for x in _batches(images, image_size, batch_size):
            fid.update(x, real=key == "real")
            feats[key].append(extractor(x))
            n[key] += x.shape[0]
    if min(n.values()) < 2:
        raise ValueError(f"FID needs at least two images per set, got {n}")
    subset = min(kid_subset_size, n["real"], n["fake"])
    kid = KernelInceptionDistance(
        feature=_Identity(extractor.num_features), subsets=kid_subsets, subset_size=subset
    )
    kid.update(torch.cat(feats["real"]), real=True)
    kid.update(torch.cat(feats["fake"]), real=False)
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": n["real"],
        "n_fake": n["fake"],
    }


class _Identity(nn.Module):
    """Passes precomputed features to KID, so each image goes through the extractor once."""

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


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.isnan(arr).all() else float("nan")


def evaluate_set(
    root: str | os.PathLike,
    source: DataPaths,
    extractor: nn.Module | None = None,
    *,
    max_real: int | None = None,
    kid_subset_size: int = 50,
) -> dict[str, Any]:
    """Score the synthetic set at ``root`` against the dataset its sources came from.

    FID/KID compare the synthetic images with the source's train images (all of them, or the
    first ``max_real``). Foreground preservation and mask integrity rebuild each sample's expected
    object from its source and recorded ``placement``; samples without one (methods that draw new
    objects) are left out of those two. The camouflage score is reported for the synthetic
    images and, as the reference, for their source images.
    """
    root = Path(root)
    synth = DataPaths.from_paths_json(root / "paths.json")
    samples = load_sample_info(synth.sample_info)
    records: dict[str, Record] = {}
    for split in ("train", "test"):
        recs, _ = resolve_records(source, split, check_files="none")  # type: ignore[arg-type]
        records.update({r.unique_id: r for r in recs})
    fg, iou, binary, camo, camo_src = [], [], [], [], []
    fake: list[np.ndarray] = []
    seen_sources: set[str] = set()
    for s in samples:
        image = read_image(synth.train_image_dir / s.image_name)
        raw_mask = read_gray(synth.train_mask_dir / s.mask_name)
        binary.append(bool(np.isin(raw_mask, (0, 255)).all()))
        mask = raw_mask > 0
        fake.append(image)
        camo.append(camouflage_score(image, mask))
        src = records.get(str(s.extra.get("source_unique_id")))
        if src is None:
            continue
        loaded = load_sample(src)
        if src.unique_id not in seen_sources:
            seen_sources.add(src.unique_id)
            camo_src.append(camouflage_score(loaded["image"], loaded["mask"]))
        if "placement" in s.extra:
            placement = Placement.from_json(s.extra["placement"])
            expected_pixels, expected_mask = place_object(
                loaded["image"], loaded["mask"], placement
            )
            fg.append(foreground_preservation(image, expected_mask, expected_pixels))
            iou.append(mask_integrity(mask, expected_mask))
    out: dict[str, Any] = {
        "n": len(samples),
        "foreground_preservation": _nanmean(fg),
        "foreground_exact": float(np.mean([v == 1.0 for v in fg])) if fg else float("nan"),
        "mask_iou": _nanmean(iou),
        "mask_binary": float(np.mean(binary)) if binary else float("nan"),
        "camouflage": _nanmean(camo),
        "camouflage_source": _nanmean(camo_src),
    }
    if extractor is not None and len(fake) >= 2:
        real_records = [r for r in records.values() if r.split == "train"][:max_real]
        out.update(
            fid_kid(
                (load_sample(r)["image"] for r in real_records),
                fake,
                extractor,
                kid_subset_size=kid_subset_size,
            )
        )
    return out
