"""Samplers that blend two real images: XCL-Mix, TLmixup and TLCutMix.

``mix`` (XCL eq. 8) and ``mixup`` blend pixels, x = λ·a + (1−λ)·b, with λ ~ U[0, 1] and
λ ~ Beta(α, α) respectively; ``cutmix`` pastes a box of b into a (Yun et al.), the box having
area (1−λ)·H·W before clipping at the border and λ recomputed from the clipped box. The
partners get the source's standard augmentation first when ``augment`` is on (TLmixup /
TLCutMix mix the augmented images). None of them carries a label: the teachers give it.
"""

from __future__ import annotations

import math

import numpy as np

from core.config import SamplerConfig
from core.sample_apply import apply_cutmix, apply_mix, mix_pixels  # noqa: F401  (mix_pixels: re-exported)
from core.sources import Source
from stages.samplers.base import Params, Sampler, source_aug


def _partners(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    n = len(source)
    return {"i": int(rng.integers(0, n)), "j": int(rng.integers(0, n))}


def _augs(cfg: SamplerConfig, source: Source, rng: np.random.Generator, partners: Params) -> Params:
    return {"aug_i": source_aug(cfg, source, rng, partners["i"]), "aug_j": source_aug(cfg, source, rng, partners["j"])}


def draw_mix(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    partners = _partners(cfg, source, rng)
    lam = float(rng.uniform(0.0, 1.0))
    return {**partners, "lam": lam, **_augs(cfg, source, rng, partners)}


def draw_mixup(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    partners = _partners(cfg, source, rng)
    lam = float(rng.beta(cfg.alpha, cfg.alpha))
    return {**partners, "lam": lam, **_augs(cfg, source, rng, partners)}


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The CutMix box ``(y0, y1, x0, x1)`` of sides √(1−λ)·(H, W) centred at (cy, cx), clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    return (max(y0, 0), min(y0 + cut_h, height), max(x0, 0), min(x0 + cut_w, width))


def draw_cutmix(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    partners = _partners(cfg, source, rng)
    drawn = float(rng.beta(cfg.alpha, cfg.alpha))
    height, width = source.shape[:2]
    y0, y1, x0, x1 = cutmix_box(drawn, height, width, int(rng.integers(0, height)), int(rng.integers(0, width)))
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the share of a after clipping
    return {**partners, "lam": lam, "lam_drawn": drawn, "box": [y0, y1, x0, x1], **_augs(cfg, source, rng, partners)}


SAMPLERS = {
    "mix": Sampler(draw_mix, apply_mix, keeps_label=False),
    "mixup": Sampler(draw_mixup, apply_mix, keeps_label=False),
    "cutmix": Sampler(draw_cutmix, apply_cutmix, keeps_label=False),
}
