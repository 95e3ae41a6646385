"""Samplers: draw a sample's parameters first, then apply them to real images.

Parameters are plain JSON values stored in the sample's metadata, so a sampler's ``apply``
(:mod:`core.samplers`) replays any stored sample exactly (noise fields from their stored seed).
Which parameters each candidate of a shard gets is :mod:`core.samplers.shard` (re-exported here):
a reader that re-derives them draws with the same code. ``gan`` samples (XCL-GAN,
``generating.py``) are drawn like the others but made in batches by their generator:
:func:`shard_images`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.samplers import SAMPLERS, Params, apply_params
from core.samplers.shard import draw_shard, enumerated_slot, sample_label, set_size, view_order
from core.sources import Source
from stages.samplers.generating import Generate

__all__ = ["draw_shard", "enumerated_slot", "sample_label", "set_size", "shard_images", "view_order"]


def shard_images(drawn: list[tuple[str, Params]], source: Source, generate: Generate | None = None) -> np.ndarray:
    """uint8 NHWC images of a shard's candidates: ``gan`` ones from one ``generate`` call on all
    of their parameters (batched), the others from :func:`apply_params`."""
    wanted = [params for kind, params in drawn if SAMPLERS[kind].generated]
    made: Any = ()
    if wanted:
        if generate is None:
            raise ValueError("this shard has gan samples: pass their generator")
        made = generate(wanted)
        if len(made) != len(wanted):
            raise ValueError(f"the generator made {len(made)} images for {len(wanted)} gan samples")
    generated = iter(made)
    return np.stack([next(generated) if SAMPLERS[kind].generated else apply_params(kind, params, source)
                     for kind, params in drawn])
