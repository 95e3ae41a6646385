"""What every sampler shares: per-sample RNGs, standard augmentation, pixel quantisation.

A sampler is a pair of plain functions: ``draw(cfg, source, rng) -> params`` draws every random
choice of one sample as JSON values, and ``apply(params, source) -> uint8 HWC image`` makes the
image from them. Only ``draw`` sees randomness, so ``apply`` replays any stored sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import SamplerConfig
from core.sources import Source

Params = dict[str, Any]
# Stream ids for set- and shard-level draws; sample indices never reach these values.
SET_STREAM = 0xFFFFFFFF
SHARD_STREAM = 0xFFFFFFFE


def sample_rng(seed: int, shard: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard, index])


def draw_seed(rng: np.random.Generator) -> int:
    """A 63-bit seed for draws too large to store (noise fields): stored, then replayed."""
    return int(rng.integers(0, 2**63 - 1))


# ---------------------------------------------------------------- standard augmentation


def identity_aug(pad: int) -> dict[str, int]:
    return {"dx": pad, "dy": pad, "flip": 0}


def draw_aug(rng: np.random.Generator, pad: int, flip: bool) -> dict[str, int]:
    """Random crop with ``pad`` zero padding (offset in [0, 2·pad]) and an optional h-flip."""
    return {
        "dx": int(rng.integers(0, 2 * pad + 1)),
        "dy": int(rng.integers(0, 2 * pad + 1)),
        "flip": int(rng.integers(0, 2)) if flip else 0,
    }


def source_aug(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> dict[str, int]:
    """The standard augmentation a sampler applies to a real image before its own transform."""
    return draw_aug(rng, source.pad, source.flip) if cfg.augment else identity_aug(source.pad)


def apply_aug(image: np.ndarray, aug: dict[str, int], pad: int) -> np.ndarray:
    height, width = image.shape[:2]
    if pad:
        padded = np.zeros((height + 2 * pad, width + 2 * pad, image.shape[2]), dtype=image.dtype)
        padded[pad:pad + height, pad:pad + width] = image
        image = padded[aug["dy"]:aug["dy"] + height, aug["dx"]:aug["dx"] + width]
    if aug["flip"]:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def real_image(source: Source, index: int, aug: dict[str, int]) -> np.ndarray:
    """Real image ``index`` after its stored standard augmentation."""
    return apply_aug(source.image(index), aug, source.pad)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Round float pixels (0..255 scale) to the stored uint8 image."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Sampler:
    """One sampler kind: how to draw parameters, how to apply them, whether the sample keeps the
    real image's label (label-preserving transforms) or has none (mixes, synthetic images)."""

    draw: Callable[[SamplerConfig, Source, np.random.Generator], Params]
    apply: Callable[[Params, Source], np.ndarray]
    keeps_label: bool
