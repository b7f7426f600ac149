"""The micro-world: a procedural OVCamo-format dataset rendered from a config, cached
(docs/design.md, "The micro-world").

A rendered world is one folder::

    paths.json          the six ``data.*`` keys (relative to this folder) + ``salient_captions``
    world.json          the resolved config, its content hash and the per-class counts
    class_info.json     OVCamo's own entries of the chosen classes (names, ids, splits byte-exact);
                        ``num_samples`` is the count rendered here
    sample_info.json    ``{unique_id, base_class, image, mask, id}``, ``unique_id = f"{id:06d}_{name}"``
    train/image, train/mask, test/image, test/mask     PNG files ``<unique_id>.png``
    salient/image/*.png, salient/mask/*.png, salient/captions.json
    web_camouflaged/image/*.png, web_camouflaged/mask/*.png, web_camouflaged/captions.json

``salient/captions.json`` is the captioned "web" set the micro CLIP trains on: a list of
``{"image": "image/<file>.png", "mask": "mask/<file>.png", "class_name", "caption", "split"}``
with paths relative to ``salient/``; ``split`` is ``"train"`` (contrastive training) or
``"val"`` (held out, scored for zero-shot accuracy). Every class of the world, train and test,
has salient renders: the micro CLIP plays web-scale CLIP, which knows every class name.
``web_camouflaged/captions.json`` (same entries, all ``"train"``) adds camouflaged scenes of the
*base* classes only, framed on the animal as a photo of it would be ("a photo of the camouflaged
owl."): web-scale CLIP has seen camouflaged animals, but the open-vocabulary protocol keeps novel
classes out of every camouflaged image anything trains on.

Train classes get long-tailed counts: a geometric ramp from ``train_counts.min`` to
``train_counts.max`` in the order of the real OVCamo ``num_samples`` (rarest real class gets the
fewest), so the ratio is ``max / min`` (OVCamo: 186 to 1,209, about 1:6.5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.data.io import atomic_write_json, encode_png, read_image, read_mask, safe_join
from ovcamo.data.ovcamo_format import (
    STANDARD_LAYOUT,
    ClassInfo,
    DataPaths,
    SampleInfo,
    load_class_info,
    write_class_info,
    write_sample_info,
)
from ovcamo.data.world_render import (
    ClassStyle,
    Scene,
    class_style,
    framed,
    render_camouflaged,
    render_salient,
    stable_seed,
)

log = logging.getLogger(__name__)

#: Bumped whenever rendering changes pixels, so old cache entries are not mistaken for new ones.
RENDERER_VERSION = 4
#: OVCamo's class list, shipped with the package (a copy of the dataset's ``class_info.json``).
PACKAGED_CLASS_LIST = Path(__file__).resolve().parent / "ovcamo_classes.json"
#: Keys every ``world`` config node carries (defaults live in ``ovcamo/conf/world/*.yaml``).
WORLD_KEYS = (
    "name",
    "seed",
    "image_size",
    "classes",
    "train_counts",
    "test_count",
    "salient_per_class",
    "salient_heldout_per_class",
    "camouflaged_web_per_class",
    "difficulty",
    "class_list",
)
#: Caption phrasings of the salient set; one per image, cycling, so every class gets all of them.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a close-up photo of the {}.",
    "a {} on a plain background.",
    "a photo of the {} in the wild.",
    "a cropped photo of a {}.",
)
#: Caption phrasings of the camouflaged web renders (base classes only).
CAMOUFLAGED_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of the camouflaged {}.",
    "a camouflaged {}.",
    "a {} hiding in its surroundings.",
    "a photo of a {} blending in with the background.",
)
#: Folder (and render kind) of the camouflaged web renders.
WEB_CAMOUFLAGED = "web_camouflaged"


class WorldConfigError(ValueError):
    """A ``world`` config node is invalid; raised before anything is written."""


@dataclass(frozen=True)
class WorldSpec:
    """A validated world config: what will be rendered, and the hash that names it."""

    name: str
    seed: int
    image_size: int
    difficulty: float
    classes: tuple[ClassInfo, ...]
    salient_per_class: int
    salient_heldout_per_class: int
    camouflaged_web_per_class: int
    config: Mapping[str, Any]
    config_hash: str

    @property
    def train_classes(self) -> list[ClassInfo]:
        return [c for c in self.classes if c.split == "train"]

    @property
    def test_classes(self) -> list[ClassInfo]:
        return [c for c in self.classes if c.split == "test"]

    def style(self, cls: ClassInfo) -> ClassStyle:
        return class_style(cls.name, cls.id, self.seed)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:
        pass
    return json.loads(json.dumps(dict(cfg)))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WorldConfigError(f"world.{key} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WorldConfigError(f"world.{key} must be a non-negative integer, got {value!r}")
    return value


def long_tail_counts(n: int, low: int, high: int) -> list[int]:
    """``n`` counts rising geometrically from ``low`` to ``high`` (rounded), rarest first."""
    if n == 1:
        return [high]
    return [round(low * (high / low) ** (i / (n - 1))) for i in range(n)]


def resolve_world(world_cfg: Mapping[str, Any]) -> WorldSpec:
    """Validate a ``world`` node and fix everything the renderer needs.

    Raises :class:`WorldConfigError` naming the key at fault for: a missing key, an unknown class
    name, a class listed under the wrong split or twice, an empty split, a count that is not a
    positive integer, ``train_counts.min > train_counts.max``, a difficulty outside ``[0, 1]`` or
    an image size below 16 px.
    """
    cfg = _plain(world_cfg)
    missing = [k for k in WORLD_KEYS if k not in cfg]
    if missing:
        raise WorldConfigError(
            f"world config lacks {', '.join('world.' + k for k in missing)} "
            "(see ovcamo/conf/world/micro.yaml for a complete node)"
        )
    unknown_keys = sorted(set(cfg) - set(WORLD_KEYS))
    if unknown_keys:
        raise WorldConfigError(f"world config has unknown key(s) {unknown_keys}")
    size = _positive_int(cfg["image_size"], "image_size")
    if size < 16:
        raise WorldConfigError(f"world.image_size must be at least 16, got {size}")
    seed = _non_negative_int(cfg["seed"], "seed")
    difficulty = cfg["difficulty"]
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)):
        raise WorldConfigError(f"world.difficulty must be a number in [0, 1], got {difficulty!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise WorldConfigError(f"world.difficulty must be in [0, 1], got {difficulty}")
    tc = cfg["train_counts"]
    if not isinstance(tc, Mapping) or set(tc) != {"min", "max"}:
        raise WorldConfigError(f"world.train_counts must be {{min: int, max: int}}, got {tc!r}")
    low = _positive_int(tc["min"], "train_counts.min")
    high = _positive_int(tc["max"], "train_counts.max")
    if low > high:
        raise WorldConfigError(f"world.train_counts.min ({low}) exceeds train_counts.max ({high})")
    test_count = _positive_int(cfg["test_count"], "test_count")
    salient = _positive_int(cfg["salient_per_class"], "salient_per_class")
    heldout = _positive_int(cfg["salient_heldout_per_class"], "salient_heldout_per_class")
    camouflaged_web = _non_negative_int(
        cfg["camouflaged_web_per_class"], "camouflaged_web_per_class"
    )

    list_path = Path(cfg["class_list"]).expanduser() if cfg["class_list"] else PACKAGED_CLASS_LIST
    try:
        catalogue = load_class_info(list_path)
    except (FileNotFoundError, ValueError) as e:
        raise WorldConfigError(f"world.class_list: cannot read the class list: {e}") from e
    by_name = {c.name: c for c in catalogue}
    chosen = _choose_classes(cfg["classes"], by_name, list_path)

    train = sorted((c for c in chosen if c.split == "train"), key=lambda c: (c.num_samples, c.id))
    counts = dict(
        zip((c.name for c in train), long_tail_counts(len(train), low, high), strict=True)
    )
    classes = tuple(
        replace(c, num_samples=counts[c.name] if c.split == "train" else test_count)
        for c in sorted(chosen, key=lambda c: c.id)
    )
    hashed = {
        "renderer_version": RENDERER_VERSION,
        "seed": seed,
        "image_size": size,
        "difficulty": float(difficulty),
        "classes": [c.to_json() for c in classes],
        "salient_per_class": salient,
        "salient_heldout_per_class": heldout,
        "camouflaged_web_per_class": camouflaged_web,
    }
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode("utf-8")).hexdigest()
    return WorldSpec(
        name=str(cfg["name"]),
        seed=seed,
        image_size=size,
        difficulty=float(difficulty),
        classes=classes,
        salient_per_class=salient,
        salient_heldout_per_class=heldout,
        camouflaged_web_per_class=camouflaged_web,
        config=cfg,
        config_hash=digest,
    )


def _choose_classes(
    classes: Any, by_name: Mapping[str, ClassInfo], list_path: Path
) -> list[ClassInfo]:
    if classes == "all":
        chosen = list(by_name.values())
    elif isinstance(classes, Mapping) and set(classes) == {"train", "test"}:
        chosen = []
        seen: set[str] = set()
        for split in ("train", "test"):
            names = classes[split]
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise WorldConfigError(f"world.classes.{split} must be a list of class names")
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise WorldConfigError(
                    f"world.classes.{split}: unknown class name(s) {unknown}; names must match "
                    f"{list_path} byte for byte (e.g. 'snow leopard', 'reccoon')"
                )
            wrong = [n for n in names if by_name[n].split != split]
            if wrong:
                raise WorldConfigError(
                    f"world.classes.{split}: {wrong} belong to the other split in {list_path}"
                )
            twice = sorted({n for n in names if n in seen or list(names).count(n) > 1})
            if twice:
                raise WorldConfigError(f"world.classes.{split}: {twice} listed more than once")
            seen.update(names)
            chosen.extend(by_name[n] for n in names)
    else:
        raise WorldConfigError(
            f"world.classes must be 'all' or {{train: [names], test: [names]}}, got {classes!r}"
        )
    for split in ("train", "test"):
        if not any(c.split == split for c in chosen):
            raise WorldConfigError(f"world.classes: the {split} split is empty")
    return chosen


# ---------------------------------------------------------------- rendering


def _scene_rng(spec: WorldSpec, kind: str, cls: ClassInfo, index: int) -> np.random.Generator:
    return np.random.default_rng(stable_seed(kind, spec.seed, cls.name, index))


def _render_job(spec: WorldSpec, kind: str, c: ClassInfo, index: int) -> Scene:
    rng = _scene_rng(spec, kind, c, index)
    style = spec.style(c)
    if kind == "salient":
        return render_salient(style, spec.image_size, rng)
    scene = render_camouflaged(style, spec.image_size, spec.difficulty, rng)
    return framed(scene, spec.image_size) if kind == WEB_CAMOUFLAGED else scene


def _render_chunk(spec: WorldSpec, jobs: Sequence[tuple[str, ClassInfo, int, Path, str]]) -> int:
    for kind, c, index, root, stem in jobs:
        _write_scene(root, stem, _render_job(spec, kind, c, index))
    return len(jobs)


def _render_all(
    spec: WorldSpec,
    jobs: Sequence[tuple[str, ClassInfo, int, Path, str]],
    progress: bool,
    desc: str,
    workers: int | None = None,
) -> None:
    """Render and write every job ``(kind, class, index, folder, stem)``, in worker threads when
    there are several cores (numpy, scipy and the PNG encoder release the GIL for most of the
    work; threads need no ``__main__`` guard in the caller's script). Pixels depend only on the
    job, never on the worker."""
    from tqdm.auto import tqdm

    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    chunks = [jobs[i : i + 32] for i in range(0, len(jobs), 32)]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            bar.update(_render_chunk(spec, chunk))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for n in pool.map(_render_chunk, [spec] * len(chunks), chunks):
                bar.update(n)
    bar.close()


def _captioned_set(
    kind: str,
    classes: Sequence[ClassInfo],
    per_class: int,
    templates: Sequence[str],
    folder: Path,
    n_train: int,
) -> tuple[list[tuple[str, ClassInfo, int, Path, str]], list[dict[str, str]]]:
    """Render jobs and ``captions.json`` entries of one captioned web folder: ``per_class``
    images of each class, captions cycling through ``templates``, the first ``n_train`` of each
    class in the ``"train"`` split and the rest in ``"val"``."""
    jobs: list[tuple[str, ClassInfo, int, Path, str]] = []
    entries: list[dict[str, str]] = []
    for c in classes:
        for i in range(per_class):
            stem = f"{len(entries):06d}_{c.name}"
            jobs.append((kind, c, i, folder, stem))
            entries.append(
                {
                    "image": f"image/{stem}.png",
                    "mask": f"mask/{stem}.png",
                    "class_name": c.name,
                    "caption": templates[i % len(templates)].format(c.name),
                    "split": "train" if i < n_train else "val",
                }
            )
    return jobs, entries


def render_world(spec: WorldSpec, out_dir: str | os.PathLike, progress: bool = True) -> None:
    """Render ``spec`` into ``out_dir`` (which must not exist or be empty)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"refusing to render into non-empty folder {out}")
    jobs: list[tuple[str, ClassInfo, int, Path, str]] = []
    samples: list[SampleInfo] = []
    for split in ("train", "test"):
        for c in spec.classes:
            if c.split == split:
                for i in range(c.num_samples):
                    uid = f"{len(samples):06d}_{c.name}"
                    jobs.append((split, c, i, out / split, uid))
                    samples.append(
                        SampleInfo(uid, c.name, f"{uid}.png", f"{uid}.png", len(samples))
                    )
    salient_jobs, captions = _captioned_set(
        "salient",
        spec.classes,
        spec.salient_per_class + spec.salient_heldout_per_class,
        CAPTION_TEMPLATES,
        out / "salient",
        n_train=spec.salient_per_class,
    )
    web_jobs, web_captions = _captioned_set(
        WEB_CAMOUFLAGED,
        spec.train_classes,
        spec.camouflaged_web_per_class,
        CAMOUFLAGED_CAPTION_TEMPLATES,
        out / WEB_CAMOUFLAGED,
        n_train=spec.camouflaged_web_per_class,
    )
    jobs += salient_jobs + web_jobs
    _render_all(spec, jobs, progress, f"render world {spec.name}")
    if web_captions:
        atomic_write_json(out / WEB_CAMOUFLAGED / "captions.json", web_captions)
    styles = {c.name: spec.style(c) for c in spec.classes}

    write_class_info(out / "class_info.json", spec.classes)
    write_sample_info(out / "sample_info.json", samples)
    atomic_write_json(out / "salient" / "captions.json", captions)
    atomic_write_json(
        out / "paths.json", {**STANDARD_LAYOUT, "salient_captions": "salient/captions.json"}
    )
    atomic_write_json(
        out / "world.json",
        {
            "name": spec.name,
            "config_hash": spec.config_hash,
            "renderer_version": RENDERER_VERSION,
            "config": spec.config,
            "counts": {c.name: c.num_samples for c in spec.classes},
            "styles": {
                n: {"shape": s.shape, "pattern": s.pattern, "hue": round(s.hue, 4)}
                for n, s in styles.items()
            },
        },
    )


