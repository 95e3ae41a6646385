"""The real training split as a stream member: read from wherever it lives, one image at a time.

ERM students, teachers, ``kd_online`` and the ``source`` share of a KD student all read the real
split through this member, in the loader's worker processes. A small split without an image
contract is held decoded (``student.build`` loads it once, before the workers fork, so they share
it); any other split is **decoded per sample** from its files (ImageFolder, WebDataset members,
URLs), so nothing holds the split in memory and an ImageNet-sized folder streams like a small one.

How an image becomes a training image follows the source:

- no contract, or the contract's ``resize_crop``: the standard pad-and-crop and flip of the
  (resized, centre-cropped) image, as the samplers' views are drawn;
- the contract's ``random_resized_crop``: torchvision's ``RandomResizedCrop`` at the contract's
  ``scale``, ``ratio`` and interpolation (the box drawn with torchvision's rule, the box cut from
  the decoded image, then resized with PIL, as ``torchvision.transforms.functional.resized_crop``
  does on a PIL image), then a horizontal flip with probability ½;
- then, with ``train.randaugment``, torchvision's ``RandAugment`` on each view.

Order: in each epoch every image of the reader's part (images ``i ≡ reader (mod readers)``)
comes once, in a seeded permutation; with ``class_balanced`` each row is an independent draw
∝ 1 / (its class's population) (XCL §6.2). The draws and the augmentation of a reader's batch
``k`` come from generators seeded by ``(seed, reader, epoch)`` and ``(seed, reader, k)``: plain
numbers, so a reader can start at any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.errors import UserError
from core.options.image_contract import RESAMPLE, base_image, draw_random_resized_crop
from core.options.train import RandAugmentConfig
from core.samplers import NO_IMAGE
from core.sources.readers import Source

__all__ = ["RealMember", "RealPart", "pad_crop_flip", "real_views"]

Chunk = dict[str, np.ndarray]
ORDER, BALANCED, AUGMENT = 11, 12, 13  # seed words of the member's random streams


@dataclass
class RealPart:
    """The real split in a stream: its weight among the members, class-balanced draws or epoch
    permutations, and ``values``: carry a regression source's float targets in the target slot
    (ERM on a regression source) instead of zero rows."""

    source: Source
    weight: float = 1.0
    class_balanced: bool = False
    values: bool = False
    randaugment: RandAugmentConfig | None = None


def pad_crop_flip(images: np.ndarray, pad: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """uint8 NHWC images → each a crop at a random offset in [0, 2·pad] of the image zero-padded by
    ``pad``, flipped horizontally with probability ½ if ``flip`` (one vectorised gather)."""
    n, height, width, _ = images.shape
    if pad:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(height)
    cols = dx[:, None] + np.arange(width)
    if flip:
        cols = np.where(rng.integers(0, 2, n).astype(bool)[:, None], cols[:, ::-1], cols)
    return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _random_resized_crops(source: Source, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    contract = source.contract
    assert contract is not None
    height, width = contract.hw
    out = np.empty((len(indices), height, width, source.shape[2]), dtype=np.uint8)
    for slot, index in enumerate(indices.tolist()):
        pil = source.pil(index)
        top, left, box_h, box_w = draw_random_resized_crop(rng, pil.height, pil.width, contract.scale, contract.ratio)
        crop = pil.crop((left, top, left + box_w, top + box_h))
        if (box_h, box_w) != (height, width):
            crop = crop.resize((width, height), RESAMPLE[contract.interpolation])
        image = np.asarray(crop)
        image = image[:, :, None] if image.ndim == 2 else image
        out[slot] = image[:, ::-1] if rng.random() < 0.5 else image
    return out


def rand_augment(images: np.ndarray, cfg: RandAugmentConfig, seed: int) -> np.ndarray:
    """torchvision's ``RandAugment`` on each uint8 NHWC image, its ops drawn from a torch RNG
    seeded with ``seed`` (forked: the process's global RNG is left as it was)."""
    from torchvision.transforms import v2

    augment = v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude, num_magnitude_bins=cfg.magnitude_bins)
    tensors = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([augment(image) for image in tensors])
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def real_views(source: Source, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training images (uint8 NHWC at the source's shape) of real images ``indices``."""
    contract = source.contract
    if contract is not None and contract.views == "random_resized_crop":
        return _random_resized_crops(source, indices, rng)
    if contract is not None:
        images = np.stack([base_image(source.raw(int(i)), contract) for i in indices])
    else:
        images = source.images(indices)
    return pad_crop_flip(images, source.pad, source.flip, rng)


class RealMember:
    """Reader ``reader``'s rows of the real split (see the module docstring); rows carry
    ``width`` zero values in the target slot (no teacher target), or the regression targets."""

    def __init__(self, real: RealPart, reader: int, readers: int, seed: tuple[int, ...], width: int,
                 origin: int, weighted: bool) -> None:
        source = real.source
        self.real, self.seed, self.width, self.origin, self.weighted = real, seed, width, origin, weighted
        self.part = np.arange(reader, len(source), readers, dtype=np.int64)
        if not len(self.part):
            raise UserError(f"source {source.name}: {len(source)} training images cannot be shared among {readers} "
                            f"readers; lower train.num_workers")
        self.weights = None  # class-balanced: the cumulative draw probabilities of the part's images
        if real.class_balanced:
            counts = np.bincount(source.labels[self.part])
            weights = 1.0 / counts[source.labels[self.part]]
            self.weights = np.cumsum(weights / weights.sum())
        self._epoch, self._order = -1, self.part

    def _indices(self, t0: int, t1: int, k: int) -> np.ndarray:
        if self.weights is not None:
            rng = np.random.default_rng([*self.seed, BALANCED, k])
            drawn = np.searchsorted(self.weights, rng.random(t1 - t0) * self.weights[-1], side="right")
            return self.part[np.minimum(drawn, len(self.part) - 1)]
        positions = np.arange(t0, t1)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(positions // len(self.part)).tolist():
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = self.part[np.random.default_rng([*self.seed, ORDER, epoch]).permutation(len(self.part))]
            where = positions // len(self.part) == epoch
            out[where] = self._order[positions[where] % len(self.part)]
        return out

    def take(self, t0: int, t1: int, k: int) -> Chunk:
        """Rows ``t0 … t1 − 1`` of the member's sequence, for the reader's batch ``k``."""
        source, n = self.real.source, t1 - t0
        indices = self._indices(t0, t1, k)
        rng = np.random.default_rng([*self.seed, AUGMENT, k])
        images = real_views(source, indices, rng)
        if self.real.randaugment is not None:
            images = rand_augment(images, self.real.randaugment, int(rng.integers(2**62)))
        if self.real.values and source.targets is not None:
            target = np.ascontiguousarray(source.targets[indices], dtype=np.float32)
        else:
            target = np.zeros((n, self.width), dtype=np.float32)
        chunk = {"image": images, "target": target, "label": source.labels[indices].astype(np.int64),
                 "has_target": np.zeros(n, dtype=bool), "origin": np.full(n, self.origin, dtype=np.int16),
                 "sample": indices, "sources": np.stack([indices, np.full(n, NO_IMAGE)], axis=1).astype(np.int32)}
        if self.weighted:
            chunk["weights"] = np.zeros((n, self.width), dtype=np.float32)
        return chunk
