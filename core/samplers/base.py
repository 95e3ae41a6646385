"""What every sampler kind is: its options, how it draws and applies, and its replay columns.

A sampler kind is one class (``core/samplers/<kind>.py``), as a torchvision v2 transform keeps
``make_params`` and ``transform`` together:

* ``options``: its config section, a member of the :data:`core.samplers.SamplerConfig`
  discriminated union (``kind`` picks it); the options it takes are its fields, nothing else;
* ``draw(options, source, rng)``: every random choice of one sample, as plain JSON values (the
  sample's ``params``), from the sample's own ``(seed, shard, index)`` RNG;
* ``apply(params, source, raw)``: the uint8 HWC image from those values, with no randomness of
  its own (noise fields come from a stored seed), so generation and the student trainer make a
  stored sample's image with the same code, bit for bit;
* ``columns`` / ``encode`` / ``decode`` / ``problems``: its parameters as fixed-width replay
  columns (``store: replay``), and the range checks of those columns;
* ``keeps_label`` (a label-preserving transform of one real image) and ``image_columns``
  (which real images a sample reads).

Only ``draw`` sees randomness; everything else is a pure function of the stored values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator

from core.options.image_contract import apply_view, draw_random_resized_crop
from core.options.train import Strict

if TYPE_CHECKING:
    from core.options.generator import GeneratorConfig
    from core.records.replay_params import ParamLayout
    from core.sources import Source

Params = dict[str, Any]
Raw = Callable[[int], np.ndarray]  # real image i as decoded (``Source.raw``, or images a caller holds)
ReplayField = tuple[str, str, tuple[int, ...]]  # column name, numpy dtype, subarray shape
Problem = tuple[int, str]  # (row, what is wrong with it)
NO_IMAGE = -1


# Every kind's options at their defaults, in the order of the single flat sampler section that
# the option classes replaced. A sampler is still dumped in that form (every option, the other
# kinds' at these values): it is what each set's index.json and each student's run spec recorded,
# so their bytes stay the same; reading one back drops another kind's option holding its default.
RECORDED: dict[str, Any] = {
    "views": 8, "augment": True, "alpha": 1.0, "sigma": 0.1, "mean": None, "std": None, "policy": "cifar10",
    "num_ops": 2, "magnitude": 9, "magnitude_bins": 31, "size": 0.5, "generator": None, "classes": None,
    "class_map": None, "mix_classes": True,
}


def _shown(name: str, default: Any, info: SerializationInfo) -> bool:
    """Whether a dump asked for with ``info`` (include, exclude, exclude_defaults…) shows another
    kind's option, which always holds its default."""
    include, exclude = info.include, info.exclude
    return not (info.exclude_defaults or (info.exclude_none and default is None)
                or (include is not None and name not in include) or (exclude is not None and name in exclude))


class SamplerOptions(Strict):
    """The options every sampler has: ``kind`` (the union's tag) and ``share``, its proportion
    when a set has several samplers. Subclasses add their own options as fields."""

    kind: str
    share: float = Field(1.0, gt=0, description="the sampler's proportion of a set's samples")

    @model_validator(mode="before")
    @classmethod
    def _own_options(cls, data: Any) -> Any:
        if isinstance(data, dict):
            foreign = {k for k in data if k not in cls.model_fields}
            stray = sorted(str(k) for k in foreign if k not in RECORDED or data[k] != RECORDED[k])
            if stray:
                takes = [name for name in cls.model_fields if name not in ("kind", "share")]
                raise ValueError(f"sampler {data.get('kind')!r} does not take {stray}; it takes {takes}")
            data = {k: v for k, v in data.items() if k not in foreign}
        return data

    @model_serializer(mode="wrap")
    def _recorded_form(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        own, fields = handler(self), type(self).model_fields
        out = {}
        for name in ("kind", "share", *RECORDED):
            if name in own:
                out[name] = own[name]
            elif name not in fields and _shown(name, RECORDED[name], info):
                out[name] = RECORDED[name]
        return out

    def identity(self) -> dict[str, Any]:
        """What the sampler's samples depend on: its kind, share and its own options."""
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in type(self).model_fields}

    def generator_of(self) -> GeneratorConfig | None:
        """The generator that makes this sampler's images (``gan``), or None."""
        return None

    def views_per_image(self) -> int:
        """Views per real image of an enumerated views set."""
        return 1

    def ops_per_sample(self) -> int:
        """The most AutoAugment ops one sample can store (0: the kind stores none)."""
        return 0

    def resolved(self, teacher_input: dict[str, Any], channels: int) -> SamplerOptions:
        """The options with what they take from the first teacher filled in (at plan time)."""
        return self