def render_extra_set(
    spec: WorldSpec,
    counts: Mapping[str, int],
    out_dir: str | os.PathLike,
    *,
    namespace: str,
    split: str = "train",
    progress: bool = False,
) -> Path:
    """More camouflaged scenes of base classes from the same world, as an OVCamo-format folder.

    Scenes are drawn under ``namespace``, so they are new samples of the same distribution, never
    copies of the world's own. ``split="train"``: a set that ``data.synthetic`` mixes into
    training exactly as a generated set (the loop's real-extra arm). ``split="test"``: an
    evaluation set whose class list marks the base classes as test classes, so scoring it chooses
    among the base classes (the loop's rare-class evaluation).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    by_name = {c.name: c for c in spec.train_classes}
    unknown = sorted(set(counts) - set(by_name))
    if unknown:
        raise ValueError(f"{unknown} are not base (train) classes of world {spec.name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, ClassInfo, int, Path, str]] = []
    samples: list[SampleInfo] = []
    for name in sorted(counts, key=lambda n: by_name[n].id):
        for i in range(int(counts[name])):
            uid = f"{namespace}{len(samples):06d}_{name}"
            jobs.append((namespace, by_name[name], i, out / split, uid))
            samples.append(SampleInfo(uid, name, f"{uid}.png", f"{uid}.png", len(samples)))
    _render_all(spec, jobs, progress, f"render {namespace}")
    if split == "train":
        classes = [replace(c, num_samples=int(counts.get(c.name, 0))) for c in spec.classes]
    else:
        classes = [
            replace(c, split="test", num_samples=int(counts.get(c.name, 0)))
            for c in spec.train_classes
        ]
    write_class_info(out / "class_info.json", classes)
    write_sample_info(out / "sample_info.json", samples)
    for kind in ("image", "mask"):
        (out / split / kind).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "paths.json", STANDARD_LAYOUT)
    return out


def _write_scene(root: Path, stem: str, scene: Scene) -> None:
    # Plain writes: the whole folder is published by one rename once complete (see ensure_world).
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    safe_join(root / "image", f"{stem}.png", flat=True).write_bytes(encode_png(scene.image))
    mask = encode_png(scene.mask.astype(np.uint8) * 255)
    safe_join(root / "mask", f"{stem}.png", flat=True).write_bytes(mask)


# ---------------------------------------------------------------- cache


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$OVCAMO_CACHE``, else ``~/.cache/ovcamo``."""
    base = cache_dir if cache_dir is not None else os.environ.get("OVCAMO_CACHE", "~/.cache/ovcamo")
    return Path(os.path.expanduser(str(base)))


