"""A model's input contract: how pixels must be fed to it, and the one resize everyone uses.

A checkpoint's ``input`` is ``{size: [h, w], channels, mean, std}`` with the optional
``interpolation`` (``bilinear`` | ``bicubic`` | ``nearest``; default ``bilinear``, what every
checkpoint written before it meant) and ``crop_pct`` (the center-crop fraction of timm's eval
transform; default 1, no crop). Teachers of an ensemble, students and the evaluation all resize
through :func:`resize`, so a member sees the same pixels wherever it runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from core.errors import UserError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEFAULT_INTERPOLATION = "bilinear"


def interpolation_of(spec: dict[str, Any]) -> str:
    return str(spec.get("interpolation", DEFAULT_INTERPOLATION))


def crop_pct_of(spec: dict[str, Any]) -> float:
    return float(spec.get("crop_pct", 1.0))


def size_of(spec: dict[str, Any]) -> tuple[int, int]:
    return int(spec["size"][0]), int(spec["size"][1])


def check_contract(spec: dict[str, Any], where: str) -> None:
    """Refuse a contract the stages could not apply (one line naming ``where``)."""
    channels = spec.get("channels")
    size = spec.get("size")
    if not isinstance(channels, int) or channels < 1 or not isinstance(size, list | tuple) or len(size) != 2:
        raise UserError(f"{where}: input contract lacks channels/size (size {size}, channels {channels})")
    if min(int(s) for s in size) < 1:
        raise UserError(f"{where}: input size {list(size)} must be positive")
    for key in ("mean", "std"):
        values = spec.get(key)
        if not isinstance(values, list | tuple) or len(values) not in (1, channels):
            raise UserError(f"{where}: input {key} {values} must have 1 or {channels} values (one per channel)")
    if min(float(s) for s in spec["std"]) <= 0:
        raise UserError(f"{where}: input std {list(spec['std'])} must be > 0")
    if interpolation_of(spec) not in INTERPOLATIONS:
        raise UserError(f"{where}: input interpolation {spec['interpolation']!r} is not one of {list(INTERPOLATIONS)}")
    if not 0 < crop_pct_of(spec) <= 1:
        raise UserError(f"{where}: input crop_pct {spec['crop_pct']} must be in (0, 1]")


def resolve_contract(published: dict[str, Any] | None, given: dict[str, Any], where: str) -> dict[str, Any]:
    """The contract a model is fed by: the library's published one, each field the config gives
    in its place. Without a published contract, ``size``, ``mean`` and ``std`` must be given."""
    spec = {**(published or {}), **given}
    missing = [key for key in ("size", "channels", "mean", "std") if key not in spec]
    if missing:
        raise UserError(f"{where}: no published input contract for this arch; give input: {{{', '.join(missing)}}} "
                        "(what the weights were trained with)")
    contract = {"size": [int(s) for s in spec["size"]], "channels": int(spec["channels"]),
                "mean": [float(v) for v in spec["mean"]], "std": [float(v) for v in spec["std"]],
                "interpolation": str(spec.get("interpolation", DEFAULT_INTERPOLATION)),
                "crop_pct": float(spec.get("crop_pct", 1.0))}
    check_contract(contract, where)
    return contract


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Float NCHW pixels in [0, 1] → ``size`` with ``interpolation``, antialiased when shrinking
    (bilinear, bicubic; nearest takes pixels as they are). Bicubic overshoot is clamped to [0, 1],
    as PIL's resize of 8-bit images (timm's eval transform) clamps it."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    out = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out
