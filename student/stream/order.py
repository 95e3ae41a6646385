"""The order a reader reads its part of a set in: epochs without replacement, shuffled in windows.

A reader (one of ``world size × DataLoader workers``) owns a part of every set: whole shards
``i ≡ reader (mod readers)`` when the set has at least as many shards as readers, else every
``readers``-th row of each shard — disjoint parts that together cover the set. The part is read
as an endless sequence of **epochs**; in each, every row of the part comes exactly once: its
shards are put in a seeded order, cut into **windows** of about ``window`` rows (several shards
open at once, the block shuffle of mosaicml-streaming's ``py1b``/``py1br``), and the rows of each
window are permuted together.

Everything is a function of plain numbers — the seed words, the epoch, the window — so position
``t`` of the sequence maps to ``(epoch, window, offset)`` without any reader state, and a reader
can start anywhere (a run resumed mid-epoch reads what the uninterrupted run read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PartOrder", "Piece", "Spot", "reader_part"]


@dataclass(frozen=True)
class Piece:
    """The rows ``first, first + stride, …`` (``rows`` of them) of shard ``shard``."""

    shard: int
    first: int
    stride: int
    rows: int

    def row_numbers(self) -> np.ndarray:
        return np.arange(self.first, self.first + self.stride * self.rows, self.stride, dtype=np.int64)


def reader_part(samples: Sequence[int], reader: int, readers: int) -> list[Piece]:
    """Reader ``reader``'s pieces of a set whose shards hold ``samples`` rows each."""
    if len(samples) >= readers:
        return [Piece(i, 0, 1, int(samples[i])) for i in range(reader, len(samples), readers)]
    pieces = [Piece(i, reader, readers, len(range(reader, int(n), readers))) for i, n in enumerate(samples)]
    return [piece for piece in pieces if piece.rows > 0]


@dataclass(frozen=True)
class Spot:
    """Where position ``t`` of a reader's sequence lies: epoch, window, and the window's first position."""

    epoch: int
    window: int
    start: int  # position of the window's first row in the whole sequence
    rows: int  # rows in the window


class PartOrder:
    """The endless, epoch-by-epoch order of one reader's part (see the module docstring).
    ``seed`` words identify the stream (job seed, set, reader)."""

    def __init__(self, part: list[Piece], window: int, seed: Sequence[int]) -> None:
        if not part:
            raise ValueError("a reader's part needs at least one piece")
        self.part, self.window, self.seed = list(part), max(1, int(window)), tuple(int(s) for s in seed)
        self.length = sum(piece.rows for piece in self.part)  # rows per epoch

    def windows(self, epoch: int) -> list[tuple[int, ...]]:
        """Epoch ``epoch``'s windows: groups of the part's pieces (by position in ``part``) in a
        seeded order, each of at least ``window`` rows but the last."""
        return _windows(self.seed, epoch, tuple(p.rows for p in self.part), self.window)

    def locate(self, t: int) -> Spot:
        """The window holding position ``t``."""
        epoch, offset = divmod(int(t), self.length)
        start = epoch * self.length
        for number, pieces in enumerate(self.windows(epoch)):
            rows = sum(self.part[i].rows for i in pieces)
            if offset < rows:
                return Spot(epoch, number, start, rows)
            offset -= rows
            start += rows
        raise AssertionError("windows cover the epoch")

    def rows(self, spot: Spot) -> tuple[np.ndarray, np.ndarray]:
        """``(piece, row)`` of every position of the window, in the window's seeded order:
        ``piece`` indexes ``part``, ``row`` is the row within that piece's shard."""
        pieces = self.windows(spot.epoch)[spot.window]
        which = np.concatenate([np.full(self.part[i].rows, i, dtype=np.int64) for i in pieces])
        rows = np.concatenate([self.part[i].row_numbers() for i in pieces])
        order = np.random.default_rng([*self.seed, spot.epoch, spot.window, 1]).permutation(len(rows))
        return which[order], rows[order]


@lru_cache(maxsize=64)
def _windows(seed: tuple[int, ...], epoch: int, sizes: tuple[int, ...], window: int) -> list[tuple[int, ...]]:
    order = np.random.default_rng([*seed, epoch, 0]).permutation(len(sizes))
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    rows = 0
    for piece in order.tolist():
        current.append(piece)
        rows += sizes[piece]
        if rows >= window:
            groups.append(tuple(current))
            current, rows = [], 0
    if current and groups and rows < window // 2:  # a short tail joins the last window
        groups[-1] = groups[-1] + tuple(current)
    elif current:
        groups.append(tuple(current))
    return groups
