"""What a decoded shard is (:class:`ShardArrays`), what a replay set's reader rebuilds its images
from (:class:`ReplaySource`), and the error that names a damaged shard: kept apart from
:mod:`student.shards` so that its readers (:mod:`student.replay_read`) and it can share them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.records.replay import RecordLayout
from core.sources import Source


@dataclass(frozen=True)
class ReplaySource:
    """What a replay set's reader rebuilds images from: the records' layout and the real images."""

    layout: RecordLayout
    source: Source


@dataclass(frozen=True)
class ShardArrays:
    """A decoded shard: ``images`` uint8 (N, H, W, C), ``target`` float32 (N, width) — log p̄
    over the classes, or rows ``[μ, log σ²]`` of a regression set — and ``labels`` int64 (N,)
    with −1 where a sample has no real class label; ``weights`` float32 (N, C) the importance
    weights of a sampled-class set (None for any other)."""

    url: str
    images: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    sources: np.ndarray | None = None  # int32 (N, 2): the real images each sample is made from, −1 none

    @property
    def nbytes(self) -> int:
        extra = sum(0 if a is None else a.nbytes for a in (self.weights, self.sources))
        return self.images.nbytes + self.target.nbytes + self.labels.nbytes + extra

    def __len__(self) -> int:
        return len(self.labels)


class ShardDamage(Exception):
    """A shard that could not be read or decoded; carries the shard's url."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
