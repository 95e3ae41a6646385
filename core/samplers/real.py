"""Samplers that transform one real image and keep its label: views, noise, Cutout.

* ``views``: the source's standard augmentation (random crop, flip; or the image contract's
  random-resized crop). A views-only set enumerates the source, every image × K views.
* ``noise``: a real image plus pixel-wise Gaussian noise of std ``sigma`` (pixel units in
  [0, 1]; XCL Table 8 "Gaussian noise augmentation"); the noise field's seed is stored.
* ``cutout``: a square of side ``size``·min(H, W) at a random centre, clipped, set to 0.

Their replay columns: ``image`` and its view (prefix ``aug_``), then their own.
"""

from __future__ import annotations

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
    draw_seed,
    real_image,
    source_aug,
    to_uint8,
)
from core.samplers.columns import (
    RawSize,
    flag,
    get_view,
    image_problems,
    index_dtype,
    pixel_box_problems,
    put_view,
    view_fields,
    view_problems,
)

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout
    from core.sources import Source

AUGMENT = "standard augmentation of real images first"


class OneImage(Sampler):
    """A sampler of one real image under a view: ``{"image": i, "aug": view, ...}``."""

    keeps_label = True
    image_columns = ("image",)

    def draw_image(self, augment: bool, source: Source, rng: np.random.Generator) -> Params:
        image = int(rng.integers(0, len(source)))
        return {"image": image, "aug": source_aug(augment, source, rng, image)}

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        return self.draw_image(options.augment, source, rng)

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        return real_image(source, params["image"], params["aug"], raw)

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [("image", index_dtype(layout.images), ()), *view_fields(layout, "aug_")]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        row: dict[str, Any] = {"image": int(params["image"])}
        put_view(layout, row, "aug_", params["aug"])
        return row

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {"image": int(row["image"]), "aug": get_view(layout, row, "aug_")}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        image_problems(found, layout, records, rows, "image")
        view_problems(found, layout, records, rows, "aug_", "image", raw_size)


# ---------------------------------------------------------------- views


class ViewsOptions(SamplerOptions):
    kind: Literal["views"] = Field(description="the sampler")
    views: int = Field(8, ge=1, description="views: images per real sample (view 0 = the image)")

    def views_per_image(self) -> int:
        return self.views


class Views(OneImage):
    kind = "views"
    options = ViewsOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        return self.draw_image(True, source, rng)

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        view = [("view", "u1" if layout.views <= 256 else "u2", ())] if layout.enumerated else []
        return [*super().columns(layout), *view]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        return {**super().encode(params, layout), **({"view": int(params["view"])} if layout.enumerated else {})}

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {**super().decode(row, layout), **({"view": int(row["view"])} if layout.enumerated else {})}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        super().problems(found, layout, records, rows, raw_size)
        if layout.enumerated:
            view = records["view"]
            flag(found, rows & (view >= layout.views), lambda r: f"view {int(view[r])} beyond the {layout.views} views")


# ---------------------------------------------------------------- noise


class NoiseOptions(SamplerOptions):
    kind: Literal["noise"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)
    sigma: float = Field(0.1, gt=0, description="noise: std of pixel noise, in [0, 1] pixel units")


class Noise(OneImage):
    """The view plus Gaussian noise of std ``sigma`` (pixel units in [0, 1]) from the stored seed."""

    kind = "noise"
    options = NoiseOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        return {**self.draw_image(options.augment, source, rng), "sigma": options.sigma, "seed": draw_seed(rng)}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        image = super().apply(params, source, raw)
        noise = np.random.default_rng(params["seed"]).standard_normal(image.shape)
        return to_uint8(image.astype(np.float64) + 255.0 * params["sigma"] * noise)

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [*super().columns(layout), ("sigma", "f8", ()), ("seed", "u8", ())]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        return {**super().encode(params, layout), "seed": int(params["seed"]), "sigma": float(params["sigma"])}

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {**super().decode(row, layout), "sigma": float(row["sigma"]), "seed": int(row["seed"])}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        super().problems(found, layout, records, rows, raw_size)
        sigma = records["sigma"]
        flag(found, rows & ~(np.isfinite(sigma) & (sigma >= 0)), lambda r: f"sigma {float(sigma[r])} is not ≥ 0")


# ---------------------------------------------------------------- cutout


class CutoutOptions(SamplerOptions):
    kind: Literal["cutout"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)
    size: float = Field(0.5, gt=0, le=1, description="cutout: side of the square, as a fraction of the image side")


class Cutout(OneImage):
    """The view with the stored box ``[y0, y1, x0, x1]`` set to 0."""

    kind = "cutout"
    options = CutoutOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        params = self.draw_image(options.augment, source, rng)
        height, width = source.shape[:2]
        side = max(1, int(round(options.size * min(height, width))))
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        y0, x0 = cy - side // 2, cx - side // 2
        return {**params, "box": [max(y0, 0), min(y0 + side, height), max(x0, 0), min(x0 + side, width)]}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        image = super().apply(params, source, raw).copy()
        y0, y1, x0, x1 = params["box"]
        image[y0:y1, x0:x1] = 0
        return image

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [*super().columns(layout), ("box", "u2", (4,))]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        return {**super().encode(params, layout), "box": [int(v) for v in params["box"]]}

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {**super().decode(row, layout), "box": [int(v) for v in row["box"]]}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        super().problems(found, layout, records, rows, raw_size)
        pixel_box_problems(found, layout, records, rows)
