"""A replay record's parameter columns in the bits their ranges need: the parameter half of a
packed record.

The columns are the very ones of :class:`core.records.replay_params.ParamLayout` (each sampler
kind's ``columns``); packing only narrows each to ⌈log2 n⌉ bits for the n values it can take in
this set: a real image's index among the source's images, a view number, a pad-and-crop offset
in ``[0, 2·pad]``, a flip, a box corner within the image, the sampler's position among the set's
kinds, and λ on a grid of ``LAM_STEPS`` steps (a packed set draws λ on that grid, so the image
the teachers labelled is the one a reader rebuilds). Packing is lossless on what it accepts: a
value off its range or off the grid is refused, never rounded. A column with no known range (a
float such as a noise σ, a 64-bit noise seed) cannot be packed yet: :func:`packable` names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import FormatError
from core.records.bitpack import BitField, BitLayout, bits_for

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout

LAM_STEPS = 255  # λ = q / 255, q in 0..255: one byte, steps of 0.0039
GRID_COLUMNS = ("lam",)  # float columns stored as their grid index


def column_values(name: str, layout: ParamLayout, side: int) -> int | None:
    """How many values column ``name`` takes in a set of ``layout`` whose real images are at most
    ``side`` pixels on a side (None: no known range)."""
    view_sides = max(side, *layout.shape)
    if name == "sampler":
        return len(layout.kinds)
    if name in ("image", "i", "j"):
        return layout.images
    if name == "view":
        return layout.views
    if name.endswith(("dx", "dy")):
        return 2 * layout.pad + 1
    if name.endswith("flip"):
        return 2
    if name.endswith("box"):  # a view's [top, left, h, w] in the raw image, or [y0, y1, x0, x1] in the view
        return (side if name != "box" else view_sides) + 1
    if name in GRID_COLUMNS:
        return LAM_STEPS + 1
    return None


def packable(layout: ParamLayout, side: int) -> list[str]:
    """The parameter columns of ``layout`` that have no known range (empty: it packs)."""
    return [name for name, _, _ in layout.fields() if column_values(name, layout, side) is None]


@dataclass(frozen=True)
class PackedParams:
    """The bit fields of one set's parameter columns."""

    layout: ParamLayout
    side: int  # the largest side of a real image, in pixels

    def __post_init__(self) -> None:
        missing = packable(self.layout, self.side)
        if missing:
            raise FormatError(f"parameter columns {missing} of samplers {list(self.layout.kinds)} cannot be packed "
                              f"(no known range); use store: {{kind: replay}} unpacked for them")

    def fields(self) -> list[BitField]:
        out = []
        for name, _, shape in self.layout.fields():
            count = int(np.prod(shape)) if shape else 1
            out.append(BitField(name, bits_for(column_values(name, self.layout, self.side) or 1), count))
        return out

    @staticmethod
    def on_grid(params: dict) -> dict:
        """``params`` with λ moved to the nearest point of the 1/255 grid: what a packed set makes
        its image from (its shard format's ``recorded``), so the teachers label the image a reader
        rebuilds from the stored byte."""
        if "lam" not in params:
            return params
        return {**params, "lam": float(np.rint(float(params["lam"]) * LAM_STEPS)) / LAM_STEPS}

    def pack(self, records: np.ndarray) -> dict[str, np.ndarray]:
        """The fields of a shard's structured parameter columns (``layout.fields()``), as integers."""
        out = {}
        for name, _, _ in self.layout.fields():
            values = np.asarray(records[name])
            if name in GRID_COLUMNS:
                steps = np.rint(values * LAM_STEPS)
                off = np.flatnonzero(steps / LAM_STEPS != values)
                if len(off):
                    raise FormatError(f"{name} {float(values[off[0]])!r} of row {int(off[0])} is not on the "
                                      f"1/{LAM_STEPS} grid a packed set draws on")
                values = steps
            out[name] = values.astype(np.int64).reshape(len(records), -1)
        return out

    def unpack(self, fields: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
        """The structured parameter columns (``dtype`` holds at least them) of unpacked fields."""
        rows = len(next(iter(fields.values()))) if fields else 0
        out = np.zeros(rows, dtype=dtype)
        for name, _, _ in self.layout.fields():
            values = np.asarray(fields[name])
            if name in GRID_COLUMNS:
                out[name] = values.astype(np.float64) / LAM_STEPS
            else:
                out[name] = values.reshape(out[name].shape)
        return out


def packed_layout(params: PackedParams, target_fields: list[BitField]) -> BitLayout:
    """A packed record's row: its parameter fields, then its target's."""
    return BitLayout(tuple(params.fields()) + tuple(target_fields))
