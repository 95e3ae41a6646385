"""``autoaugment``: torchvision's AutoAugment policies (cifar10, imagenet, svhn) or RandAugment.

The policy's random choices are drawn here with the sample's RNG (mirroring
``torchvision.transforms.AutoAugment.forward`` / ``RandAugment.forward``) and stored as the list
of ops actually applied, ``[[name, magnitude], ...]``; ``apply`` runs torchvision's ``_apply_op``
on them. Replay columns: ``policy`` uint8 into :data:`POLICIES`, ``op`` uint8 (n,) into
:data:`OPS` (255: none), ``magnitude`` float64 (n,).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from core.errors import FormatError
from core.samplers.base import Params, Problem, Raw, ReplayField, SamplerOptions
from core.samplers.columns import RawSize, flag
from core.samplers.real import AUGMENT, OneImage

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout
    from core.sources import Source

POLICIES = ("cifar10", "imagenet", "svhn", "randaugment")
# torchvision's AutoAugment and RandAugment op names (both spaces), in a fixed order.
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Invert", "Posterize", "Rotate",
       "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
NO_OP = 255
AUTOAUGMENT_OPS = 2  # every AutoAugment sub-policy has two ops
MagnitudeSpace = dict[str, tuple[list[float], bool]]  # op name → (magnitude per bin, signed)


class AutoAugmentOptions(SamplerOptions):
    kind: Literal["autoaugment"] = Field(description="the sampler")
    augment: bool = Field(True, description=AUGMENT)
    policy: Literal["cifar10", "imagenet", "svhn", "randaugment"] = Field(
        "cifar10", description="torchvision's AutoAugment policy, or randaugment")
    num_ops: int = Field(2, ge=1, description="randaugment: ops per image")
    magnitude: int = Field(9, ge=0, description="randaugment: magnitude bin")
    magnitude_bins: int = Field(31, ge=2, description="randaugment: number of magnitude bins")

    @model_validator(mode="after")
    def _magnitude_in_bins(self) -> AutoAugmentOptions:
        if self.policy == "randaugment" and self.magnitude >= self.magnitude_bins:
            raise ValueError(f"magnitude {self.magnitude} must be below magnitude_bins {self.magnitude_bins}")
        return self

    def ops_per_sample(self) -> int:
        return self.num_ops if self.policy == "randaugment" else AUTOAUGMENT_OPS


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


def _magnitude(space: MagnitudeSpace, name: str, bin_: int | None, rng: np.random.Generator) -> float:
    magnitudes, signed = space[name]
    value = float(magnitudes[bin_]) if bin_ is not None and len(magnitudes) > 1 else 0.0
    return -value if signed and rng.integers(0, 2) == 0 else value


class AutoAugment(OneImage):
    kind = "autoaugment"
    options = AutoAugmentOptions

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        """The ops the policy applies to this sample, as ``[[name, magnitude], ...]``."""
        params = self.draw_image(options.augment, source, rng)
        height, width = source.shape[:2]
        ops: list[list[Any]] = []
        if options.policy == "randaugment":
            _, space = _policy("randaugment", options.magnitude_bins, height, width)
            names = list(space)
            for _ in range(options.num_ops):
                name = names[int(rng.integers(0, len(names)))]
                ops.append([name, _magnitude(space, name, options.magnitude, rng)])
        else:
            policies, space = _policy(options.policy, 10, height, width)
            for name, probability, bin_ in policies[int(rng.integers(0, len(policies)))]:
                applied = rng.random() <= probability
                magnitude = _magnitude(space, name, bin_, rng)
                if applied:
                    ops.append([name, magnitude])
        return {**params, "policy": options.policy, "ops": ops}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        """The view, then the stored ops (torchvision's ``_apply_op``)."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.autoaugment import _apply_op

        image = torch.from_numpy(super().apply(params, source, raw)).permute(2, 0, 1).contiguous()
        for name, magnitude in params["ops"]:
            image = _apply_op(image, name, float(magnitude), interpolation=InterpolationMode.NEAREST, fill=None)
        return np.ascontiguousarray(image.permute(1, 2, 0).numpy())

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        return [*super().columns(layout), ("policy", "u1", ()), ("op", "u1", (layout.ops,)),
                ("magnitude", "f8", (layout.ops,))]

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        ops, slots = params["ops"], layout.ops
        if len(ops) > slots:
            raise FormatError(f"autoaugment sample has {len(ops)} ops, the layout holds {slots}")
        return {**super().encode(params, layout), "policy": POLICIES.index(params["policy"]),
                "op": [OPS.index(name) for name, _ in ops] + [NO_OP] * (slots - len(ops)),
                "magnitude": [float(m) for _, m in ops] + [0.0] * (slots - len(ops))}

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        ops = [[OPS[int(op)], float(m)] for op, m in zip(row["op"], row["magnitude"], strict=True) if int(op) != NO_OP]
        return {**super().decode(row, layout), "policy": POLICIES[int(row["policy"])], "ops": ops}

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: RawSize | None) -> None:
        super().problems(found, layout, records, rows, raw_size)
        policy, op, magnitude = records["policy"], records["op"].astype(np.int64), records["magnitude"]
        flag(found, rows & (policy >= len(POLICIES)),
             lambda r: f"policy code {int(policy[r])} is not one of the {len(POLICIES)} policies")
        unknown = (op >= len(OPS)) & (op != NO_OP)
        flag(found, rows & unknown.any(axis=1),
             lambda r: f"op code {int(op[r][unknown[r]][0])} is not one of the {len(OPS)} ops")
        flag(found, rows & ~np.isfinite(magnitude).all(axis=1),
             lambda r: f"magnitudes {magnitude[r].tolist()} are not finite")
