"""The endless, deterministic batch stream a student trains on: weighted transfer sets (and
optionally the real split), resampled shards, a shuffle buffer, DataLoader workers, DDP ranks.

How the stream is cut (why it can be resumed without saving any reader state):

* Training is divided into **segments** of ``epoch_steps`` steps (an epoch). Every reader
  starts each segment afresh, seeded from ``(seed, segment, rank, consumer)``: a run resumed
  from a checkpoint at an epoch boundary sees exactly the batches the uninterrupted run saw.
* Batches travel between processes in **items** of up to ``batches_per_item`` batches (one
  inter-process transfer per item, not per tensor per batch). Item ``j`` of a segment covers
  batches ``[j·K, (j+1)·K)`` of it, and is made by consumer ``(segment·items + j) mod W`` —
  exactly the DataLoader worker whose turn it is in the DataLoader's round robin, also after a
  resume. So the stream is a pure function of (seed, batch size, epoch steps, workers, items
  per transfer, world size).
* Each of the ``world_size × num_workers`` consumers resamples its own part of each set's shard
  list (shard ``i`` goes to consumer ``i mod G``; a set with fewer shards than consumers is
  split by sample instead), so DDP ranks and workers never read the same records.

Inside a consumer, a shard is drawn with replacement from its part, decoded whole (see
:mod:`student.shards`), its rows permuted; sets are mixed per sample by weight; a shuffle
buffer of ``shuffle_buffer`` samples mixes across shards. All of it is numpy indexing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.errors import UserError
from student.data import SplitSampler, crop_flip
from student.shards import DecodedCache, SetShards, ShardArrays, ShardDamage, damage_message, open_transfer_sets

ERROR_KEY = "__error__"
FIELDS = ("image", "target", "label", "has_target", "origin")
# The extra row field of a stream with a sampled-class set: importance weights (zeros elsewhere).
WEIGHTS = "weights"
Chunk = dict[str, np.ndarray]


@dataclass(frozen=True)
class StreamPlan:
    """Everything the content and order of the stream depends on (besides the data)."""

    batch_size: int
    seed: int
    epoch_steps: int
    start_step: int = 0
    num_workers: int = 0
    world_size: int = 1
    rank: int = 0
    batches_per_item: int = 8
    shuffle_buffer: int = 2000
    cache_bytes: int = 1 << 30
    on_bad_shard: str = "error"

    @property
    def items_per_segment(self) -> int:
        return math.ceil(self.epoch_steps / self.batches_per_item)


@dataclass
class RealPart:
    """The real training split as a stream member: labels, no teacher target."""

    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray
    pad: int
    flip: bool
    weight: float
    class_balanced: bool = False


@dataclass
class ReadLog:
    """What a consumer read since the last item: shard visits and skipped damaged shards."""

    visited: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def take(self) -> dict[str, list[str]]:
        out = {"visited": self.visited, "skipped": self.skipped}
        self.visited, self.skipped = [], []
        return out


def gather(chunk: Chunk, rows: np.ndarray) -> Chunk:
    return {name: values[rows] for name, values in chunk.items()}


def concat(parts: list[Chunk]) -> Chunk:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def shard_chunk(arrays: ShardArrays, origin: int, weighted: bool = False) -> Chunk:
    """A decoded shard as stream rows; ``origin`` is the set's position among the student's sets.
    ``weighted``: the stream carries sampled-class weights (zero rows for other sets)."""
    chunk = {"image": arrays.images, "target": arrays.target, "label": arrays.labels,
             "has_target": np.ones(len(arrays), dtype=bool), "origin": np.full(len(arrays), origin, dtype=np.int16)}
    if weighted:
        chunk[WEIGHTS] = arrays.weights if arrays.weights is not None else np.zeros_like(arrays.target)
    return chunk


def consumer_part(num_shards: int, samples: tuple[int, ...], consumer: int,
                  consumers: int) -> list[tuple[int, int, int]]:
    """``(shard, first row, row stride)`` of this consumer: whole shards when there are enough,
    else every ``consumers``-th row of each shard (disjoint either way)."""
    if num_shards >= consumers:
        return [(i, 0, 1) for i in range(consumer, num_shards, consumers)]
    return [(i, consumer, consumers) for i in range(num_shards) if samples[i] < 0 or samples[i] > consumer]


class ShardStream:
    """Samples of one set for one consumer: resampled shards, each decoded whole, rows permuted."""

    def __init__(self, shards: SetShards, part: list[tuple[int, int, int]], rng: np.random.Generator,
                 cache: DecodedCache, on_bad_shard: str, log: ReadLog, origin: int = 0, weighted: bool = False) -> None:
        self.shards, self.part, self.rng, self.cache, self.origin = shards, list(part), rng, cache, origin
        self.on_bad_shard, self.log, self.weighted = on_bad_shard, log, weighted
        self.chunk: Chunk | None = None
        self.pos = 0

    def _next_shard(self) -> None:
        while self.part:
            shard, first, stride = self.part[int(self.rng.integers(len(self.part)))]
            url = self.shards.urls[shard]
            try:
                arrays = self.cache.get(url, self.shards.samples[shard], self.shards.width, self.shards.replay)
                if self.shards.sampled != (arrays.weights is not None):
                    raise ShardDamage(url, f"its targets are {'not ' * self.shards.sampled}sampled-class records, "
                                           f"the index says {'sampled' if self.shards.sampled else 'otherwise'}")
            except ShardDamage:
                if self.on_bad_shard != "skip":
                    raise
                self.log.skipped.append(url)
                self.part = [p for p in self.part if p[0] != shard]
                continue
            self.log.visited.append(url)
            rows = np.arange(first, len(arrays), stride)
            self.chunk = gather(shard_chunk(arrays, self.origin, self.weighted), self.rng.permutation(rows))
            self.pos = 0
            return
        raise UserError(f"transfer set {self.shards.directory}: every shard this reader was given is "
                        f"damaged; run `transferset verify {self.shards.directory}`")

    def take(self, n: int) -> Chunk:
        parts = []
        while n > 0:
            if self.chunk is None or self.pos >= len(self.chunk["label"]):
                self._next_shard()
            assert self.chunk is not None
            k = min(n, len(self.chunk["label"]) - self.pos)
            parts.append({name: values[self.pos:self.pos + k] for name, values in self.chunk.items()})
            self.pos += k
            n -= k
        return concat(parts)


class RealStream:
    """Augmented images of the real split (epoch permutations or class-balanced draws), with a
    zero row of ``width`` values in the target slot (they have no teacher target)."""

    def __init__(self, real: RealPart, width: int, rng: np.random.Generator, origin: int = 0,
                 weighted: bool = False) -> None:
        self.real, self.width, self.origin, self.weighted = real, width, origin, weighted
        self.sampler = SplitSampler(real.labels, int(rng.integers(2**62)), real.class_balanced)
        self.images = torch.from_numpy(real.images)
        self.generator = torch.Generator().manual_seed(int(rng.integers(2**62)))

    def take(self, n: int) -> Chunk:
        rows = self.sampler.draw(n)
        images = crop_flip(self.images[rows], self.real.pad, self.real.flip, self.generator)
        chunk = {"image": images.permute(0, 2, 3, 1).numpy(),
                 "target": np.zeros((n, self.width), dtype=np.float32),
                 "label": self.real.labels[rows.numpy()], "has_target": np.zeros(n, dtype=bool),
                 "origin": np.full(n, self.origin, dtype=np.int16)}
        if self.weighted:
            chunk[WEIGHTS] = np.zeros((n, self.width), dtype=np.float32)
        return chunk


class ShuffledMix:
    """Per-sample weighted mixing of member streams, then a shuffle buffer of ``size`` samples."""

    def __init__(self, streams: list[Any], weights: list[float], size: int, rng: np.random.Generator) -> None:
        self.streams, self.rng = streams, rng
        self.probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.size = size
        self.buffer: Chunk | None = None

    def _mixed(self, n: int) -> Chunk:
        if len(self.streams) == 1:
            return self.streams[0].take(n)
        choice = self.rng.choice(len(self.streams), size=n, p=self.probs)
        parts = [(np.flatnonzero(choice == i), s.take(int((choice == i).sum()))) for i, s in enumerate(self.streams)]
        out = {}
        for name in parts[0][1]:
            first = next(chunk[name] for _, chunk in parts)
            values = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for where, chunk in parts:
                values[where] = chunk[name]
            out[name] = values
        return out

    def next(self, n: int) -> Chunk:
        if self.buffer is None:
            self.buffer = self._mixed(max(self.size, n))
        size = len(self.buffer["label"])
        rows = self.rng.choice(size, size=n, replace=False)
        out = gather(self.buffer, rows)
        fresh = self._mixed(n)
        for name in self.buffer:
            self.buffer[name][rows] = fresh[name]
        return out


def to_item(batches: list[Chunk], log: ReadLog) -> dict[str, Any]:
    """Stack batches into one transfer: images become NCHW torch tensors."""
    images = np.stack([b["image"] for b in batches])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3))),
        **{name: torch.from_numpy(np.stack([b[name] for b in batches])) for name in batches[0] if name != "image"},
        **log.take(),
    }


class TransferStream(IterableDataset):
    """The items of one DataLoader worker (or of the main process): see the module docstring."""

    def __init__(self, sets: list[SetShards], plan: StreamPlan, real: RealPart | None = None) -> None:
        super().__init__()
        if plan.start_step % plan.epoch_steps:
            raise ValueError(f"start_step {plan.start_step} is not a multiple of epoch_steps {plan.epoch_steps}")
        self.sets, self.plan, self.real = sets, plan, real
        self.width = sets[0].width if sets else 0
        self.weighted = any(s.sampled for s in sets)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        by_url = {url: s.directory for s in self.sets for url in s.urls}
        try:
            yield from self._items(worker, workers)
        except ShardDamage as err:
            yield {ERROR_KEY: damage_message(err.url, by_url.get(err.url, "SET_DIR"), err.reason)}
        except UserError as err:
            yield {ERROR_KEY: str(err)}

    def _items(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        plan = self.plan
        per_segment = plan.items_per_segment
        segment = plan.start_step // plan.epoch_steps
        consumer = (segment * per_segment + worker) % workers
        consumers, global_consumer = plan.world_size * workers, plan.rank * workers + consumer
        parts = [consumer_part(len(s.urls), s.samples, global_consumer, consumers) for s in self.sets]
        for shards, part in zip(self.sets, parts, strict=True):
            if not part:
                raise UserError(f"transfer set {shards.directory}: too few samples to share among "
                                f"{consumers} readers; lower train.num_workers")
        cache, log = DecodedCache(plan.cache_bytes), ReadLog()
        while True:
            mine = [j for j in range(per_segment) if (segment * per_segment + j) % workers == consumer]
            if mine:
                seeds = np.random.SeedSequence([plan.seed, segment, plan.rank, consumer]).spawn(len(self.sets) + 2)
                streams: list[Any] = [
                    ShardStream(s, part, np.random.default_rng(sd), cache, plan.on_bad_shard, log, origin,
                                self.weighted)
                    for origin, (s, part, sd) in enumerate(zip(self.sets, parts, seeds, strict=False))
                ]
                weights = [s.weight for s in self.sets]
                if self.real is not None:
                    streams.append(RealStream(self.real, self.width, np.random.default_rng(seeds[-2]),
                                              origin=len(self.sets), weighted=self.weighted))
                    weights.append(self.real.weight)
                mix = ShuffledMix(streams, weights, plan.shuffle_buffer, np.random.default_rng(seeds[-1]))
                for item in mine:
                    count = min(plan.batches_per_item, plan.epoch_steps - item * plan.batches_per_item)
                    yield to_item([mix.next(plan.batch_size) for _ in range(count)], log)
            segment += 1


class TransferLoader:
    """Endless batches ``{"image": uint8 NCHW, "target": float32 (N, width), "label": int64 (N,),
    "has_target": bool (N,), "origin": int16 (N,)}``. ``target`` is the teacher's target row (log p̄
    over the classes, or ``[μ, log σ²]``), ``label`` −1 where a sample has no real label,
    ``has_target`` False where it has no teacher target (real-split samples), ``origin`` the
    position of the sample's set in ``sets`` (``len(sets)`` for the real split); with a sampled-class
    set among ``sets``, also ``"weights"``: float32 (N, width), its importance weights (zero rows
    for the other sets' samples). ``visited`` /
    ``skipped`` collect the shard urls read and the damaged ones skipped, for the metrics."""

    def __init__(self, sets: list[SetShards], plan: StreamPlan, real: RealPart | None = None) -> None:
        self.sets, self.plan = sets, plan
        self.width = sets[0].width if sets else 0  # values per row in the target slot
        self.dataset = TransferStream(sets, plan, real)
        self.loader = DataLoader(
            self.dataset, batch_size=None, num_workers=plan.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Items queued per worker: a few batches of slack against scheduling delays on busy machines.
            prefetch_factor=4 if plan.num_workers else None,
            generator=torch.Generator().manual_seed(plan.seed),  # keeps the global torch RNG untouched
        )
        self.visited: list[str] = []
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for item in self.loader:
            if ERROR_KEY in item:
                raise UserError(item[ERROR_KEY])
            self.visited += item["visited"]
            self.skipped += item["skipped"]
            names = [name for name in item if name not in ("visited", "skipped")]
            for b in range(len(item["label"])):
                yield {name: item[name][b] for name in names}


def transfer_loader(sets: list[tuple[str, float]], batch_size: int, seed: int, num_workers: int = 0,
                    shuffle_buffer: int = 2000, epoch_steps: int = 1000, source: Any = None,
                    **plan: Any) -> TransferLoader:
    """Open and check ``(set directory, weight)`` pairs, and stream them (see :class:`StreamPlan`);
    ``source``: the training split replay sets rebuild their images from."""
    opened = open_transfer_sets(sets, on_bad_shard=plan.get("on_bad_shard", "error"), source=source)
    return TransferLoader(opened, StreamPlan(batch_size=batch_size, seed=seed, epoch_steps=epoch_steps,
                                             num_workers=num_workers, shuffle_buffer=shuffle_buffer, **plan))
