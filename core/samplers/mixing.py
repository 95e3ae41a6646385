"""Samplers that blend two real images: XCL-Mix, TLmixup and TLCutMix.

``mix`` (XCL eq. 8) and ``mixup`` blend pixels, x = λ·a + (1−λ)·b, with λ ~ U[0, 1] and
λ ~ Beta(α, α) respectively; ``cutmix`` pastes a box of b into a (Yun et al.), the box having
area (1−λ)·H·W before clipping at the border and λ recomputed from the clipped box. The
partners get the source's standard augmentation first when ``augment`` is on (TLmixup /
TLCutMix mix the augmented images). None of them carries a label: the teachers give it.

Replay columns: ``i``, ``j``, ``lam`` (float64: exact, so the rebuilt blend is bit-identical to
the one the teachers labelled), the two views (``aug_i_``, ``aug_j_``); ``cutmix`` adds
``lam_drawn`` and its ``box`` ``[y0, y1, x0, x1]``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from core.samplers.base import (
    Params,
    Problem,
    Raw,
    ReplayField,
    Sampler,
    SamplerOptions,
    real_image,
    source_aug,
    to_uint8,
)
from core.samplers.columns import (
    RawSize,
    flag,
    get_view,
    image_problems,
    in_unit,
    index_dtype,
    pixel_box_problems,
    put_view,
    view_fields,
    view_problems,
)
from core.samplers.real import AUGMENT

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout
    from core.sources import Source

ALPHA = "lambda ~ Beta(alpha, alpha)"


def mix_pixels(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """x = λ·a + (1−λ)·b in float64, rounded to uint8 (the stored, labelled image)."""
    return to_uint8(lam * a.astype(np.float64) + (1.0 - lam) * b.astype(np.float64))


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The CutMix box ``(y0, y1, x0, x1)`` of sides √(1−λ)·(H, W) centred at (cy, cx), clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    return (max(y0, 0), min(y0 + cut_h, height), max(x0, 0), min(x0 + cut_w, width))


class TwoImages(Sampler):
    """A blend of real images ``i`` and ``j`` under their views at ``lam``."""

    image_columns = ("i", "j")

    def partners(self, source: Source, rng: np.random.Generator) -> Params:
        n = len(source)
        return {"i": int(rng.integers(0, n)), "j": int(rng.integers(0, n))}

    def draw_lam(self, options: Any, rng: np.random.Generator) -> float:
        raise NotImplementedError

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        """Partners i, j, then λ, then the partners' views (this order of draws is stored)."""
        pair = self.partners(source, rng)
        lam = self.draw_lam(options, rng)
        return {**pair, "lam": lam, **self.views(options, source, rng, pair)}

    def views(self, options: Any, source: Source, rng: np.random.Generator, pair: Params) -> Params:
        return {"aug_i": source_aug(options.augment, source, rng, pair["i"]),
                "aug_j": source_aug(options.augment, source, rng, pair["j"])}

    def pair(self, params: Params, source: Source, raw: Raw | None) -> tuple[np.ndarray, np.ndarray]:
        return (real_image(source, params["i"], params["aug_i"], raw),
                real_image(source, params["j"], params["aug_j"], raw))

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        a, b = self.pair(params, source, raw)
        return mix_pixels(a, b, params["lam"])

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        image = index_dtype(layout.images)
        return [("i", image, ()), ("j", image, ()), ("lam", "f8", ()),
                *view_fields(layout, "aug_i_"), *view_fields(layout, "aug_j_")]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        row: dict[str, Any] = {"i": int(params["i"]), "j": int(params["j"]), "lam": float(params["lam"])}
        put_view(layout, row, "aug_i_", params["aug_i"])
        put_view(layout, row, "aug_j_", params["aug_j"])
        return row

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {"i": int(row["i"]), "j": int(row["j"]), "lam": float(row["lam"]),
                "aug_i": get_view(layout, row, "aug_i_"), "aug_j": get_view(layout, row, "aug_j_")}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        lam = records["lam"]
        flag(found, rows & ~in_unit(lam), lambda r: f"lam {float(lam[r])} outside [0, 1]")
        for prefix, image in (("aug_i_", "i"), ("aug_j_", "j")):
            image_problems(found, layout, records, rows, image)
            view_problems(found, layout, records, rows, prefix, image, raw_size)


class MixOptions(SamplerOptions):
    kind: Literal["mix"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)


class Mix(TwoImages):
    """XCL-Mix: λ ~ U[0, 1]."""

    kind = "mix"
    options = MixOptions

    def draw_lam(self, options: Any, rng: np.random.Generator) -> float:
        return float(rng.uniform(0.0, 1.0))


class MixupOptions(SamplerOptions):
    kind: Literal["mixup"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)
    alpha: float = Field(1.0, gt=0, description=f"mixup: {ALPHA}")


class Mixup(TwoImages):
    """TLmixup: λ ~ Beta(α, α)."""

    kind = "mixup"
    options = MixupOptions

    def draw_lam(self, options: Any, rng: np.random.Generator) -> float:
        return float(rng.beta(options.alpha, options.alpha))


class CutMixOptions(SamplerOptions):
    kind: Literal["cutmix"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)
    alpha: float = Field(1.0, gt=0, description=f"cutmix: {ALPHA}")


class CutMix(TwoImages):
    """TLCutMix: the stored box of the second view pasted into the first."""

    kind = "cutmix"
    options = CutMixOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        pair = self.partners(source, rng)
        drawn = float(rng.beta(options.alpha, options.alpha))
        height, width = source.shape[:2]
        y0, y1, x0, x1 = cutmix_box(drawn, height, width, int(rng.integers(0, height)), int(rng.integers(0, width)))
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the share of a after clipping
        return {**pair, "lam": lam, "lam_drawn": drawn, "box": [y0, y1, x0, x1],
                **self.views(options, source, rng, pair)}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        a, b = self.pair(params, source, raw)
        y0, y1, x0, x1 = params["box"]
        out = a.copy()
        out[y0:y1, x0:x1] = b[y0:y1, x0:x1]
        return out

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [*super().columns(layout), ("lam_drawn", "f8", ()), ("box", "u2", (4,))]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        return {**super().encode(params, layout), "box": [int(v) for v in params["box"]],
                "lam_drawn": float(params["lam_drawn"])}

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {**super().decode(row, layout), "box": [int(v) for v in row["box"]],
                "lam_drawn": float(row["lam_drawn"])}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        super().problems(found, layout, records, rows, raw_size)
        drawn = records["lam_drawn"]
        flag(found, rows & ~in_unit(drawn), lambda r: f"lam_drawn {float(drawn[r])} outside [0, 1]")
        pixel_box_problems(found, layout, records, rows)
