"""What every sampler shares: per-sample RNGs, standard augmentation, pixel quantisation.

A sampler is a pair of plain functions: ``draw(cfg, source, rng) -> params`` draws every random
choice of one sample as JSON values, and ``apply(params, source) -> uint8 HWC image`` makes the
image from them. Only ``draw`` sees randomness, so ``apply`` replays any stored sample; the
``apply`` halves live in :mod:`core.sample_apply`, where the student trainer reaches them too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import SamplerConfig
from core.image_contract import draw_random_resized_crop, pad_crop
from core.sample_apply import Params, real_image, to_uint8  # noqa: F401  (the samplers' shared names)
from core.sources import Source

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


def identity_view(source: Source, index: int) -> dict[str, Any]:
    """The unaugmented view of real image ``index``: the evaluation image with a
    ``random_resized_crop`` contract, else no shift and no flip."""
    if source.contract is not None and source.contract.views == "random_resized_crop":
        return {"eval": 1, "flip": 0}
    return identity_aug(source.pad)


def draw_view(rng: np.random.Generator, source: Source, index: int) -> dict[str, Any]:
    """A random view of real image ``index``: a random-resized-crop box and flip, or the
    standard pad-and-crop and flip (:func:`draw_aug`)."""
    contract = source.contract
    if contract is not None and contract.views == "random_resized_crop":
        height, width = source.raw_size(index)
        box = draw_random_resized_crop(rng, height, width, contract.scale, contract.ratio)
        return {"box": list(box), "flip": int(rng.integers(0, 2)) if source.flip else 0}
    return draw_aug(rng, source.pad, source.flip)


def draw_aug(rng: np.random.Generator, pad: int, flip: bool) -> dict[str, int]:
    """Random crop with ``pad`` zero padding (offset in [0, 2·pad]) and an optional h-flip."""
    return {
        "dx": int(rng.integers(0, 2 * pad + 1)),
        "dy": int(rng.integers(0, 2 * pad + 1)),
        "flip": int(rng.integers(0, 2)) if flip else 0,
    }


def source_aug(cfg: SamplerConfig, source: Source, rng: np.random.Generator, index: int) -> dict[str, Any]:
    """The view a sampler takes of real image ``index`` before its own transform: random with
    ``augment`` (the source's standard augmentation, or the contract's random-resized crop)."""
    return draw_view(rng, source, index) if cfg.augment else identity_view(source, index)


def apply_aug(image: np.ndarray, aug: dict[str, int], pad: int) -> np.ndarray:
    """The standard pad-and-crop and flip of an image that has the source's size."""
    return pad_crop(image, aug, pad)




@dataclass(frozen=True)
class Sampler:
    """One sampler kind: how to draw parameters, how to apply them, whether the sample keeps the
    real image's label (label-preserving transforms) or has none (mixes, synthetic images)."""

    draw: Callable[[SamplerConfig, Source, np.random.Generator], Params]
    apply: Callable[[Params, Source], np.ndarray]
    keeps_label: bool
