"""Samplers that transform one real image, and the synthetic-noise baseline.

* ``views``: the source's standard augmentation (random crop, flip).
* ``noise``: a real image plus pixel-wise Gaussian noise of std ``sigma`` (pixel units in
  [0, 1]; XCL Table 8 "Gaussian noise augmentation").
* ``gaussian_image``: every pixel N(0, 1) in the teacher's normalised space, i.e.
  ``mean + std·z`` in [0, 1] pixel units, quantised (XCL Table 8 "standard Gaussian image").
* ``autoaugment``: torchvision's AutoAugment policies (cifar10, imagenet, svhn) or RandAugment;
  the policy's random choices are drawn here and stored as the list of ops actually applied.
* ``cutout``: a square of side ``size``·min(H, W) at a random centre, clipped, set to 0.

Noise fields are too large to store: their seed is stored and replays them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from core.config import SamplerConfig
from core.sample_apply import apply_autoaugment, apply_cutout, apply_gaussian_image, apply_noise, apply_real
from core.sources import Source
from stages.samplers.base import Params, Sampler, draw_seed, source_aug


def _real(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    image = int(rng.integers(0, len(source)))
    return {"image": image, "aug": source_aug(cfg, source, rng, image)}


# ---------------------------------------------------------------- noise


def draw_noise(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    return {**_real(cfg, source, rng), "sigma": cfg.sigma, "seed": draw_seed(rng)}




def draw_gaussian_image(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    if cfg.mean is None or cfg.std is None:
        raise ValueError("gaussian_image needs mean and std (the plan fills them from the first teacher)")
    return {"seed": draw_seed(rng), "mean": list(cfg.mean), "std": list(cfg.std)}




# ---------------------------------------------------------------- AutoAugment / RandAugment

MagnitudeSpace = dict[str, tuple[list[float], bool]]  # op name → (magnitude per bin, signed)


@lru_cache(maxsize=8)
def _policy(policy: str, num_bins: int, height: int, width: int) -> tuple[list[Any], MagnitudeSpace]:
    """torchvision's policy table (AutoAugment) and magnitude space for an image size."""
    from torchvision.transforms import autoaugment as tv

    if policy == "randaugment":
        space = tv.RandAugment(num_magnitude_bins=num_bins)._augmentation_space(num_bins, (height, width))
        policies: list[Any] = []
    else:
        augment = tv.AutoAugment(tv.AutoAugmentPolicy(policy))
        space = augment._augmentation_space(10, (height, width))
        policies = augment.policies
    return policies, {name: (np.atleast_1d(m.numpy()).astype(float).tolist(), signed)
                      for name, (m, signed) in space.items()}


def _magnitude(space: MagnitudeSpace, name: str, bin_: int | None,
               rng: np.random.Generator) -> float:
    magnitudes, signed = space[name]
    value = float(magnitudes[bin_]) if bin_ is not None and len(magnitudes) > 1 else 0.0
    return -value if signed and rng.integers(0, 2) == 0 else value


def draw_autoaugment(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    """The ops the policy applies to this sample, as ``[[name, magnitude], ...]`` (mirrors
    ``torchvision.transforms.AutoAugment.forward`` / ``RandAugment.forward`` with our RNG)."""
    params = _real(cfg, source, rng)
    height, width = source.shape[:2]
    ops: list[list[Any]] = []
    if cfg.policy == "randaugment":
        _, space = _policy("randaugment", cfg.magnitude_bins, height, width)
        names = list(space)
        for _ in range(cfg.num_ops):
            name = names[int(rng.integers(0, len(names)))]
            ops.append([name, _magnitude(space, name, cfg.magnitude, rng)])
    else:
        policies, space = _policy(cfg.policy, 10, height, width)
        for name, probability, bin_ in policies[int(rng.integers(0, len(policies)))]:
            applied = rng.random() <= probability
            magnitude = _magnitude(space, name, bin_, rng)
            if applied:
                ops.append([name, magnitude])
    return {**params, "policy": cfg.policy, "ops": ops}




# ---------------------------------------------------------------- cutout


def draw_cutout(cfg: SamplerConfig, source: Source, rng: np.random.Generator) -> Params:
    params = _real(cfg, source, rng)
    height, width = source.shape[:2]
    side = max(1, int(round(cfg.size * min(height, width))))
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, x0 = cy - side // 2, cx - side // 2
    return {**params, "box": [max(y0, 0), min(y0 + side, height), max(x0, 0), min(x0 + side, width)]}




SAMPLERS = {
    "views": Sampler(_real, apply_real, keeps_label=True),
    "noise": Sampler(draw_noise, apply_noise, keeps_label=True),
    "gaussian_image": Sampler(draw_gaussian_image, apply_gaussian_image, keeps_label=False),
    "autoaugment": Sampler(draw_autoaugment, apply_autoaugment, keeps_label=True),
    "cutout": Sampler(draw_cutout, apply_cutout, keeps_label=True),
}
