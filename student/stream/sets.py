"""A transfer set as a stream member: one reader's part, read window by window in epoch order.

:class:`SetMember` turns the positions of :class:`student.stream.order.PartOrder` into rows: it
holds the decoded shards of the current window (through the reader's
:class:`student.shards.DecodedCache`, so a set that fits is decoded once per reader and later
epochs touch no file) and the window's seeded order as ``(shard, row)`` pairs, and gathers the
rows a batch asks for from the shards themselves (a window is never copied whole). Each row
carries the set's sample number (the shard's first sample + the row) and the real images it was
made from, so the trainer can count what it read.

A damaged shard with ``train.on_bad_shard: skip`` is dropped for the rest of the run; its places
in a window are filled with other rows of the same window (read again), so positions keep their
meaning and the stream stays a function of plain numbers. Every shard of a reader damaged is an
error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from core.samplers import NO_IMAGE
from student.shards import DecodedCache, SetShards, ShardArrays, ShardDamage
from student.stream.order import PartOrder, Spot

__all__ = ["ReadLog", "SetMember"]

Chunk = dict[str, np.ndarray]


@dataclass
class ReadLog:
    """What a reader read since the last item: shard visits and skipped damaged shards."""

    visited: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def take(self) -> dict[str, list[str]]:
        out = {"visited": self.visited, "skipped": self.skipped}
        self.visited, self.skipped = [], []
        return out


def shard_rows(arrays: ShardArrays, rows: np.ndarray, origin: int, weighted: bool) -> Chunk:
    """Rows ``rows`` of a decoded shard as stream rows (``origin``: the set's position)."""
    n = len(rows)
    sources = arrays.sources[rows] if arrays.sources is not None else np.full((n, 2), NO_IMAGE, np.int32)
    chunk = {"image": arrays.images[rows], "target": arrays.target[rows], "label": arrays.labels[rows],
             "has_target": np.ones(n, dtype=bool), "origin": np.full(n, origin, dtype=np.int16), "sources": sources}
    if weighted:
        chunk["weights"] = arrays.weights[rows] if arrays.weights is not None else np.zeros_like(chunk["target"])
    return chunk


class SetMember:
    """Reader rows of one transfer set, in the order of ``order`` (see the module docstring)."""

    def __init__(self, shards: SetShards, order: PartOrder, cache: DecodedCache, log: ReadLog, *,
                 origin: int, weighted: bool, on_bad_shard: str) -> None:
        self.shards, self.order, self.cache, self.log = shards, order, cache, log
        self.origin, self.weighted, self.on_bad_shard = origin, weighted, on_bad_shard
        self.first_sample = np.concatenate([[0], np.cumsum(shards.samples)[:-1]]).astype(np.int64)
        self.bad: set[int] = set()  # shards found damaged (skip mode)
        self.spot: Spot | None = None
        self.window: tuple[np.ndarray, np.ndarray, dict[int, ShardArrays | None]] = (np.zeros(0), np.zeros(0), {})

    def _check(self, arrays: ShardArrays) -> None:
        if self.shards.sampled != (arrays.weights is not None):
            raise ShardDamage(arrays.url, f"its targets are {'not ' * self.shards.sampled}sampled-class records, "
                                          f"the index says {'sampled' if self.shards.sampled else 'otherwise'}")

    def _decode(self, shards: list[int]) -> dict[int, ShardArrays | None]:
        """The shards' arrays, decoded together (a replay set's source images once for all of
        them); a damaged one is None when damaged shards are skipped."""
        wanted = [shard for shard in dict.fromkeys(shards) if shard not in self.bad]
        by_url = {self.shards.urls[shard]: shard for shard in wanted}
        while True:
            try:
                decoded = self.cache.get_many([(self.shards.urls[s], self.shards.samples[s]) for s in wanted],
                                              self.shards.width, self.shards.shard_format)
                for arrays in decoded:
                    self._check(arrays)
                break
            except ShardDamage as err:
                if self.on_bad_shard != "skip":
                    raise
                self._skip(by_url[err.url])
                wanted.remove(by_url[err.url])
        self.log.visited += [arrays.url for arrays in decoded]
        found: dict[int, ShardArrays | None] = {shard: None for shard in shards}
        found.update(zip(wanted, decoded, strict=True))
        return found

    def _skip(self, shard: int) -> None:
        self.bad.add(shard)
        self.log.skipped.append(self.shards.urls[shard])
        if all(piece.shard in self.bad for piece in self.order.part):
            raise UserError(f"transfer set {self.shards.directory}: every shard this reader was given is "
                            f"damaged; run `transferset verify {self.shards.directory}`")

    def _load(self, spot: Spot) -> None:
        """Decode the window's shards and keep its seeded order as ``(piece, row)`` pairs: rows
        are gathered from the decoded shards batch by batch, never copied as a whole window."""
        pieces, rows = self.order.rows(spot)
        used = np.unique(pieces).tolist()
        arrays = self._decode([self.order.part[i].shard for i in used])
        decoded = {i: arrays[self.order.part[i].shard] for i in used}
        good = np.asarray([decoded[i] is not None for i in pieces.tolist()], dtype=bool)
        if not good.all():
            pieces, rows = self._refill(pieces, rows, good, decoded)
        self.window = (pieces, rows, decoded)
        self.spot = spot

    def _gather(self, first: int, last: int) -> Chunk:
        """Rows ``first … last − 1`` of the loaded window, in its order."""
        pieces, rows, decoded = self.window
        pieces, rows = pieces[first:last], rows[first:last]
        chunk: Chunk = {}
        for i in np.unique(pieces).tolist():
            where = np.flatnonzero(pieces == i)
            part = shard_rows(decoded[i], rows[where], self.origin, self.weighted)
            part["sample"] = self.first_sample[self.order.part[i].shard] + rows[where]
            for name, values in part.items():
                if name not in chunk:
                    chunk[name] = np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
                chunk[name][where] = values
        return chunk

    def _refill(self, pieces: np.ndarray, rows: np.ndarray, good: np.ndarray,
                decoded: dict[int, ShardArrays | None]) -> tuple[np.ndarray, np.ndarray]:
        """The places of skipped shards' rows, given in turn to the window's good rows (or, in a
        window of damaged shards only, to the rows of the part's first good shard)."""
        if good.any():
            donor_pieces, donor_rows = pieces[good], rows[good]
        else:
            spare = next(i for i, piece in enumerate(self.order.part) if self._decode([piece.shard])[piece.shard])
            decoded[spare] = self._decode([self.order.part[spare].shard])[self.order.part[spare].shard]
            donor_rows = self.order.part[spare].row_numbers()
            donor_pieces = np.full(len(donor_rows), spare, dtype=np.int64)
        bad = np.flatnonzero(~good)
        turn = np.arange(len(bad)) % len(donor_rows)
        pieces, rows = pieces.copy(), rows.copy()
        pieces[bad], rows[bad] = donor_pieces[turn], donor_rows[turn]
        return pieces, rows

    def take(self, t0: int, t1: int, k: int = 0) -> Chunk:
        """Rows ``t0 … t1 − 1`` of the member's sequence (``k``, the reader's batch, is unused:
        a set's rows are fixed by their positions)."""
        parts = []
        t = t0
        while t < t1:
            spot = self.spot
            if spot is None or not spot.start <= t < spot.start + spot.rows:
                spot = self.order.locate(t)
                self._load(spot)
            end = min(t1, spot.start + spot.rows)
            parts.append(self._gather(t - spot.start, end - spot.start))
            t = end
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
