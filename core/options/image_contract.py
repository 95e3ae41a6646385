"""The job's image contract: how a real image of any size becomes an image of one size.

Every transform here is "a box of the source image, resized to the contract's size, then maybe
flipped" — the FKD / ml-dr way of storing a view as its parameters, so a view replays from
(source image, box, flip):

- ``random_resized_crop`` views draw the box with torchvision's ``RandomResizedCrop`` semantics
  (area ∈ ``scale`` of the image, aspect ratio log-uniform in ``ratio``, ten tries, then the
  central crop with the ratio clamped) and store ``{"box": [top, left, height, width], "flip"}``;
- ``resize_crop`` views (the default) resize the short side to the size and keep the centre —
  the identity when the image already has the size — then apply the source's standard pad-and-
  crop and flip, stored as ``{"dx", "dy", "flip"}`` exactly as before there was a contract;
- evaluation is timm's: resize the short side to ``size / crop_pct``, keep the centre ``size``
  (torchvision's ``Resize`` + ``CenterCrop``), for every teacher, student and test-split
  evaluation, and for the unaugmented view 0 of a ``random_resized_crop`` views set.

Resizing is PIL's (antialiased when it shrinks, integer arithmetic on uint8: the same bytes on
every machine). Nothing here draws from a global RNG: ``draw_*`` take the sample's generator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from core.options.image import ImageConfig

__all__ = ["apply_view", "draw_random_resized_crop", "eval_image", "resize_center_crop", "resized_box", "view_box"]

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}
Box = tuple[int, int, int, int]  # top, left, height, width in source pixels


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _array(pil: Image.Image) -> np.ndarray:
    out = np.array(pil)  # a writable copy (torch refuses read-only arrays)
    return out[:, :, None] if out.ndim == 2 else out


def resized_box(image: np.ndarray, box: Box, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """The ``box`` of a uint8 HWC image resized to ``size`` (height, width): torchvision's
    ``resized_crop`` of a PIL image (crop, then resize). A box that already has the size is cut
    out exactly (no resampling)."""
    top, left, height, width = (int(v) for v in box)
    crop = np.ascontiguousarray(image[top:top + height, left:left + width])
    if (height, width) == tuple(size):
        return crop
    return _array(_pil(crop).resize((size[1], size[0]), RESAMPLE[interpolation]))


def resize_center_crop(image: np.ndarray, size: tuple[int, int], crop_pct: float, interpolation: str) -> np.ndarray:
    """timm's evaluation transform: resize (a square size: the short side to ⌊size / crop_pct⌋,
    torchvision's ``Resize(int)``; otherwise to ⌊h / crop_pct⌋ × ⌊w / crop_pct⌋), then the
    centre crop of ``size`` (torchvision's ``CenterCrop``). An image at the size with crop_pct 1
    passes through unchanged."""
    height, width = image.shape[:2]
    if size[0] == size[1]:
        short = math.floor(size[0] / crop_pct)
        if height <= width:
            scaled = (short, int(short * width / height))
        else:
            scaled = (int(short * height / width), short)
    else:
        scaled = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    if scaled != (height, width):
        image = _array(_pil(image).resize((scaled[1], scaled[0]), RESAMPLE[interpolation]))
    top = int(round((scaled[0] - size[0]) / 2.0))
    left = int(round((scaled[1] - size[1]) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"centre crop {size} larger than the resized image {scaled}")
    return np.ascontiguousarray(image[top:top + size[0], left:left + size[1]])


def eval_image(image: np.ndarray, contract: ImageConfig) -> np.ndarray:
    """The evaluation image: resized, then the centre ``crop_pct`` kept, at the contract's size."""
    return resize_center_crop(image, contract.hw, contract.eval_crop_pct, contract.interpolation)


def base_image(image: np.ndarray, contract: ImageConfig) -> np.ndarray:
    """``resize_crop``'s starting point: the short side resized to the size, the centre kept."""
    return resize_center_crop(image, contract.hw, 1.0, contract.interpolation)


def draw_random_resized_crop(rng: np.random.Generator, height: int, width: int,
                             scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` with the sample's numpy generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_ratio[0], log_ratio[1])))
        box_w = int(round(math.sqrt(target_area * aspect)))
        box_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return (top, left, box_h, box_w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        box_w, box_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        box_h, box_w = height, int(round(height * max(ratio)))
    else:
        box_w, box_h = width, height
    return ((height - box_h) // 2, (width - box_w) // 2, box_h, box_w)


def view_box(params: dict[str, Any]) -> Box:
    """The stored box of a ``random_resized_crop`` view, checked."""
    box = params.get("box")
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise ValueError(f"a random_resized_crop view stores box [top, left, height, width], got {box!r}")
    return tuple(int(v) for v in box)  # type: ignore[return-value]


def pad_crop(image: np.ndarray, aug: dict[str, Any], pad: int) -> np.ndarray:
    """The standard augmentation: a crop at offset (dy, dx) of the image zero-padded by ``pad``,
    then an optional horizontal flip."""
    height, width = image.shape[:2]
    if pad:
        padded = np.zeros((height + 2 * pad, width + 2 * pad, image.shape[2]), dtype=image.dtype)
        padded[pad:pad + height, pad:pad + width] = image
        image = padded[aug["dy"]:aug["dy"] + height, aug["dx"]:aug["dx"] + width]
    if aug["flip"]:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def apply_view(image: np.ndarray, aug: dict[str, Any], contract: ImageConfig | None, pad: int) -> np.ndarray:
    """A real image after its stored view parameters: a box + flip (``random_resized_crop``), the
    evaluation image + flip (``{"eval": 1, "flip"}``: a contract's unaugmented view), or the
    pad-and-crop of the resized image (``resize_crop``, and every source without a contract)."""
    if contract is not None and ("box" in aug or "eval" in aug):
        out = resized_box(image, view_box(aug), contract.hw, contract.interpolation) if "box" in aug \
            else eval_image(image, contract)
        return np.ascontiguousarray(out[:, ::-1]) if aug.get("flip") else out
    if contract is not None:
        image = base_image(image, contract)
    return pad_crop(image, aug, pad)
