"""A replay shard's records in bits: the columns of :class:`core.records.replay.RecordLayout`,
each in the bits its range needs, a row padded to whole bytes.

Packing is a codec between the structured records every reader already understands and a
``(N, row_bytes)`` uint8 array: :meth:`PackedRecords.pack` refuses what it cannot give back
exactly, :meth:`PackedRecords.unpack` gives back the structured records, so decoding, range
checks, ``verify`` and the trainer read a packed shard with the code they read any replay shard
with. Exact means: integer columns within their ranges, λ on the grid (a packed set draws it
there), top-k targets already quantised (their log-probabilities relative to the first on the
:class:`core.records.packed_target.PackedTopk` grid, the first 0), and the statistics on their
1/255 steps, ``target_kl`` on an 8-bit log grid, ``teacher_argmax`` the first top-k class (the
last two as :meth:`PackedRecords.snapped` records them before packing). A ``derived`` set's rows
hold no parameter or label bits: :meth:`PackedRecords.unpack` takes those columns from the
reader's ``derive`` (:class:`core.sets.packed_shards.Derivation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from core.errors import FormatError
from core.records.bitpack import BitField, BitLayout, bits_for
from core.records.packed_params import PackedParams
from core.records.packed_target import PackedTopk
from core.records.replay import RecordLayout

# A derived set's reader: candidate positions of a shard's rows → records (``RecordLayout.dtype``)
# with their parameter and label columns filled, as the sampler code draws them again.
Derive = Callable[[np.ndarray], np.ndarray]

# target_kl on a log grid: step 0 is 0, steps 1..255 span 10^KL_LOW..10^KL_HIGH nats (±4 % a step)
KL_LOW, KL_HIGH, KL_STEPS = -6.0, 2.0, 255


def kl_step(kl: np.ndarray) -> np.ndarray:
    """The grid step of each KL (nats; 0 stays 0, the rest clipped into the grid's range)."""
    values = np.asarray(kl, dtype=np.float64)
    scaled = (np.log10(np.maximum(values, 10.0 ** KL_LOW)) - KL_LOW) / (KL_HIGH - KL_LOW) * (KL_STEPS - 1) + 1
    return np.where(values > 0, np.clip(np.rint(scaled), 1, KL_STEPS), 0).astype(np.int64)


def kl_of_step(steps: np.ndarray) -> np.ndarray:
    """The float16 KL of each grid step (what a packed record's ``target_kl`` reads back as)."""
    steps = np.asarray(steps, dtype=np.float64)
    values = 10.0 ** (KL_LOW + (steps - 1) / (KL_STEPS - 1) * (KL_HIGH - KL_LOW))
    return np.where(steps > 0, values, 0.0).astype(np.float16)


@dataclass(frozen=True)
class PackedRecords:
    """The bit layout of one set's records: its record layout, the most candidates a shard
    draws, the largest side of a real image, and the bits of a target value."""

    layout: RecordLayout
    candidates: int
    side: int
    value_bits: int = 8
    derived: bool = False  # parameters re-derived by the reader: no parameter or label bits

    def __post_init__(self) -> None:
        if self.layout.target != "topk":
            raise FormatError(f"packed records hold top-k targets, not {self.layout.target!r} ones; "
                              f"use targets: {{kind: topk}} or an unpacked replay set")

    # Derived once per instance (every pack, unpack and read_records call asks for them).
    @cached_property
    def params(self) -> PackedParams:
        return PackedParams(self.layout.params, self.side)

    @cached_property
    def target(self) -> PackedTopk:
        return PackedTopk(self.layout.num_classes, self.layout.k, self.value_bits)

    def bits(self) -> BitLayout:
        return self._bits

    @cached_property
    def _bits(self) -> BitLayout:
        classes = self.layout.num_classes
        out = [BitField("index", bits_for(self.candidates))]
        if self.layout.candidate:
            out.append(BitField("candidate", bits_for(self.candidates)))
        if not self.derived:
            out += self.params.fields()
            if self.layout.labels:
                out.append(BitField("label", bits_for(classes + 1)))  # label + 1: 0 is "none"
        out += self.target.fields()
        out += [BitField("entropy", 8), BitField("disagreement", 8), BitField("target_kl", 8)]
        return BitLayout(tuple(out))

    def snapped(self, records: np.ndarray) -> np.ndarray:
        """``records`` with the two statistics a packed record stores coarser, as a reader will
        find them: ``teacher_argmax`` the first top-k class (p̄'s argmax up to float32 ties) and
        ``target_kl`` on its 8-bit grid. The writer records these before any metadata is taken
        from the records, so a resumed set and an unbroken one agree."""
        out = records.copy()
        out["teacher_argmax"] = out["topk"]["index"][:, 0]
        out["target_kl"] = kl_of_step(kl_step(out["target_kl"]))
        return out

    def pack(self, records: np.ndarray) -> np.ndarray:
        """``(N, row_bytes)`` uint8 rows of structured ``records`` (``layout.dtype``)."""
        fields: dict[str, np.ndarray] = {"index": records["index"].astype(np.int64)}
        if self.layout.candidate:
            fields["candidate"] = records["candidate"].astype(np.int64)
        if not self.derived:
            fields.update(self.params.pack(records))
            if self.layout.labels:
                fields["label"] = records["label"].astype(np.int64) + 1
        fields.update(self._target_fields(records["topk"]))
        first = records["topk"]["index"][:, 0].astype(np.int64)
        if len(records) and np.any(records["teacher_argmax"].astype(np.int64) != first):
            raise FormatError("a packed record's teacher_argmax is its first top-k class (snapped: see snapped)")
        fields["entropy"] = records["entropy"].astype(np.int64)
        fields["disagreement"] = records["disagreement"].astype(np.int64)
        steps = kl_step(records["target_kl"])
        self._on_grid("target_kl", kl_of_step(steps), records["target_kl"])
        fields["target_kl"] = steps
        return self.bits().pack(fields)

    def unpack(self, packed: np.ndarray, derive: Derive | None = None) -> np.ndarray:
        """The structured records of ``(N, row_bytes)`` packed rows; a derived set's parameter
        and label columns from ``derive`` (the candidate position of each row → those columns)."""
        fields = self.bits().unpack(packed)
        if self.derived:
            if derive is None:
                raise FormatError("a set of derived parameters is read with the sampler code that re-derives them")
            positions = fields["candidate"] if self.layout.candidate else fields["index"]
            out = derive(np.asarray(positions, dtype=np.int64))
        else:
            out = self.params.unpack(fields, self.layout.dtype)
            if self.layout.labels:
                out["label"] = fields["label"].astype(np.int64) - 1
        out["index"] = fields["index"]
        if self.layout.candidate:
            out["candidate"] = fields["candidate"]
        topk, target = out["topk"], self.target.from_bits(fields)
        quantised = self.target.quantised_of(target)
        topk["index"], topk["logp"] = quantised["index"], quantised["logp"]
        if "tail" in target:  # k = C: no tail, the field stays 0
            topk["log_tail"] = quantised["log_tail"]
        out["teacher_argmax"] = topk["index"][:, 0]
        out["entropy"], out["disagreement"] = fields["entropy"], fields["disagreement"]
        out["target_kl"] = kl_of_step(fields["target_kl"])
        return out

    def _target_fields(self, topk: np.ndarray) -> dict[str, np.ndarray]:
        """The bit columns of quantised top-k records, refused unless they lie on the grid (and in
        the canonical order a reader finds them in: :class:`PackedTopk`)."""
        codec = self.target
        logp = topk["logp"].astype(np.float64).reshape(len(topk), -1)
        out = {"class": topk["index"].astype(np.int64).reshape(len(topk), -1)}
        if len(topk) and np.any(logp[:, 0] != 0):
            raise FormatError("a packed top-k record holds its log-probabilities relative to the first (0)")
        if codec.slots > 1:
            rel = np.rint(-logp[:, 1:] / codec.step)
            self._on_grid("top-k log-probability", -rel * codec.step, logp[:, 1:])
            out["rel"] = rel.astype(np.int64)
        if codec.slots < codec.classes:
            low, high = codec.tail_range
            levels = (1 << codec.bits) - 1
            tail = topk["log_tail"].astype(np.float64)
            steps = np.rint((tail - low) / (high - low) * levels)
            self._on_grid("top-k tail", low + steps / levels * (high - low), tail)
            out["tail"] = steps.astype(np.int64)
        return codec.to_bits(out)

    @staticmethod
    def _on_grid(what: str, expected: np.ndarray, found: np.ndarray) -> None:
        off = np.argwhere(expected.astype(np.float16) != found.astype(np.float16))
        if len(off):
            row = int(off[0][0])
            raise FormatError(f"record {row}: its {what} {float(found[tuple(off[0])])!r} is not on the packed grid")
