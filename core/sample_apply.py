"""How a sample's stored parameters become its image: the ``apply`` half of every sampler.

A sampler (``stages.samplers``) draws every random choice of a sample as plain values; the
functions here turn those values and the source's real images into the uint8 HWC image, with
no randomness of their own (noise fields come from their stored seed). They live on the core
floor because two floors call them: generation makes each image with them before the teachers
label it, and the student trainer rebuilds the images of a replay set (``store: replay``) with
the very same functions, so what the teachers labelled is what the student sees, bit for bit.
``gan`` samples are made by their generator in batches and have no entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from core.image_contract import apply_view
from core.sources import Source

Params = dict[str, Any]
Raw = Callable[[int], np.ndarray]  # real image i as decoded (``Source.raw``, or images a caller holds)

__all__ = ["APPLY", "Params", "Raw", "apply_params", "mix_pixels", "real_image", "to_uint8"]


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Round float pixels (0..255 scale) to the stored uint8 image."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def real_image(source: Source, index: int, aug: dict[str, Any], raw: Raw | None = None) -> np.ndarray:
    """Real image ``index`` after its stored view parameters, at the source's size; ``raw`` gives
    the decoded image when the caller holds it already (default: ``source.raw``)."""
    return apply_view((raw or source.raw)(index), aug, source.contract, source.pad)


# ---------------------------------------------------------------- one real image


def apply_real(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """``views``: the real image under its view (crop and flip, or a resized box)."""
    return real_image(source, params["image"], params["aug"], raw)


def apply_noise(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """The view plus Gaussian noise of std ``sigma`` (pixel units in [0, 1]) from the stored seed."""
    image = apply_real(params, source, raw)
    noise = np.random.default_rng(params["seed"]).standard_normal(image.shape)
    return to_uint8(image.astype(np.float64) + 255.0 * params["sigma"] * noise)


def apply_gaussian_image(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """Every pixel N(0, 1) in the teacher's normalised space: ``mean + std·z`` in [0, 1] units."""
    height, width, channels = source.shape
    mean, std = (np.resize(np.asarray(params[k], np.float64), channels) for k in ("mean", "std"))
    z = np.random.default_rng(params["seed"]).standard_normal((height, width, channels))
    return to_uint8(255.0 * (mean + std * z))


def apply_autoaugment(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """The view, then the stored AutoAugment / RandAugment ops (torchvision's ``_apply_op``)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import _apply_op

    image = torch.from_numpy(apply_real(params, source, raw)).permute(2, 0, 1).contiguous()
    for name, magnitude in params["ops"]:
        image = _apply_op(image, name, float(magnitude), interpolation=InterpolationMode.NEAREST, fill=None)
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def apply_cutout(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """The view with the stored box ``[y0, y1, x0, x1]`` set to 0."""
    image = apply_real(params, source, raw).copy()
    y0, y1, x0, x1 = params["box"]
    image[y0:y1, x0:x1] = 0
    return image


# ---------------------------------------------------------------- two real images


def _pair(params: Params, source: Source, raw: Raw | None) -> tuple[np.ndarray, np.ndarray]:
    return (real_image(source, params["i"], params["aug_i"], raw),
            real_image(source, params["j"], params["aug_j"], raw))


def mix_pixels(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """x = λ·a + (1−λ)·b in float64, rounded to uint8 (the stored, labelled image)."""
    return to_uint8(lam * a.astype(np.float64) + (1.0 - lam) * b.astype(np.float64))


def apply_mix(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """XCL-Mix and TLmixup: the pixel blend of the two views at the stored λ."""
    a, b = _pair(params, source, raw)
    return mix_pixels(a, b, params["lam"])


def apply_cutmix(params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """TLCutMix: the stored box of the second view pasted into the first."""
    a, b = _pair(params, source, raw)
    y0, y1, x0, x1 = params["box"]
    out = a.copy()
    out[y0:y1, x0:x1] = b[y0:y1, x0:x1]
    return out


APPLY: dict[str, Callable[[Params, Source, Raw | None], np.ndarray]] = {
    "views": apply_real, "noise": apply_noise, "gaussian_image": apply_gaussian_image,
    "autoaugment": apply_autoaugment, "cutout": apply_cutout,
    "mix": apply_mix, "mixup": apply_mix, "cutmix": apply_cutmix,
}


def apply_params(kind: str, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """The uint8 HWC image of a sample of sampler ``kind`` from its stored parameters. ``raw``:
    the real images already decoded by the caller (a trainer rebuilding many samples decodes each
    file once), so generation and trainer make the image with the same code either way."""
    if kind == "gan":
        raise ValueError("gan samples are made in batches by their generator: use "
                         "stages.samplers.generating.generate_images(generator config, params, source)")
    if kind not in APPLY:
        raise ValueError(f"unknown sampler {kind!r}")
    return APPLY[kind](params, source, raw)
