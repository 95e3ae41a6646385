"""Readers of real-image collections: each returns one split as a :class:`Source`, unfiltered.

``core.sources`` applies the config's augmentation overrides and the class subset, fraction
and imbalance options. Every reader is deterministic (sorted listings, fixed
split seeds) and describes its data by an ``identity`` that changes when the data changes.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from core.config import ImageConfig, SourceConfig
from core.errors import UserError
from core.options.image_contract import eval_image
from core.sources.gaze import RENDER_VERSION, render_split
from core.sources.image_files import image_size, open_pil, read_image
from core.sources.split import load_digits, stratified_split
from core.sources.webdataset import TarMember, read_split
from core.store import storage
from core.tasks import CLASSIFY, REGRESS, Task

Split = Literal["train", "test"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# torchvision data sets whose constructor takes ``split=`` instead of ``train=``.
SPLIT_ARGUMENT = {"SVHN": {"train": "train", "test": "test"}, "STL10": {"train": "train", "test": "test"}}


@dataclass
class Source:
    """Images of one split. ``image(i)`` is uint8 HWC; ``labels[i]`` its class index.

    A regression source (``task`` REGRESS) has no classes: ``labels`` are all −1 and ``targets``
    holds the float32 targets (N, D); ``metric`` names the error to report (``angular`` or
    ``euclidean``). The source decides the task of every model and set of its job.

    With an image ``contract`` (``core.options.image_contract``) the images may have any size: ``raw(i)``
    is the decoded file, ``image(i)`` its evaluation image at the contract's size, and ``shape``
    is that size. Without one, every image must have ``shape`` and ``raw(i)`` is ``image(i)``.
    """

    name: str
    classes: list[str]
    labels: np.ndarray
    identity: dict[str, Any]
    pad: int
    flip: bool
    _images: np.ndarray | None = None
    _files: list[str | TarMember] = field(default_factory=list)  # paths, fsspec URLs or members of tars
    shape: tuple[int, int, int] = (0, 0, 0)
    targets: np.ndarray | None = None
    metric: str | None = None
    task: Task = CLASSIFY
    contract: ImageConfig | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def out_dim(self) -> int:
        """Dimension of a regression target (0 for a classification source)."""
        return 0 if self.targets is None else int(self.targets.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def raw(self, index: int) -> np.ndarray:
        """Image ``index`` as decoded, at its own size (uint8 HWC)."""
        if self._images is not None:
            return self._images[index]
        image = read_image(self._files[index], self.shape[2])
        if self.contract is None and image.shape != self.shape:
            raise UserError(f"image {self._files[index]}: {image.shape[0]}×{image.shape[1]}, but the source's "
                            f"images are {self.shape[0]}×{self.shape[1]} (its first file {self._files[0]}); all "
                            "images of a source must share one size: set `image: {size: N}` in the config "
                            "(resize and crop to N×N) or resize them first")
        return image

    def pil(self, index: int) -> Image.Image:
        """Image ``index`` as decoded, as a PIL image (``L`` or ``RGB``): what a per-sample training
        transform starts from without a round trip through numpy (a random-resized crop of a
        large JPEG crops the decoded image, then resizes only the box)."""
        if self._images is not None:
            image = self._images[index]
            return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return open_pil(self._files[index], self.shape[2])

    def raw_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` as stored, read from its header only."""
        if self._images is not None:
            return (int(self._images.shape[1]), int(self._images.shape[2]))
        return image_size(self._files[index])

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` at the source's ``shape``: the contract's evaluation image."""
        image = self.raw(index)
        return image if self.contract is None else eval_image(image, self.contract)

    def images(self, indices: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Stacked images (all of them by default), uint8 NHWC."""
        if indices is None:
            indices = np.arange(len(self))
        if self._images is not None and self.contract is None:
            return self._images[np.asarray(indices, dtype=np.int64)]
        return np.stack([self.image(int(i)) for i in indices]) if len(indices) else np.zeros((0, *self.shape), np.uint8)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()


def content_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _stratified(labels: np.ndarray, cfg: SourceConfig, split: Split, where: str = "source") -> np.ndarray:
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.split_seed, where)
    return np.sort(train_idx if split == "train" else test_idx)


def read_digits(cfg: SourceConfig, split: Split) -> Source:
    pixels, target = load_digits()
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    chosen = _stratified(target, cfg, split)
    return Source(
        name="digits", classes=[str(c) for c in range(10)], labels=target[chosen],
        identity={"kind": "digits", "split": split, "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed},
        pad=1, flip=False, _images=np.ascontiguousarray(images[chosen]), shape=(8, 8, 1),
    )


def _entries(directory: str) -> list[tuple[str, bool, int]]:
    """``storage.list_entries`` of an ImageFolder directory; an entry that cannot be looked at (a
    dangling symlink, a symlink loop: ``stat`` fails) is a user error naming it."""
    try:
        return storage.list_entries(directory)
    except OSError as err:
        what = err.filename or directory
        raise UserError(f"source.path: {what}: {err.strerror or err} (a dangling symlink or a symlink loop?); "
                        "remove it or make it point at an image") from err


def read_imagefolder(cfg: SourceConfig, split: Split) -> Source:
    """``<path>/<split>/<class>/<image>``; ``path`` may be an fsspec URL (``s3://``, ``gs://``)
    that every node of a cluster can read."""
    root = storage.join(cfg.path or "", cfg.train_dir if split == "train" else cfg.test_dir)
    if not storage.is_dir(root):
        raise UserError(f"source.path: {root} is not a directory (expected <path>/<split>/<class>/<image>)")
    class_names = [name for name, is_dir, _ in _entries(root) if is_dir]
    if not class_names:
        raise UserError(f"source.path: {root} has no class folders")
    files: list[str] = []
    labels: list[int] = []
    listing = []
    for label, class_name in enumerate(class_names):
        class_dir = storage.join(root, class_name)
        members = [(name, size) for name, is_dir, size in _entries(class_dir)
                   if not is_dir and Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if not members:
            raise UserError(f"source.path: class folder {class_dir} has no images")
        files += [storage.join(class_dir, name) for name, _ in members]
        labels += [label] * len(members)
        listing += [(f"{class_name}/{name}", size) for name, size in members]
    first = read_image(files[0], 3)
    return Source(
        name=f"imagefolder:{root}", classes=class_names, labels=np.asarray(labels, np.int64),
        identity={"kind": "imagefolder", "split": split,
                  "listing": hashlib.sha256(json.dumps(listing).encode()).hexdigest()},
        pad=4, flip=True, _files=files, shape=(first.shape[0], first.shape[1], 3),
    )


def read_webdataset(cfg: SourceConfig, split: Split) -> Source:
    """Tar shards (:mod:`core.sources.webdataset`): the headers listed, each image read by byte range."""
    found = read_split(cfg, split)
    first = read_image(found.members[0], 3)
    return Source(
        name=f"webdataset:{found.members[0].url}", classes=found.classes, labels=np.asarray(found.labels, np.int64),
        identity=found.identity, pad=4, flip=True, _files=list(found.members),
        shape=(first.shape[0], first.shape[1], 3),
    )


def _checked_images(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise UserError(f"{where}: images must be uint8 NHWC with 1 or 3 channels (or NHW), "
                        f"got {images.dtype} {images.shape}")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise UserError(f"{where}: labels must be {len(images)} non-negative integers, got {labels.dtype} "
                        f"{labels.shape}")
    images = images[:, :, :, None] if images.ndim == 3 else images
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_npz(cfg: SourceConfig, split: Split) -> Source:
    path = cfg.path or ""  # a path or an fsspec URL
    if not storage.is_file(path):
        raise UserError(f"source.path: {path} is not a file (expected an .npz with images and labels)")
    try:
        with storage.open_read(path) as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as err:
        raise UserError(f"source.path: {path} is not a readable .npz without pickle ({err})") from err
    if "targets" in arrays:
        if "labels" in arrays:
            raise UserError(f"source.path: {path} has both labels and targets; keep labels (classification) "
                            f"or targets (regression)")
        return read_npz_regression(cfg, split, arrays, path)
    missing = {"images", "labels"} - arrays.keys()
    if missing:
        raise UserError(f"source.path: {path} has no {sorted(missing)} arrays (found {sorted(arrays)})")
    images, labels = _checked_images(arrays["images"], arrays["labels"], f"{path} images/labels")
    if "test_images" in arrays:
        if split == "test":
            images, labels = _checked_images(arrays["test_images"], arrays.get("test_labels", np.zeros(0)),
                                             f"{path} test_images/test_labels")
        split_rule: dict[str, Any] = {"test": "test_images"}
    else:
        chosen = _stratified(labels, cfg, split, f"source.path: {path}")
        images, labels = images[chosen], labels[chosen]
        split_rule = {"test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed}
    count = int(max(labels.max(initial=0), arrays["labels"].max(initial=0))) + 1
    classes = [str(c) for c in arrays["classes"].tolist()] if "classes" in arrays else [str(c) for c in range(count)]
    return Source(
        name=f"npz:{path}", classes=classes, labels=labels,
        identity={"kind": "npz", "split": split, "sha256": content_hash(images, labels), **split_rule},
        pad=4 if images.shape[1] >= 16 else 1, flip=images.shape[3] == 3, _images=images,
        shape=tuple(int(d) for d in images.shape[1:]),  # type: ignore[arg-type]
    )


def _regression_targets(targets: np.ndarray, count: int, where: str) -> np.ndarray:
    targets = np.asarray(targets)
    targets = targets[:, None] if targets.ndim == 1 else targets
    if targets.ndim != 2 or len(targets) != count or not np.issubdtype(targets.dtype, np.floating) \
            or not np.isfinite(targets).all():
        raise UserError(f"{where}: targets must be {count} finite float rows (N, D) or (N,), "
                        f"got {targets.dtype} {targets.shape}")
    return np.ascontiguousarray(targets, dtype=np.float32)


def _regression_source(name: str, images: np.ndarray, targets: np.ndarray, identity: dict[str, Any],
                       pad: int, metric: str) -> Source:
    return Source(name=name, classes=[], labels=np.full(len(images), -1, np.int64), identity=identity,
                  pad=pad, flip=False, _images=images, shape=tuple(int(d) for d in images.shape[1:]),  # type: ignore[arg-type]
                  targets=targets, metric=metric, task=REGRESS)


def read_npz_regression(cfg: SourceConfig, split: Split, arrays: dict[str, np.ndarray], path: Path) -> Source:
    """An .npz with float ``targets`` (N, D) — e.g. MPIIGaze normalised eyes with (yaw, pitch) —
    and optionally ``test_images`` / ``test_targets``; otherwise a seeded random ``test_fraction``."""
    images, _ = _checked_images(arrays["images"], np.zeros(len(arrays["images"]), np.int64), f"{path} images")
    targets = _regression_targets(arrays["targets"], len(images), f"{path} targets")
    if "test_images" in arrays:
        if split == "test":
            if "test_targets" not in arrays:
                raise UserError(f"source.path: {path} has test_images but no test_targets")
            images, _ = _checked_images(arrays["test_images"], np.zeros(len(arrays["test_images"]), np.int64),
                                        f"{path} test_images")
            targets = _regression_targets(arrays["test_targets"], len(images), f"{path} test_targets")
        split_rule: dict[str, Any] = {"test": "test_images"}
    else:
        order = np.random.default_rng([cfg.split_seed, 0x5917]).permutation(len(images))
        cut = int(round(len(images) * cfg.test_fraction))
        chosen = np.sort(order[cut:] if split == "train" else order[:cut])
        images, targets = images[chosen], targets[chosen]
        split_rule = {"test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed}
    identity = {"kind": "npz", "task": "regress", "split": split, "sha256": content_hash(images, targets),
                **split_rule}
    return _regression_source(f"npz:{path}", images, targets, identity, 4 if images.shape[1] >= 16 else 1,
                              cfg.error_metric())


GAZE_SAMPLES = {"train": 8000, "test": 2000}


def read_gaze(cfg: SourceConfig, split: Split) -> Source:
    """The bundled gaze set (:mod:`core.sources.gaze`), rendered once and cached as an .npz (rendering
    takes milliseconds per image, and every worker process would otherwise render it again)."""
    count = (cfg.samples if split == "train" else cfg.test_samples) or GAZE_SAMPLES[split]
    directory = Path(cfg.path) if cfg.path else Path(storage.cache_root(None)) / "gaze"
    cached = directory / f"gaze-v{RENDER_VERSION}-seed{cfg.split_seed}-{split}-{count}.npz"
    images = targets = None
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as archive:
                images, targets = archive["images"], archive["targets"]
        except (OSError, ValueError, KeyError):
            images = None  # damaged: render again
    if images is None or targets is None or len(images) != count:
        images, targets = render_split(cfg.split_seed, split, count)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, targets=targets)
        try:
            storage.atomic_write(cached, buffer.getvalue())
        except OSError as err:
            raise UserError(f"source.path: cannot cache rendered gaze images in {directory} ({err}); "
                            f"set source.path to a writable directory") from err
    identity = {"kind": "gaze", "split": split, "seed": cfg.split_seed, "samples": count,
                "sha256": content_hash(images, targets)}
    return _regression_source(f"gaze:{cfg.split_seed}", images, targets, identity, 2, cfg.error_metric())


def read_torchvision(cfg: SourceConfig, split: Split) -> Source:
    """A torchvision data set by class name (CIFAR10, CIFAR100, MNIST, FashionMNIST, SVHN, ...).

    The files must already be under ``path`` unless ``download`` is true; nothing is fetched
    otherwise. The images are read into memory as uint8 NHWC.
    """
    import torchvision.datasets

    name = cfg.name or ""
    factory = getattr(torchvision.datasets, name, None)
    if factory is None or not isinstance(factory, type):
        raise UserError(f"source.name {name!r}: torchvision.datasets has no such data set")
    split_kw = {"split": SPLIT_ARGUMENT[name][split]} if name in SPLIT_ARGUMENT else {"train": split == "train"}
    try:
        dataset = factory(root=cfg.path, download=cfg.download, **split_kw)
    except (RuntimeError, OSError) as err:
        hint = "" if cfg.download else "; put the files there or set source.download: true on a machine with internet"
        raise UserError(f"source: torchvision {name} not found under {cfg.path} ({str(err).splitlines()[0]}){hint}") \
            from err
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if data is None or targets is None:
        raise UserError(f"source.name {name!r}: the data set exposes no data/targets arrays; use imagefolder or npz")
    images = np.asarray(data)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # SVHN, STL10 store NCHW
    images, labels = _checked_images(images.astype(np.uint8, copy=False), np.asarray(targets), f"torchvision {name}")
    count = int(labels.max(initial=0)) + 1
    classes = [str(c) for c in getattr(dataset, "classes", range(count))]
    return Source(
        name=f"torchvision:{name}", classes=classes, labels=labels,
        identity={"kind": "torchvision", "name": name, "split": split, "sha256": content_hash(images, labels)},
        pad=4 if images.shape[1] >= 16 else 1, flip=images.shape[3] == 3 and not name.endswith("MNIST"),
        _images=images, shape=tuple(int(d) for d in images.shape[1:]),  # type: ignore[arg-type]
    )


READERS = {"digits": read_digits, "imagefolder": read_imagefolder, "npz": read_npz, "torchvision": read_torchvision,
           "gaze": read_gaze, "webdataset": read_webdataset}
