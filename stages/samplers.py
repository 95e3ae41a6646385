"""Samplers: draw a sample's parameters first, then apply them to real images.

Parameters are plain JSON values stored in the sample's metadata, so :func:`apply_params`
replays any stored sample exactly. All randomness of sample ``index`` of shard ``shard`` comes
from ``sample_rng(seed, shard, index)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import SamplerConfig
from stages.sources import Source

# The set-level stream (e.g. the views order); shard indices never reach this value.
SET_STREAM = 0xFFFFFFFF


def sample_rng(seed: int, shard: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard, index])


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


def apply_aug(image: np.ndarray, aug: dict[str, int], pad: int) -> np.ndarray:
    height, width = image.shape[:2]
    if pad:
        padded = np.zeros((height + 2 * pad, width + 2 * pad, image.shape[2]), dtype=image.dtype)
        padded[pad:pad + height, pad:pad + width] = image
        image = padded[aug["dy"]:aug["dy"] + height, aug["dx"]:aug["dx"] + width]
    if aug["flip"]:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------- samplers


def views_count(cfg: SamplerConfig, source: Source) -> int:
    """Samples in a views set: every real image times K views."""
    return len(source) * cfg.views


def set_size(cfg: SamplerConfig, source: Source, samples: int | None) -> int:
    if cfg.kind == "views":
        total = views_count(cfg, source)
        return total if samples is None else min(samples, total)
    if samples is None:
        raise ValueError(f"sampler {cfg.kind!r} needs a sample count")
    return samples


def view_order(seed: int, source: Source) -> np.ndarray:
    """The order in which a views set visits the real images: a seeded permutation, so each
    shard holds many classes even when the source is sorted by class."""
    return np.random.default_rng([seed, SET_STREAM]).permutation(len(source))


def draw_params(
    cfg: SamplerConfig, source: Source, rng: np.random.Generator, position: int, order: np.ndarray
) -> dict[str, Any]:
    """Parameters of the sample at global ``position`` of the set (JSON values only)."""
    if cfg.kind == "views":
        slot, view = divmod(position, cfg.views)
        image = order[slot]
        aug = identity_aug(source.pad) if view == 0 else draw_aug(rng, source.pad, source.flip)
        return {"image": int(image), "view": int(view), "aug": aug}
    if cfg.kind == "mix":
        n = len(source)
        i, j = int(rng.integers(0, n)), int(rng.integers(0, n))
        lam = float(rng.uniform(0.0, 1.0))
        augment = cfg.augment
        return {
            "i": i,
            "j": j,
            "lam": lam,
            "aug_i": draw_aug(rng, source.pad, source.flip) if augment else identity_aug(source.pad),
            "aug_j": draw_aug(rng, source.pad, source.flip) if augment else identity_aug(source.pad),
        }
    raise ValueError(f"unknown sampler {cfg.kind!r}")


def sample_label(kind: str, params: dict[str, Any], source: Source) -> int:
    """The real label a sample carries (views of a real image), or -1 (mixes have none)."""
    return int(source.labels[params["image"]]) if kind == "views" else -1


def mix_pixels(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """x = λ·a + (1−λ)·b in float64, rounded to uint8 (the stored, labelled image)."""
    mixed = lam * a.astype(np.float64) + (1.0 - lam) * b.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def apply_params(kind: str, params: dict[str, Any], source: Source) -> np.ndarray:
    """Make the uint8 HWC image of a sample from its parameters (also used for replay)."""
    if kind == "views":
        return apply_aug(source.image(params["image"]), params["aug"], source.pad)
    if kind == "mix":
        a = apply_aug(source.image(params["i"]), params["aug_i"], source.pad)
        b = apply_aug(source.image(params["j"]), params["aug_j"], source.pad)
        return mix_pixels(a, b, params["lam"])
    raise ValueError(f"unknown sampler {kind!r}")


def draw_shard(
    cfg: SamplerConfig, source: Source, seed: int, shard: int, samples_per_shard: int, total: int
) -> list[dict[str, Any]]:
    """Parameters of every sample of one shard: a pure function of (config, seed, shard)."""
    order = view_order(seed, source) if cfg.kind == "views" else np.arange(0)
    first = shard * samples_per_shard
    return [
        draw_params(cfg, source, sample_rng(seed, shard, index), first + index, order)
        for index in range(min(samples_per_shard, total - first))
    ]