def world_dir(spec: WorldSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder of a world: ``<cache>/world/<name>-<hash[:16]>``."""
    return default_cache_dir(cache_dir) / "world" / f"{spec.name}-{spec.config_hash[:16]}"


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder to ``final`` in one rename; a concurrent winner is kept."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_world(
    world_cfg: Mapping[str, Any], cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Render the world a ``world`` node describes, or find it in the cache; return its folder.

    The folder is named by the content hash of the validated config, and rendered into a
    temporary sibling that is renamed into place only when complete, so a crashed or concurrent
    render never leaves a folder that looks finished.
    """
    spec = resolve_world(world_cfg)
    final = world_dir(spec, cache_dir)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        render_world(spec, tmp, progress=progress)
        # Flush file data before the rename makes the folder visible as complete.
        os.sync()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)
    log.info("micro-world %s rendered to %s", spec.name, final)
    return final


def export_world(src: Path, out_dir: str | os.PathLike, link: bool = False) -> Path:
    """Place a rendered world at ``out_dir``: a copy (default) or a symlink to the cache folder.

    An existing ``out_dir`` is accepted only if it holds the same world (same ``world.json``
    hash); anything else there is left untouched and reported.
    """
    return export_dir(src, out_dir, "world", identity=("world.json", "config_hash"), link=link)


