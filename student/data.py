"""Model inputs: the input statistics of a training split and the normalisation of a batch.

Every batch (:mod:`student.stream`) carries uint8 NCHW images; :func:`normalize` turns them into
model inputs on the device, per the checkpoint's input contract, so the loaders never need to
know the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.errors import UserError
from core.models import input_spec
from core.sources import Source

__all__ = ["normalize", "source_input_spec"]

_STATS_CHUNK = 256  # images decoded at a time (an ImageNet-sized image is ~150 KB)
STATS_IMAGES = 10_000  # images of a file-backed split the input statistics are computed from


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


