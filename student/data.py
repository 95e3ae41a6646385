"""Training batches: the real split in memory (ERM) and streamed transfer sets (KD).

Both kinds of batch carry uint8 NCHW images; :func:`normalize` turns them into model inputs on
the device, per the checkpoint's input contract, so the loaders never need to know the model.
All randomness comes from explicit seeds, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import UserError
from core.models import input_spec
from core.sources import Source

__all__ = ["SplitSampler", "crop_flip", "normalize", "real_batches", "source_input_spec"]

_STATS_CHUNK = 256  # images decoded at a time (an ImageNet-sized image is ~150 KB)
STATS_IMAGES = 10_000  # images of a file-backed split the input statistics are computed from


# ---------------------------------------------------------------- real images


def crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Standard augmentation of uint8 NHWC images → uint8 NCHW, in one vectorised gather.

    Random crop with ``pad`` zero padding (offsets in [0, 2·pad], as ``stages.samplers.draw_aug``)
    and, if ``flip``, a horizontal flip with probability 1/2.
    """
    n, height, width, _ = images.shape
    if pad:
        images = F.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(height)
    cols = dx[:, None] + torch.arange(width)
    if flip:
        flips = torch.randint(0, 2, (n,), generator=generator).bool()
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = images[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class SplitSampler:
    """Indices into a labelled split: seeded epoch permutations (every image once per epoch,
    batches run across epoch boundaries), or with ``class_balanced`` independent draws with
    probability ∝ 1 / (population of the image's class) (XCL §6.2)."""

    def __init__(self, labels: np.ndarray, seed: int, class_balanced: bool = False) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.size = len(labels)
        self.weights = None
        if class_balanced:
            counts = np.bincount(labels)
            self.weights = torch.from_numpy(1.0 / counts[labels])
        self.order = torch.empty(0, dtype=torch.int64)

    def draw(self, n: int) -> torch.Tensor:
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        while len(self.order) < n:
            self.order = torch.cat([self.order, torch.randperm(self.size, generator=self.generator)])
        chosen, self.order = self.order[:n], self.order[n:]
        return chosen


def real_batches(
    source: Source, batch_size: int, seed: int, augment: bool = True, class_balanced: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(uint8 NCHW images, int64 labels)`` batches of the real split, drawn by a
    :class:`SplitSampler`; augmentation follows the source's ``pad`` and ``flip``. A regression
    source gives its float32 targets (N, D) in place of the labels."""
    if len(source) == 0:
        raise UserError(f"source {source.name}: the training split has no images")
    images = torch.from_numpy(np.ascontiguousarray(source.images()))
    labels = torch.from_numpy(np.asarray(source.labels, dtype=np.int64) if source.targets is None
                              else np.ascontiguousarray(source.targets, dtype=np.float32))
    sampler = SplitSampler(source.labels, seed, class_balanced)
    pad, flip = (source.pad, source.flip) if augment else (0, False)
    while True:
        chosen = sampler.draw(batch_size)
        yield crop_flip(images[chosen], pad, flip, sampler.generator), labels[chosen]


# ---------------------------------------------------------------- normalisation


def normalize(images_uint8: torch.Tensor, input_spec: dict[str, Any]) -> torch.Tensor:
    """uint8 NCHW → float NCHW: ``/255``, then ``(x − mean) / std`` per channel."""
    x = images_uint8.float().div_(255.0)
    mean = torch.tensor(input_spec["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(input_spec["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def stats_indices(source: Source, limit: int = STATS_IMAGES) -> np.ndarray:
    """The images the input statistics are computed from: all of an in-memory split, at most
    ``limit`` evenly spaced ones of a split read from files (an ImageNet-sized folder would
    otherwise be decoded whole before the first step)."""
    if source._images is not None or len(source) <= limit:
        return np.arange(len(source))
    return np.unique(np.linspace(0, len(source) - 1, limit).round().astype(np.int64))


def source_input_spec(source: Source) -> dict[str, Any]:
    """The input contract for models trained on ``source``: its size and per-channel mean/std.

    Computed in float64 over chunks (a large split never sits in memory as floats) of the images
    :func:`stats_indices` picks. A constant channel gets std 1 so that normalising never divides
    by zero.
    """
    height, width, channels = source.shape
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    chosen = stats_indices(source)
    for start in range(0, len(chosen), _STATS_CHUNK):
        chunk = source.images(chosen[start:start + _STATS_CHUNK])
        pixels = chunk.reshape(-1, channels).astype(np.float64) / 255.0
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        count += len(pixels)
    if count == 0:
        raise UserError(f"source {source.name}: no images to compute the input statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return input_spec(height, width, channels, [float(m) for m in mean], [float(s) for s in std])


