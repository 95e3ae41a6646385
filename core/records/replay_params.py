"""A sample's parameters as fixed-width columns: the parameter half of a replay record.

Every sampler but ``gan`` stores its random choices as a few numbers (source indices, λ, a view's
crop offsets or box and flip, a CutMix or Cutout box, noise seeds, AutoAugment ops). A replay set
(``store: replay``) keeps exactly those numbers, one column each, and rebuilds the image with the
sampler's ``apply``. Each sampler kind names its columns (``core.samplers``: ``columns``,
``encode``, ``decode``); a set's columns are the union over its kinds, in a fixed order, plus
``sampler`` (uint8, the position in the set's kinds) when it has several. They depend only on
its samplers and its source (:class:`ParamLayout`). Decoding gives back the very dict the
sampler drew (tested for every kind), so a replay set's manifest and a pixel set's agree on
every sample's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import FormatError, RecordError
from core.samplers import SAMPLERS, Params
from core.samplers.autoaugment import AUTOAUGMENT_OPS
from core.samplers.base import ReplayField as Field
from core.samplers.columns import index_dtype

__all__ = ["Field", "ParamLayout", "dtype_of", "index_dtype", "layout_of"]


@dataclass(frozen=True)
class ParamLayout:
    """The parameter columns of one set: its sampler kinds, the source's size and view kind."""

    kinds: tuple[str, ...]
    images: int  # real images in the source
    box_views: bool  # views are random-resized-crop boxes (the source's image contract)
    pad: int  # pad-and-crop views: offsets are in [0, 2·pad]
    enumerated: bool = False  # a views-only set: every sample has its view number
    views: int = 1  # the largest view count
    ops: int = AUTOAUGMENT_OPS  # the most autoaugment ops a sample can have
    shape: tuple[int, int] = (0, 0)  # (height, width) of a view image: Cutout/CutMix boxes lie within it

    def __post_init__(self) -> None:
        refused = [k for k in self.kinds if k not in SAMPLERS or SAMPLERS[k].generated]
        if refused:
            replayable = [k for k, sampler in SAMPLERS.items() if not sampler.generated]
            raise FormatError(f"samplers {refused} cannot be stored as replay records (replayable: {replayable})")

    def fields(self) -> list[Field]:
        """The parameter columns, in a fixed order (the union over the set's kinds)."""
        out: dict[str, Field] = {}
        if len(self.kinds) > 1:
            out["sampler"] = ("sampler", "u1", ())
        for kind in self.kinds:
            for field in SAMPLERS[kind].columns(self):
                out.setdefault(field[0], field)
        return list(out.values())

    def encode(self, kind: str, params: Params) -> dict[str, Any]:
        """The columns of one sample (those its kind does not use stay zero in the record)."""
        if kind not in self.kinds:
            raise FormatError(f"sampler {kind!r} is not one of this set's {list(self.kinds)}")
        row: dict[str, Any] = {"sampler": self.kinds.index(kind)} if len(self.kinds) > 1 else {}
        return {**row, **SAMPLERS[kind].encode(params, self)}

    def decode(self, row: Any) -> tuple[str, Params]:
        """``(sampler kind, parameters)`` of one record (a structured row or a dict)."""
        kind = self.kinds[int(row["sampler"])] if len(self.kinds) > 1 else self.kinds[0]
        return kind, SAMPLERS[kind].decode(row, self)

    def decode_all(self, records: np.ndarray) -> list[tuple[str, Params]]:
        """:meth:`decode` of every record of a shard, each row read as a dict of Python values (one
        ``tolist`` per column: a structured row read field by field costs more); a row that does
        not decode raises :class:`RecordError` naming it."""
        names = [name for name, _, _ in self.fields()]
        out = []
        for row, values in enumerate(zip(*(records[name].tolist() for name in names), strict=True)):
            try:
                out.append(self.decode(dict(zip(names, values, strict=True))))
            except (IndexError, KeyError, ValueError, TypeError) as err:
                raise RecordError(row, f"its parameters do not decode ({type(err).__name__}: {err})") from err
        return out


def layout_of(set_cfg: Any, source: Any) -> ParamLayout:
    """The parameter layout of a set (``SetConfig``) made from ``source`` (``core.sources.Source``)."""
    samplers = set_cfg.sampler_list()
    kinds = tuple(dict.fromkeys(s.kind for s in samplers))
    ops = max([s.ops_per_sample() for s in samplers if s.ops_per_sample()], default=AUTOAUGMENT_OPS)
    contract = source.contract
    return ParamLayout(kinds=kinds, images=len(source),
                       box_views=contract is not None and contract.views == "random_resized_crop",
                       pad=int(source.pad), enumerated=set_cfg.enumerates_source(),
                       views=max(s.views_per_image() for s in samplers), ops=ops,
                       shape=(int(source.shape[0]), int(source.shape[1])))


def dtype_of(fields: list[Field]) -> np.dtype:
    """A structured dtype (little-endian, packed) of ``(name, dtype, shape)`` columns."""
    return np.dtype([(name, np.dtype(dtype).newbyteorder("<"), shape) for name, dtype, shape in fields])
