"""``gaussian_image``: every pixel N(0, 1) in the teacher's normalised space (XCL Table 8
"standard Gaussian image"), i.e. ``mean + std·z`` in [0, 1] pixel units, quantised.

``mean`` / ``std`` default to the first teacher's input normalisation (filled at plan time,
:meth:`GaussianImageOptions.resolved`). The noise field is too large to store: its seed is.
Replay columns: ``seed`` uint64, ``mean`` and ``std`` float64 (3,), NaN-padded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from core.errors import UserError
from core.samplers.base import Params, Problem, Raw, ReplayField, Sampler, SamplerOptions, draw_seed, to_uint8
from core.samplers.columns import RawSize, flag

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout
    from core.sources import Source

CHANNELS = 3  # mean / std: one or three values, NaN-padded to three


class GaussianImageOptions(SamplerOptions):
    kind: Literal["gaussian_image"] = Field(description="the sampler")
    mean: list[float] | None = Field(None, description="pixel mean in [0, 1] units (default: the first teacher's)")
    std: list[float] | None = Field(None, description="pixel std in [0, 1] units (default: the first teacher's)")

    @model_validator(mode="after")
    def _mean_and_std(self) -> GaussianImageOptions:
        if (self.mean is None) != (self.std is None) or (self.std is not None and min(self.std) <= 0):
            raise ValueError("gaussian_image: give both mean and std (std > 0), or neither")
        return self

    def resolved(self, teacher_input: dict[str, Any], channels: int) -> GaussianImageOptions:
        out = self
        if self.mean is None:
            out = self.model_copy(update={"mean": [float(v) for v in teacher_input["mean"]],
                                          "std": [float(v) for v in teacher_input["std"]]})
        if len(out.mean or []) not in (1, channels):
            raise UserError(f"gaussian_image: mean/std have {len(out.mean or [])} values, the images have "
                            f"{channels} channels")
        return out


class GaussianImage(Sampler):
    kind = "gaussian_image"
    options = GaussianImageOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        if options.mean is None or options.std is None:
            raise ValueError("gaussian_image needs mean and std (the plan fills them from the first teacher)")
        return {"seed": draw_seed(rng), "mean": list(options.mean), "std": list(options.std)}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        height, width, channels = source.shape
        mean, std = (np.resize(np.asarray(params[k], np.float64), channels) for k in ("mean", "std"))
        z = np.random.default_rng(params["seed"]).standard_normal((height, width, channels))
        return to_uint8(255.0 * (mean + std * z))

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [("seed", "u8", ()), ("mean", "f8", (CHANNELS,)), ("std", "f8", (CHANNELS,))]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        row: dict[str, Any] = {"seed": int(params["seed"])}
        for name in ("mean", "std"):
            values = [float(v) for v in params[name]]
            row[name] = values + [math.nan] * (CHANNELS - len(values))
        return row

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        return {"seed": int(row["seed"]),
                **{name: [float(v) for v in row[name] if not math.isnan(v)] for name in ("mean", "std")}}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        mean, std = records["mean"], records["std"]  # NaN-padded to three channels
        given = ~np.isnan(std)
        sound = given[:, 0] & np.all(np.isnan(mean) == ~given, axis=1) & np.all(
            ~given | (np.isfinite(mean) & np.isfinite(std) & (std > 0)), axis=1)
        flag(found, rows & ~sound, lambda r: f"mean {mean[r].tolist()} / std {std[r].tolist()} are not finite "
                                             f"values (std > 0)")
