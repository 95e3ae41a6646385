"""The sampler kinds: one class each, in one registry (see :mod:`core.samplers.base`).

A new sampler is one module here with its options and its class, plus its line in
:data:`KINDS`; the config union, drawing, applying, replay columns and their checks all come
from the class. ``gan``'s images come from its generator, in batches (``stages.samplers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Union

import numpy as np
from pydantic import Field, TypeAdapter

from core.samplers.autoaugment import AutoAugment
from core.samplers.base import NO_IMAGE, Params, Raw, Sampler, SamplerOptions, sample_rng
from core.samplers.gan import Gan
from core.samplers.gaussian import GaussianImage
from core.samplers.mixing import CutMix, Mix, Mixup
from core.samplers.real import Cutout, Noise, Views

if TYPE_CHECKING:
    from core.sources import Source

__all__ = ["KINDS", "NO_IMAGE", "SAMPLERS", "Params", "Raw", "Sampler", "SamplerConfig", "SamplerOptions",
           "apply_params", "record_sources", "sample_rng", "sampler", "sampler_config", "source_indices"]

KINDS: tuple[type[Sampler], ...] = (Views, Mix, Mixup, CutMix, Noise, GaussianImage, AutoAugment, Cutout, Gan)
SAMPLERS: dict[str, Sampler] = {cls.kind: cls() for cls in KINDS}

# A set's ``sampler:`` section: the options class of its ``kind``.
SamplerConfig = Annotated[Union[tuple(cls.options for cls in KINDS)], Field(discriminator="kind")]  # noqa: UP007
_ADAPTER: TypeAdapter[Any] = TypeAdapter(SamplerConfig)


def sampler_config(**options: Any) -> SamplerOptions:
    """The options of one sampler from keywords (``kind`` picks the class)."""
    return _ADAPTER.validate_python(options)


def sampler(kind: str) -> Sampler:
    """The sampler of ``kind``; an unknown kind is a ValueError naming the known ones."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r} (known: {sorted(SAMPLERS)})")
    return SAMPLERS[kind]


def apply_params(kind: str, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
    """The uint8 HWC image of a sample of sampler ``kind`` from its stored parameters. ``raw``:
    the real images already decoded by the caller (a trainer rebuilding many samples decodes each
    file once), so generation and trainer make the image with the same code either way."""
    return sampler(kind).apply(params, source, raw)


def source_indices(kind: str, params: dict[str, Any]) -> tuple[int, int]:
    """The real images of a sample of sampler ``kind`` with stored ``params``, as two slots."""
    return sampler(kind).images(params)


def record_sources(kinds: Sequence[str], codes: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
    """:func:`source_indices` of many stored samples at once, int64 (N, 2): ``codes`` is each
    sample's position in ``kinds``, ``columns`` the image columns (``image``, ``i``, ``j``) it has.
    The trainer counts the distinct source images of each batch with it."""
    out = np.full((len(codes), 2), NO_IMAGE, dtype=np.int64)
    for code, kind in enumerate(kinds):
        rows = codes == code
        for slot, name in enumerate(SAMPLERS[kind].image_columns):
            out[rows, slot] = columns[name][rows]
    return out
