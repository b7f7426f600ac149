"""Training data-loader throughput (images/s) with the paper transforms at 384×384.

Reads through exactly what ``ovcamo-train`` uses (``MixedDataset`` + ``MixedBatchSampler`` +
``TrainTransform`` + ``collate_train``) for 0, 1 and 2 worker processes. Without ``--data`` it
writes a throw-away OVCamo-format set of JPEG images at OVCamo-like size (default 1024×768).

    python benchmarks/data.py                      # table on stdout
    python benchmarks/data.py --data DIR --json out.json --workers 0,1,2,4
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ovcamo.data import ClassInfo, DataPaths, SampleInfo, write_class_info, write_sample_info
from ovcamo.data.io import atomic_write_json, write_png
from ovcamo.data.mixing import MixedBatchSampler, MixedDataset, load_sources
from ovcamo.data.ovcamo_format import STANDARD_LAYOUT
from ovcamo.data.transforms import TrainTransform
from ovcamo.engine.train import collate_train


def write_benchmark_set(root: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """``n`` JPEG images (smooth noise, so they compress like photographs) with PNG masks."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        uid = f"{i:06d}_snow leopard"
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        (root / "train" / "image").mkdir(parents=True, exist_ok=True)
        image.save(root / "train" / "image" / f"{uid}.jpg", quality=90)
        yy, xx = np.mgrid[:height, :width]
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        mask = ((yy - cy) ** 2 / (0.2 * height) ** 2 + (xx - cx) ** 2 / (0.2 * width) ** 2) < 1
        write_png(root / "train" / "mask" / f"{uid}.png", mask.astype(np.uint8) * 255)
        samples.append(SampleInfo(uid, "snow leopard", f"{uid}.jpg", f"{uid}.png", i))
    for d in ("test/image", "test/mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    write_class_info(
        root / "class_info.json", [ClassInfo("snow leopard", 0, "animal", (), "train", n)]
    )
    write_sample_info(root / "sample_info.json", samples)
    atomic_write_json(root / "paths.json", STANDARD_LAYOUT)
    return root


def measure(paths: DataPaths, workers: int, batch_size: int, image_size: int) -> dict:
    sources = load_sources({"holdout_fraction": 0.0}, paths)
    sampler = MixedBatchSampler([len(sources[0].records)], [1.0], batch_size, seed=0)
    loader = DataLoader(
        MixedDataset(sources, TrainTransform(image_size=image_size)),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_train,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    first = next(it)  # worker start-up and the first batch are not counted
    n_images, t0 = 0, time.perf_counter()
    for batch in it:
        n_images += batch["image"].shape[0]
    seconds = time.perf_counter() - t0
    assert first["image"].shape[-1] == image_size
    return {
        "workers": workers,
        "images": n_images,
        "seconds": seconds,
        "images_per_s": n_images / seconds if seconds > 0 else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="an OVCamo-format folder with paths.json (default: generated)")
    ap.add_argument("--num", type=int, default=96, help="images to generate (default 96)")
    ap.add_argument("--source-size", default="1024x768", help="generated image size WxH")
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the transforms run per sample; workers are the parallelism
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            paths = DataPaths.from_paths_json(Path(args.data) / "paths.json")
            source = args.data
        else:
            w, h = (int(v) for v in args.source_size.lower().split("x"))
            root = write_benchmark_set(Path(tmp) / "bench", args.num, w, h)
            paths = DataPaths.from_paths_json(root / "paths.json")
            source = f"generated {args.num} JPEG {w}×{h}"
        rows = [
            measure(paths, int(k), args.batch_size, args.image_size)
            for k in args.workers.split(",")
        ]
    result = {
        "source": source,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "transforms": "resize, hflip p=.5, rotation ±15° p=.5, colour jitter p=.5",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"data loader throughput — {source} → {args.image_size}², batch {args.batch_size}")
    print("| workers | images | seconds | images/s |")
    print("|--------:|-------:|--------:|---------:|")
    for r in rows:
        print(f"| {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |")
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
