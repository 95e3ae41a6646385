"""Real-image sources: indexable collections of uint8 HWC images with integer labels.

Sources are deterministic: the same config always lists the same images in the same order,
so a sample's stored partner indices replay to the same pixels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config import SourceConfig
from pipeline.errors import UserError

Split = Literal["train", "test"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Source:
    """Images of one split. ``image(i)`` is uint8 HWC; ``labels[i]`` its class index."""

    name: str
    classes: list[str]
    labels: np.ndarray
    identity: dict[str, Any]
    pad: int
    flip: bool
    _images: np.ndarray | None = None
    _files: list[Path] = field(default_factory=list)
    shape: tuple[int, int, int] = (0, 0, 0)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image(self, index: int) -> np.ndarray:
        if self._images is not None:
            return self._images[index]
        return _read_image(self._files[index], self.shape[2])

    def images(self, indices: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Stacked images (all of them by default), uint8 NHWC."""
        if indices is None:
            indices = np.arange(len(self))
        if self._images is not None:
            return self._images[np.asarray(indices, dtype=np.int64)]
        return np.stack([self.image(int(i)) for i in indices]) if len(indices) else np.zeros((0, *self.shape), np.uint8)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()


def _read_image(path: Path, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"image {path}: unreadable ({err}); remove or replace the file") from err
    return array[:, :, None] if array.ndim == 2 else array


def _digits(cfg: SourceConfig, split: Split) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    order = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        order, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=data.target
    )
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return Source(
        name="digits",
        classes=[str(c) for c in range(10)],
        labels=data.target[chosen].astype(np.int64),
        identity={"kind": "digits", "split": split, "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed},
        pad=1 if cfg.pad is None else cfg.pad,
        flip=False if cfg.flip is None else cfg.flip,
        _images=np.ascontiguousarray(images[chosen]),
        shape=(8, 8, 1),
    )


def _imagefolder(cfg: SourceConfig, split: Split) -> Source:
    root = Path(cfg.path or "") / (cfg.train_dir if split == "train" else cfg.test_dir)
    if not root.is_dir():
        raise UserError(f"source.path: {root} is not a directory (expected <path>/<split>/<class>/<image>)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise UserError(f"source.path: {root} has no class folders")
    files: list[Path] = []
    labels: list[int] = []
    listing = []
    for label, class_dir in enumerate(class_dirs):
        members = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not members:
            raise UserError(f"source.path: class folder {class_dir} has no images")
        files += members
        labels += [label] * len(members)
        listing += [(f"{class_dir.name}/{p.name}", p.stat().st_size) for p in members]
    first = _read_image(files[0], 3)
    channels = 3
    return Source(
        name=f"imagefolder:{root}",
        classes=[d.name for d in class_dirs],
        labels=np.asarray(labels, dtype=np.int64),
        identity={
            "kind": "imagefolder", "split": split,
            "listing": hashlib.sha256(json.dumps(listing).encode()).hexdigest(),
        },
        pad=4 if cfg.pad is None else cfg.pad,
        flip=True if cfg.flip is None else cfg.flip,
        _files=files,
        shape=(first.shape[0], first.shape[1], channels),
    )


def load_source(cfg: SourceConfig, split: Split) -> Source:
    """Open a split of the configured source (checks the data before anything is written)."""
    if cfg.kind == "digits":
        return _digits(cfg, split)
    return _imagefolder(cfg, split)


@lru_cache(maxsize=8)
def load_source_cached(cfg_json: str, split: Split) -> Source:
    """Per-process cache for workers that open the same source for many shards."""
    return load_source(SourceConfig.model_validate_json(cfg_json), split)


def load_in_memory(source: Source) -> Source:
    """The same source with every image decoded once (fast random access for small sets)."""
    if source._images is not None:
        return source
    return Source(
        name=source.name, classes=source.classes, labels=source.labels, identity=source.identity,
        pad=source.pad, flip=source.flip, _images=source.images(), shape=source.shape,
    )
