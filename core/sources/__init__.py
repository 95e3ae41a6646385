"""Real-image sources: indexable collections of uint8 HWC images with integer labels.

Sources are deterministic: the same config always lists the same images in the same order,
so a sample's stored partner indices replay to the same pixels.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from core.config import ImbalanceConfig, SourceConfig
from core.errors import UserError
from core.sources.readers import READERS, Source, Split, image_size

__all__ = ["Source", "Split", "check_readable", "in_memory_if_small", "load_in_memory", "load_source",
           "load_source_cached"]


def augmentation_identity(source: Source, cfg: SourceConfig) -> dict[str, Any]:
    """The augmentation options that differ from the reader's defaults for ``source``.

    ``pad`` and ``flip`` change every augmented view's pixels (and a replay record's offsets),
    so they belong to the source's identity — hence to every set's fingerprint and cache entry.
    Only a value other than the reader's default joins it: a config that omits them, or spells
    out the default, keeps the identity (and the fingerprints) sets had before they were in it.
    """
    changed: dict[str, Any] = {}
    if cfg.pad is not None and cfg.pad != source.pad:
        changed["pad"] = int(cfg.pad)
    if cfg.flip is not None and cfg.flip != source.flip:
        changed["flip"] = bool(cfg.flip)
    return changed


def _with_options(source: Source, cfg: SourceConfig) -> Source:
    """The reader's defaults for standard augmentation, overridden by the config (an override
    joins the identity: :func:`augmentation_identity`); the image contract (the images' size
    becomes the contract's, and the contract joins the identity)."""
    source = replace(source, pad=source.pad if cfg.pad is None else cfg.pad,
                     flip=source.flip if cfg.flip is None else cfg.flip,
                     identity={**source.identity, **augmentation_identity(source, cfg)})
    if cfg.image is None:
        return source
    return replace(source, contract=cfg.image, shape=(*cfg.image.hw, source.shape[2]),
                   identity={**source.identity, "image": cfg.image.model_dump(mode="json")})


def select(source: Source, keep: np.ndarray, label_map: np.ndarray | None = None,
           classes: list[str] | None = None, **identity: Any) -> Source:
    """The images ``keep`` (sorted indices) of ``source``, labels mapped through ``label_map``."""
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    labels = source.labels[keep] if label_map is None else label_map[source.labels[keep]]
    return replace(
        source, classes=classes or source.classes, labels=labels.astype(np.int64),
        identity={**source.identity, **identity},
        _images=None if source._images is None else source._images[keep],
        _files=[source._files[i] for i in keep] if source._images is None else [],
        targets=None if source.targets is None else source.targets[keep],
    )


def class_subset(source: Source, names: list[str]) -> Source:
    """Only the named classes, relabelled 0..K-1 in the order given."""
    unknown = [n for n in names if n not in source.classes]
    if unknown:
        raise UserError(f"source.classes: {unknown} not among the source's classes {source.classes[:20]}")
    label_map = np.full(len(source.classes), -1, dtype=np.int64)
    for new, name in enumerate(names):
        label_map[source.classes.index(name)] = new
    keep = np.flatnonzero(label_map[source.labels] >= 0)
    return select(source, keep, label_map, list(names), class_subset=list(names))


def _per_class_keep(source: Source, wanted: dict[int, int], seed: int) -> np.ndarray:
    """``wanted[c]`` images of each class c, chosen by a seeded permutation (others kept whole)."""
    rng = np.random.default_rng([seed, 0x5EB])
    keep = []
    for label in range(source.num_classes):
        members = np.flatnonzero(source.labels == label)
        count = wanted.get(label, len(members))
        keep.append(members[np.sort(rng.permutation(len(members))[:count])] if count < len(members) else members)
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def fraction_subset(source: Source, fraction: float, seed: int) -> Source:
    """A class-balanced fraction (XCL fig. 4): every class keeps the same number of images,
    ``fraction`` of the smallest class (at least one)."""
    counts = np.bincount(source.labels, minlength=source.num_classes)
    per_class = max(1, int(round(counts[counts > 0].min() * fraction)))
    keep = _per_class_keep(source, {c: per_class for c in range(source.num_classes)}, seed)
    return select(source, keep, fraction=fraction)


def imbalance_subset(source: Source, cfg: ImbalanceConfig, seed: int) -> Source:
    """XCL §6.2: the chosen classes keep only ``keep`` of their images (at least one)."""
    if isinstance(cfg.classes, int):
        if not 0 < cfg.classes <= source.num_classes:
            raise UserError(f"source.imbalance.classes: {cfg.classes} is not in 1..{source.num_classes}")
        chosen = sorted(np.random.default_rng([seed, 0x1B]).permutation(source.num_classes)[:cfg.classes].tolist())
    else:
        unknown = [n for n in cfg.classes if n not in source.classes]
        if unknown:
            raise UserError(f"source.imbalance.classes: {unknown} not among the source's classes")
        chosen = sorted(source.classes.index(n) for n in cfg.classes)
    counts = np.bincount(source.labels, minlength=source.num_classes)
    keep = _per_class_keep(source, {c: max(1, int(round(counts[c] * cfg.keep))) for c in chosen}, seed)
    return select(source, keep, imbalance={"classes": chosen, "keep": cfg.keep})


def load_source(cfg: SourceConfig, split: Split) -> Source:
    """Open a split of the configured source (checks the data before anything is written).

    The class subset applies to both splits (labels must agree); ``fraction`` and ``imbalance``
    shrink only the training split, as the papers' data-size experiments do.
    """
    source = _with_options(READERS[cfg.kind](cfg, split), cfg)
    source.task.check_source(source, cfg)
    if cfg.classes is not None:
        source = class_subset(source, cfg.classes)
    if split == "train":
        if cfg.fraction < 1:
            source = fraction_subset(source, cfg.fraction, cfg.subset_seed)
        if cfg.imbalance is not None:
            source = imbalance_subset(source, cfg.imbalance, cfg.subset_seed)
        if cfg.fraction < 1 or cfg.imbalance is not None:
            source.identity = {**source.identity, "subset_seed": cfg.subset_seed}
    if len(source) == 0:
        raise UserError(f"source: the {split} split of {source.name} holds no images after subsetting")
    return source


# Workers decode a file-backed source once when it fits in this many bytes (random partner
# access would otherwise decode the same JPEGs over and over).
IN_MEMORY_BYTES = 1 << 30


_CACHE_LOCK = threading.Lock()


def load_source_cached(cfg: SourceConfig, split: Split) -> Source:
    """Per-process cache for workers that open the same source for many shards (thread-safe:
    concurrent shard calls of one actor wait for a single load instead of each decoding it)."""
    with _CACHE_LOCK:
        return _load_cached(cfg.model_dump_json(), split)  # the JSON is the cache key


@lru_cache(maxsize=8)
def _load_cached(cfg_json: str, split: Split) -> Source:
    source = load_source(SourceConfig.model_validate_json(cfg_json), split)
    if source.contract is not None:  # samplers crop the images at their own size: keep them as files
        return source
    return load_in_memory(source) if len(source) * int(np.prod(source.shape)) <= IN_MEMORY_BYTES else source


def load_in_memory(source: Source) -> Source:
    """The same source with every image decoded once (fast random access for small sets). With an
    image contract these are the evaluation images at the contract's size (what a trainer reads);
    the contract is then applied already, so the copy has none (its identity keeps it)."""
    if source._images is not None and source.contract is None:
        return source
    return replace(source, _images=source.images(), _files=[], contract=None)


def in_memory_if_small(source: Source, limit: int = IN_MEMORY_BYTES) -> Source:
    """The split decoded once when its images (at the source's shape) fit in ``limit`` bytes, else
    the same file-backed split, read image by image where it is used: a trainer then holds no
    split in memory, whatever its size."""
    if source._images is not None and source.contract is None:
        return source
    return load_in_memory(source) if len(source) * int(np.prod(source.shape)) <= limit else source


_CHECKED: set[str] = set()


def check_readable(source: Source, threads: int = 16) -> None:
    """Refuse a file-backed source with a file that is not an image, before a job writes anything
    (a worker would otherwise meet it mid-set). Reads every image's header only (PIL's size), in
    ``threads`` threads for object stores; once per source and process. A file whose header is
    sound but whose pixels are damaged is still named by the worker that decodes it."""
    if source._images is not None or source.fingerprint() in _CHECKED:
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(image_size, source._files):  # raises UserError for the first bad file, in order
            pass
    _CHECKED.add(source.fingerprint())
