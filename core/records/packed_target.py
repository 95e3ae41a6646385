"""Top-k targets quantised into a few bits a value: the target half of a packed replay record.

A row keeps the k most probable classes (⌈log2 C⌉ bits each, most probable first), their
log-probabilities relative to the first one on a uniform grid (``bits`` bits each: the first is
0 by construction and not stored), and the log of the remaining mass relative to the first on
a grid of its own (it may exceed the first: a flat distribution's tail outweighs any class).
Reading a row back spreads the tail evenly over the other classes and renormalises, exactly as
a float16 top-k record is read (:func:`core.records.target_codec.complete_logp_rows`), so the
quantisation is the only difference between the two.

Why relative to the first: the absolute log-probabilities of a row shift together when it is
renormalised, so their offset carries nothing; the differences below the first are what the
student learns from, and a fixed grid on them bounds every value's error by half a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
        out = [BitField("class", bits_for(self.classes), self.slots)]
        if self.slots > 1:
            out.append(BitField("rel", self.bits, self.slots - 1))
        if self.slots < self.classes:
            out.append(BitField("tail", self.bits))
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
            rel = values[:, :1] - values[:, 1:]  # ≥ 0: how far below the first
            out["rel"] = np.clip(np.rint(rel / self.step), 0, levels).astype(np.uint32)
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
