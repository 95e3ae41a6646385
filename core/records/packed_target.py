"""Top-k targets quantised into a few bits a value: the target half of a packed replay record.

A row keeps the k most probable classes, their log-probabilities relative to the first one on a
uniform grid (``bits`` bits each: the first is 0 by construction and not stored), and the log of
the remaining mass relative to the first on a grid of its own (it may exceed the first: a flat
distribution's tail outweighs any class).

The classes are stored as one combination: the rank of their sorted set among the C(C, k) sets
(the combinatorial number system, split into chunks of at most 32 bits) and the position of the
most probable among them. That is ⌈log2 C(C, k)⌉ + ⌈log2 k⌉ bits instead of k·⌈log2 C⌉: 82
instead of 100 for 10 of 1 000 classes, 5 instead of 40 for all 10 of 10. The values follow in
the sorted classes' order. A row therefore reads back in one canonical order: the most probable
class first, the others by grid value (highest first), ties by class index. :meth:`encode` writes
rows in that order, so a record is what a reader finds.
Reading a row back spreads the tail evenly over the other classes and renormalises, exactly as
a float16 top-k record is read (:func:`core.records.target_codec.complete_logp_rows`), so the
quantisation is the only difference between the two.

Why relative to the first: the absolute log-probabilities of a row shift together when it is
renormalised, so their offset carries nothing; the differences below the first are what the
student learns from, and a fixed grid on them bounds every value's error by half a step.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from core.errors import FormatError
from core.records.bitpack import BitField, bits_for
from core.records.target_codec import LOGP_FLOOR, complete_logp_rows


@dataclass(frozen=True)
class PackedTopk:
    """The quantiser of one set: its class count, k, bits a value and the span of the grid."""

    classes: int
    k: int
    bits: int = 8
    span: float = 16.0  # nats below the first a stored value reaches (lower ones are clipped to it)

    @property
    def slots(self) -> int:
        return min(self.k, self.classes)

    @property
    def step(self) -> float:
        return self.span / ((1 << self.bits) - 1)

    @property
    def tail_range(self) -> tuple[float, float]:
        """The tail's grid, relative to the first class: from ``-span`` to log(C), above which no
        tail can lie (C − k classes, none above the first)."""
        return -self.span, math.log(max(self.classes, 2))

    def fields(self) -> list[BitField]:
        """The bit fields of a row: the classes' rank, the first's position, the values, the tail."""
        return list(self._bit_fields)

    @cached_property
    def _bit_fields(self) -> tuple[BitField, ...]:
        rank_bits = bits_for(math.comb(self.classes, self.slots))
        chunks = -(-rank_bits // 32)
        out = [BitField("classes", -(-rank_bits // chunks), chunks)]
        if self.slots > 1:
            out += [BitField("first", bits_for(self.slots)), BitField("values", self.bits, self.slots - 1)]
        if self.slots < self.classes:
            out.append(BitField("tail", self.bits))
        return tuple(out)

    def to_bits(self, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The bit columns of N rows of :meth:`encode`'s fields (``class`` in canonical order)."""
        index = np.asarray(fields["class"], dtype=np.int64).reshape(-1, self.slots)
        rel = np.zeros(index.shape, dtype=np.int64)
        if self.slots > 1:
            rel[:, 1:] = np.asarray(fields["rel"], dtype=np.int64).reshape(len(index), -1)
        if len(index) and not np.array_equal(index, self._canonical(index, rel)[0]):
            raise FormatError("a packed top-k row lists its classes out of canonical order "
                              "(the first, then by grid value, ties by class)")
        order = np.argsort(index, axis=1, kind="stable")
        ranked = np.take_along_axis(index, order, axis=1)
        if len(index) and (np.any(np.diff(ranked, axis=1) == 0) or ranked.min() < 0 or ranked.max() >= self.classes):
            raise FormatError(f"a packed top-k row lists a class twice or outside 0..{self.classes - 1}")
        out = {"classes": self._rank_chunks(ranked)}
        if self.slots > 1:
            first = np.argmax(order == 0, axis=1)
            values = np.take_along_axis(rel, order, axis=1)
            keep = np.arange(self.slots)[None, :] != first[:, None]
            out["first"] = first
            out["values"] = values[keep].reshape(len(index), self.slots - 1)
        if "tail" in fields:
            out["tail"] = np.asarray(fields["tail"])
        return out

    def from_bits(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`encode`'s fields (``class``, ``rel``, ``tail``) of N rows' bit columns."""
        ranked = self._unrank(np.asarray(columns["classes"]).reshape(-1, self.fields()[0].count))
        out: dict[str, np.ndarray] = {}
        if self.slots == 1:
            out["class"] = ranked
        else:
            rows = len(ranked)
            first = np.asarray(columns["first"], dtype=np.int64)
            if rows and first.max() >= self.slots:
                raise FormatError(f"a packed top-k row's first class is at position {int(first.max())} "
                                  f"of {self.slots}")
            keep = np.arange(self.slots)[None, :] != first[:, None]
            rel = np.zeros(ranked.shape, dtype=np.int64)
            rel[keep] = np.asarray(columns["values"], dtype=np.int64).reshape(-1)
            # the first class to slot 0, then the canonical order of the rest
            lead = np.where(keep, 1, 0)
            order = np.lexsort((ranked, rel, lead), axis=1)  # already the canonical order
            out["class"], out["rel"] = np.take_along_axis(ranked, order, 1), np.take_along_axis(rel, order, 1)[:, 1:]
        if "tail" in columns:
            out["tail"] = np.asarray(columns["tail"])
        return out

    @staticmethod
    def _canonical(index: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot 0 kept, slots 1.. by grid steps below the first (fewest first), ties by class."""
        if index.shape[1] <= 2:
            return index, rel
        order = np.lexsort((index[:, 1:], rel[:, 1:]), axis=1) + 1
        order = np.concatenate([np.zeros((len(index), 1), dtype=order.dtype), order], axis=1)
        return np.take_along_axis(index, order, 1), np.take_along_axis(rel, order, 1)

    def _rank_chunks(self, ranked: np.ndarray) -> np.ndarray:
        """The combinatorial-number-system rank of each sorted row, in ``classes`` field chunks."""
        table, field = _binomials(self.classes, self.slots), self.fields()[0]
        mask = (1 << field.bits) - 1
        out = np.zeros((len(ranked), field.count), dtype=np.uint64)
        for row, classes in enumerate(ranked.tolist()):
            rank = sum(table[j + 1][c] for j, c in enumerate(classes))
            out[row] = [(rank >> (field.bits * chunk)) & mask for chunk in range(field.count)]
        return out

    def _unrank(self, chunks: np.ndarray) -> np.ndarray:
        """The sorted classes of each rank (greedy: the largest c with C(c, j) within the rest)."""
        table, bits = _binomials(self.classes, self.slots), self.fields()[0].bits
        limit = math.comb(self.classes, self.slots)
        out = np.zeros((len(chunks), self.slots), dtype=np.int64)
        for row, parts in enumerate(chunks.tolist()):
            rank = sum(int(part) << (bits * chunk) for chunk, part in enumerate(parts))
            if rank >= limit:
                raise FormatError(f"a packed top-k row's class set {rank} is not one of the "
                                  f"C({self.classes}, {self.slots}) sets")
            for j in range(self.slots, 0, -1):
                c = bisect_right(table[j], rank) - 1
                out[row, j - 1] = c
                rank -= table[j][c]
        return out

    def encode(self, logp: np.ndarray) -> dict[str, np.ndarray]:
        """The fields of N rows of log p̄ (``(N, C)``, any float dtype)."""
        full = np.asarray(logp, dtype=np.float64).reshape(-1, self.classes)
        order = np.argsort(-full, axis=1, kind="stable")
        top = order[:, :self.slots]
        values = np.take_along_axis(full, top, axis=1)
        out: dict[str, np.ndarray] = {"class": top.astype(np.uint32)}
        levels = (1 << self.bits) - 1
        if self.slots > 1:
            rel = np.zeros(top.shape, dtype=np.int64)
            below = values[:, :1] - values[:, 1:]  # ≥ 0: how far below the first
            rel[:, 1:] = np.clip(np.rint(below / self.step), 0, levels)
            top, rel = self._canonical(top, rel)
            out["class"], out["rel"] = top.astype(np.uint32), rel[:, 1:].astype(np.uint32)
        if self.slots < self.classes:
            rest = np.take_along_axis(full, order[:, self.slots:], axis=1)
            peak = rest.max(axis=1)
            log_tail = peak + np.log(np.exp(rest - peak[:, None]).sum(axis=1))
            low, high = self.tail_range
            scaled = (log_tail - values[:, 0] - low) / (high - low) * levels
            out["tail"] = np.clip(np.rint(scaled), 0, levels).astype(np.uint32)
        return out

    def quantised(self, logp: np.ndarray) -> dict[str, np.ndarray]:
        """N top-k records (``index``, ``logp``, ``log_tail``, as a float16 top-k record's fields)
        whose values are the grid's: the first log-probability 0, the others and the tail
        relative to it. What a packed set stores, and what its trainer learns from."""
        return self.quantised_of(self.encode(logp))

    def quantised_of(self, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`quantised` of rows already encoded (their grid indices)."""
        rows = len(fields["class"])
        values = np.zeros((rows, self.slots), dtype=np.float64)
        if self.slots > 1:
            values[:, 1:] = -fields["rel"].astype(np.float64) * self.step
        low, high = self.tail_range
        tail = (low + fields["tail"].astype(np.float64) / ((1 << self.bits) - 1) * (high - low)
                if "tail" in fields else np.full(rows, LOGP_FLOOR))
        return {"index": np.asarray(fields["class"]).reshape(rows, self.slots), "logp": values, "log_tail": tail}

    def decode(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        """Dense float32 log p̄ ``(N, C)`` of N rows: the grid's values as a float16 top-k record
        holds them (:meth:`quantised`), completed and renormalised as one is read."""
        record = self.quantised_of(fields)
        known, tail = record["logp"].astype(np.float16), record["log_tail"].astype(np.float16)
        return complete_logp_rows(self.classes, record["index"].astype(np.int64), known, tail,
                                  np.ones(record["index"].shape, dtype=bool), "packed top-k")


@lru_cache(maxsize=16)
def _binomials(classes: int, slots: int) -> tuple[list[int], ...]:
    """``table[j][c]`` = C(c, j) for j ≤ ``slots``, c ≤ ``classes`` (Python ints: C(1000, 10) > 2⁶⁴)."""
    return tuple([math.comb(c, j) for c in range(classes + 1)] for j in range(slots + 1))
