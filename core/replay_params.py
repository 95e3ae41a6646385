"""A sample's parameters as fixed-width columns: the parameter half of a replay record.

Every sampler but ``gan`` stores its random choices as a few numbers (source indices, λ, a view's
crop offsets or box and flip, a CutMix or Cutout box, noise seeds, AutoAugment ops). A replay set
(``store: replay``) keeps exactly those numbers, one column each, and rebuilds the image with
:mod:`core.sample_apply`. The columns of a set depend only on its samplers and its source:

==============  ===========================================================================
``sampler``     uint8, position in the set's sampler kinds (only when it has several kinds)
``image``       the real image (``views``, ``noise``, ``autoaugment``, ``cutout``)
``view``        uint8/uint16, the view number of an enumerated views set (0 = the image)
``i``, ``j``    the two real images of ``mix``, ``mixup``, ``cutmix``
``lam``         float64 λ (``lam_drawn`` too for ``cutmix``): exact, so the rebuilt blend is
                bit-identical to the one the teachers labelled
``box``         uint16 (4,), ``[y0, y1, x0, x1]`` of a Cutout or CutMix box
``seed``        uint64, the noise field's seed (``noise``, ``gaussian_image``)
``sigma``       float64 (``noise``); ``mean``, ``std`` float64 (3,), NaN-padded (``gaussian_image``)
``policy``      uint8 into :data:`POLICIES`; ``op`` uint8 (n,) into :data:`OPS` (255: none),
                ``magnitude`` float64 (n,) (``autoaugment``)
``<p>dx`` …     a view (``p`` = ``aug_``, ``aug_i_``, ``aug_j_``): ``dx``, ``dy``, ``flip``
                (uint8) for pad-and-crop views; ``box`` uint16 (4,) ``[top, left, h, w]`` and
                ``flip`` for random-resized-crop views, ``h = 0`` meaning the evaluation image
==============  ===========================================================================

Image indices are uint16 for sources up to 65 536 images, else uint32. Decoding gives back
the very dict the sampler drew (tested for every kind), so a replay set's manifest and a pixel
set's agree on every sample's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import FormatError, RecordError
from core.sample_sources import NO_IMAGE, source_indices

Params = dict[str, Any]
Field = tuple[str, str, tuple[int, ...]]  # column name, numpy dtype, subarray shape

REPLAYABLE = ("views", "noise", "gaussian_image", "autoaugment", "cutout", "mix", "mixup", "cutmix")
POLICIES = ("cifar10", "imagenet", "svhn", "randaugment")
# torchvision's AutoAugment and RandAugment op names (both spaces), in a fixed order.
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Invert", "Posterize", "Rotate",
       "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
NO_OP = 255
AUTOAUGMENT_OPS = 2  # every AutoAugment sub-policy has two ops
CHANNELS = 3  # mean / std of gaussian_image: one or three values, NaN-padded to three


def index_dtype(count: int) -> str:
    """The narrowest unsigned dtype that indexes ``count`` items."""
    return "u2" if count <= 1 << 16 else "u4"


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
        refused = [k for k in self.kinds if k not in REPLAYABLE]
        if refused:
            raise FormatError(f"samplers {refused} cannot be stored as replay records (replayable: {REPLAYABLE})")

    # ------------------------------------------------------------ columns

    def _view_fields(self, prefix: str) -> list[Field]:
        if self.box_views:
            return [(f"{prefix}box", "u2", (4,)), (f"{prefix}flip", "u1", ())]
        offset = "u1" if 2 * self.pad <= 255 else "u2"
        return [(f"{prefix}dx", offset, ()), (f"{prefix}dy", offset, ()), (f"{prefix}flip", "u1", ())]

    def _kind_fields(self, kind: str) -> list[Field]:
        image = index_dtype(self.images)
        one = [("image", image, ()), *self._view_fields("aug_")]
        two = [("i", image, ()), ("j", image, ()), ("lam", "f8", ()),
               *self._view_fields("aug_i_"), *self._view_fields("aug_j_")]
        return {
            "views": one + ([("view", "u1" if self.views <= 256 else "u2", ())] if self.enumerated else []),
            "noise": [*one, ("sigma", "f8", ()), ("seed", "u8", ())],
            "gaussian_image": [("seed", "u8", ()), ("mean", "f8", (CHANNELS,)), ("std", "f8", (CHANNELS,))],
            "autoaugment": [*one, ("policy", "u1", ()), ("op", "u1", (self.ops,)), ("magnitude", "f8", (self.ops,))],
            "cutout": [*one, ("box", "u2", (4,))],
            "mix": two, "mixup": two,
            "cutmix": [*two, ("lam_drawn", "f8", ()), ("box", "u2", (4,))],
        }[kind]

    def fields(self) -> list[Field]:
        """The parameter columns, in a fixed order (the union over the set's kinds)."""
        out: dict[str, Field] = {}
        if len(self.kinds) > 1:
            out["sampler"] = ("sampler", "u1", ())
        for kind in self.kinds:
            for field in self._kind_fields(kind):
                out.setdefault(field[0], field)
        return list(out.values())

    # ------------------------------------------------------------ encoding

    def _put_view(self, row: dict[str, Any], prefix: str, aug: Params) -> None:
        if self.box_views:
            row[f"{prefix}box"] = [0, 0, 0, 0] if "eval" in aug else [int(v) for v in aug["box"]]
        else:
            row[f"{prefix}dx"], row[f"{prefix}dy"] = int(aug["dx"]), int(aug["dy"])
        row[f"{prefix}flip"] = int(aug["flip"])

    def _get_view(self, row: Any, prefix: str) -> Params:
        flip = int(row[f"{prefix}flip"])
        if self.box_views:
            box = [int(v) for v in row[f"{prefix}box"]]
            return {"eval": 1, "flip": flip} if box[2] == 0 else {"box": box, "flip": flip}
        return {"dx": int(row[f"{prefix}dx"]), "dy": int(row[f"{prefix}dy"]), "flip": flip}

    def encode(self, kind: str, params: Params) -> dict[str, Any]:
        """The columns of one sample (those its kind does not use stay zero in the record)."""
        if kind not in self.kinds:
            raise FormatError(f"sampler {kind!r} is not one of this set's {list(self.kinds)}")
        row: dict[str, Any] = {"sampler": self.kinds.index(kind)} if len(self.kinds) > 1 else {}
        if kind in ("mix", "mixup", "cutmix"):
            row.update(i=int(params["i"]), j=int(params["j"]), lam=float(params["lam"]))
            self._put_view(row, "aug_i_", params["aug_i"])
            self._put_view(row, "aug_j_", params["aug_j"])
        elif kind != "gaussian_image":
            row["image"] = int(params["image"])
            self._put_view(row, "aug_", params["aug"])
        if kind in ("cutout", "cutmix"):
            row["box"] = [int(v) for v in params["box"]]
        if kind == "cutmix":
            row["lam_drawn"] = float(params["lam_drawn"])
        if kind == "views" and self.enumerated:
            row["view"] = int(params["view"])
        if kind in ("noise", "gaussian_image"):
            row["seed"] = int(params["seed"])
        if kind == "noise":
            row["sigma"] = float(params["sigma"])
        if kind == "gaussian_image":
            for name in ("mean", "std"):
                values = [float(v) for v in params[name]]
                row[name] = values + [math.nan] * (CHANNELS - len(values))
        if kind == "autoaugment":
            ops = params["ops"]
            if len(ops) > self.ops:
                raise FormatError(f"autoaugment sample has {len(ops)} ops, the layout holds {self.ops}")
            row["policy"] = POLICIES.index(params["policy"])
            row["op"] = [OPS.index(name) for name, _ in ops] + [NO_OP] * (self.ops - len(ops))
            row["magnitude"] = [float(m) for _, m in ops] + [0.0] * (self.ops - len(ops))
        return row

    def decode(self, row: Any) -> tuple[str, Params]:
        """``(sampler kind, parameters)`` of one record (a structured row or a dict)."""
        kind = self.kinds[int(row["sampler"])] if len(self.kinds) > 1 else self.kinds[0]
        params: Params = {}
        if kind in ("mix", "mixup", "cutmix"):
            params.update(i=int(row["i"]), j=int(row["j"]), lam=float(row["lam"]),
                          aug_i=self._get_view(row, "aug_i_"), aug_j=self._get_view(row, "aug_j_"))
        elif kind != "gaussian_image":
            params.update(image=int(row["image"]), aug=self._get_view(row, "aug_"))
        if kind in ("cutout", "cutmix"):
            params["box"] = [int(v) for v in row["box"]]
        if kind == "cutmix":
            params["lam_drawn"] = float(row["lam_drawn"])
        if kind == "views" and self.enumerated:
            params["view"] = int(row["view"])
        if kind == "noise":
            params.update(sigma=float(row["sigma"]), seed=int(row["seed"]))
        if kind == "gaussian_image":
            params.update({"seed": int(row["seed"]),
                           **{name: [float(v) for v in row[name] if not math.isnan(v)] for name in ("mean", "std")}})
        if kind == "autoaugment":
            params.update(policy=POLICIES[int(row["policy"])],
                          ops=[[OPS[int(op)], float(m)] for op, m in zip(row["op"], row["magnitude"], strict=True)
                               if int(op) != NO_OP])
        return kind, params

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

    def indices(self, kind: str, params: Params) -> list[int]:
        """The real images a sample reads (what ``verify`` checks against the source's size)."""
        return [i for i in source_indices(kind, params) if i != NO_IMAGE]


def layout_of(set_cfg: Any, source: Any) -> ParamLayout:
    """The parameter layout of a set (``SetConfig``) made from ``source`` (``core.sources.Source``)."""
    samplers = set_cfg.sampler_list()
    kinds = tuple(dict.fromkeys(s.kind for s in samplers))
    ops = max([s.num_ops if s.policy == "randaugment" else AUTOAUGMENT_OPS
               for s in samplers if s.kind == "autoaugment"], default=AUTOAUGMENT_OPS)
    contract = source.contract
    return ParamLayout(kinds=kinds, images=len(source),
                       box_views=contract is not None and contract.views == "random_resized_crop",
                       pad=int(source.pad), enumerated=set_cfg.enumerates_source(),
                       views=max(s.views for s in samplers), ops=ops,
                       shape=(int(source.shape[0]), int(source.shape[1])))


def dtype_of(fields: list[Field]) -> np.dtype:
    """A structured dtype (little-endian, packed) of ``(name, dtype, shape)`` columns."""
    return np.dtype([(name, np.dtype(dtype).newbyteorder("<"), shape) for name, dtype, shape in fields])