def export_dir(
    src: Path,
    out_dir: str | os.PathLike,
    what: str,
    *,
    identity: tuple[str, str],
    link: bool = False,
) -> Path:
    """Place a finished cache folder (a ``what``) at ``out_dir``: a copy or a symlink to it.

    ``identity`` names the json file and key that identify the folder's content: an existing
    ``out_dir`` is accepted only if it holds the same, and is otherwise left untouched and reported.
    """
    out = Path(os.path.expanduser(str(out_dir)))
    marker, key = identity
    src_id = json.loads((src / marker).read_text("utf-8"))[key]
    if out.exists() or out.is_symlink():
        found = out / marker
        if found.is_file() and json.loads(found.read_text("utf-8")).get(key) == src_id:
            return out
        raise FileExistsError(
            f"out_dir {out} already exists and does not hold this {what} ({key} "
            f"{str(src_id)[:16]}); choose another out_dir or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), out, target_is_directory=True)
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    publish_dir(tmp, out)
    return out


# ---------------------------------------------------------------- figure


def render_grid(
    world_root: str | os.PathLike,
    path: str | os.PathLike,
    n_classes: int = 8,
    split: str = "test",
) -> Path:
    """Write a PNG figure of a rendered world: per class (columns) a camouflaged image, its
    mask and a salient render, class names on top. Classes of ``split`` first, by id."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ovcamo.data.io import atomic_write_bytes

    root = Path(world_root)
    paths = DataPaths.from_paths_json(root / "paths.json")
    classes = load_class_info(paths.class_info)
    samples = json.loads(paths.sample_info.read_text("utf-8"))
    captions = json.loads((root / "salient" / "captions.json").read_text("utf-8"))
    chosen = sorted(classes, key=lambda c: (c.split != split, c.id))[:n_classes]
    fig, axes = plt.subplots(3, len(chosen), figsize=(1.6 * len(chosen), 5.2), squeeze=False)
    for j, c in enumerate(chosen):
        s = next(s for s in samples if s["base_class"] == c.name)
        image = read_image(safe_join(paths.image_dir(c.split), f"{s['unique_id']}.png", flat=True))
        mask = read_mask(safe_join(paths.mask_dir(c.split), f"{s['unique_id']}.png", flat=True))
        sal = next(e for e in captions if e["class_name"] == c.name)
        salient = read_image(root / "salient" / sal["image"])
        for i, (arr, cmap) in enumerate(((image, None), (mask, "gray"), (salient, None))):
            axes[i, j].imshow(arr, cmap=cmap, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"{c.name}\n({c.split})", fontsize=8)
    for i, label in enumerate(("camouflaged", "mask", "salient")):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def main(cfg: Mapping[str, Any]) -> Path | None:
    """``ovcamo-world``: render (or reuse) ``cfg.world``; copy or link it to ``cfg.out_dir``;
    write a sample grid to ``cfg.grid`` when set. Prints and returns the dataset folder.

    ``check=true`` validates ``cfg.world``, says whether the world is cached or would be rendered,
    writes nothing and returns ``None``."""
    if cfg.get("check"):
        spec = resolve_world(cfg["world"])
        folder = world_dir(spec, cfg.get("cache_dir"))
        state = "cached at" if folder.is_dir() else "would be rendered to"
        print(
            f"ovcamo-world: check passed: world {spec.name!r} ({spec.config_hash[:12]}) {state} "
            f"{folder}; nothing written (check=true)"
        )
        return None
    root = ensure_world(cfg["world"], cache_dir=cfg.get("cache_dir"))
    if cfg.get("out_dir"):
        root = export_world(root, cfg["out_dir"], link=bool(cfg.get("link", False)))
    if cfg.get("grid"):
        render_grid(root, cfg["grid"])
    print(root)
    return root