class Sampler:
    """One sampler kind (see the module docstring). Instances hold no state."""

    kind: ClassVar[str]
    options: ClassVar[type[SamplerOptions]]
    keeps_label: ClassVar[bool] = False
    generated: ClassVar[bool] = False  # made by a generator in batches: no apply, no replay columns
    image_columns: ClassVar[tuple[str, ...]] = ()  # columns naming the real images it reads

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        raise NotImplementedError

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        raise NotImplementedError

    def images(self, params: Params) -> tuple[int, int]:
        """The real images a sample reads, as two slots (−1: none)."""
        found = [int(params[name]) for name in self.image_columns]
        return (*found, *(NO_IMAGE,) * (2 - len(found)))  # type: ignore[return-value]

    # ------------------------------------------------------------ replay columns

    def columns(self, layout: ParamLayout) -> list[ReplayField]:
        raise NotImplementedError(f"sampler {self.kind!r} has no replay columns")

    def encode(self, params: Params, layout: ParamLayout) -> dict[str, Any]:
        raise NotImplementedError(f"sampler {self.kind!r} has no replay columns")

    def decode(self, row: Any, layout: ParamLayout) -> Params:
        raise NotImplementedError(f"sampler {self.kind!r} has no replay columns")

    def problems(self, found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                 raw_size: Callable[[int], tuple[int, int]] | None) -> None:
        """Append ``(row, problem)`` for each of ``rows`` whose columns are out of range."""


# ---------------------------------------------------------------- drawing and pixels


# Stream ids for set- and shard-level draws; sample indices never reach these values.
SET_STREAM = 0xFFFFFFFF
SHARD_STREAM = 0xFFFFFFFE


def sample_rng(seed: int, shard: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard, index])


def draw_seed(rng: np.random.Generator) -> int:
    """A 63-bit seed for draws too large to store (noise fields): stored, then replayed."""
    return int(rng.integers(0, 2**63 - 1))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Round float pixels (0..255 scale) to the stored uint8 image."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def real_image(source: Source, index: int, aug: dict[str, Any], raw: Raw | None = None) -> np.ndarray:
    """Real image ``index`` after its stored view parameters, at the source's size; ``raw`` gives
    the decoded image when the caller holds it already (default: ``source.raw``)."""
    return apply_view((raw or source.raw)(index), aug, source.contract, source.pad)


def identity_aug(pad: int) -> dict[str, int]:
    return {"dx": pad, "dy": pad, "flip": 0}


def identity_view(source: Source, index: int) -> dict[str, Any]:
    """The unaugmented view of real image ``index``: the evaluation image with a
    ``random_resized_crop`` contract, else no shift and no flip."""
    if source.contract is not None and source.contract.views == "random_resized_crop":
        return {"eval": 1, "flip": 0}
    return identity_aug(source.pad)


def draw_aug(rng: np.random.Generator, pad: int, flip: bool) -> dict[str, int]:
    """Random crop with ``pad`` zero padding (offset in [0, 2·pad]) and an optional h-flip."""
    return {
        "dx": int(rng.integers(0, 2 * pad + 1)),
        "dy": int(rng.integers(0, 2 * pad + 1)),
        "flip": int(rng.integers(0, 2)) if flip else 0,
    }


def draw_view(rng: np.random.Generator, source: Source, index: int) -> dict[str, Any]:
    """A random view of real image ``index``: a random-resized-crop box and flip, or the
    standard pad-and-crop and flip (:func:`draw_aug`)."""
    contract = source.contract
    if contract is not None and contract.views == "random_resized_crop":
        height, width = source.raw_size(index)
        box = draw_random_resized_crop(rng, height, width, contract.scale, contract.ratio)
        return {"box": list(box), "flip": int(rng.integers(0, 2)) if source.flip else 0}
    return draw_aug(rng, source.pad, source.flip)


def source_aug(augment: bool, source: Source, rng: np.random.Generator, index: int) -> dict[str, Any]:
    """The view a sampler takes of real image ``index`` before its own transform: random with
    ``augment`` (the source's standard augmentation, or the contract's random-resized crop)."""
    return draw_view(rng, source, index) if augment else identity_view(source, index)
