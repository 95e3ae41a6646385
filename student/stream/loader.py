"""The deterministic batch stream a student trains on: transfer sets mixed by weight (and the
real split), read epoch by epoch without replacement, in DataLoader workers, on DDP ranks.

How the stream is cut, and why it can start at any step without saved reader state:

* Each of the ``world_size × num_workers`` **readers** owns a disjoint part of every set and of
  the real split (:mod:`student.stream.order`, :mod:`student.stream.real`) and reads it as
  epochs: every row of its part once per epoch, in an order seeded by ``(seed, member, reader,
  epoch)``, shuffled in windows of several shards. Members mixed by weight each run through
  their own epochs.
* A reader's ``k``-th batch takes a fixed quota of rows from each member
  (:mod:`student.stream.mixing`), so how far each member has read is a closed-form function of
  ``k``; the batch's rows are then permuted by ``(seed, reader, k)``.
* Batches travel between processes in **items** of up to ``batches_per_item`` batches (one
  transfer per item). Item ``j`` covers the rank's batches ``[j·P, (j+1)·P)`` and is made by
  reader ``j mod W`` (W workers), whose own batches it holds as ``k = (j div W)·P + …``. A stream
  started at step ``s`` begins with item ``⌊s/P⌋``, so DataLoader worker ``i`` plays reader
  ``(⌊s/P⌋ + i) mod W`` — exactly the worker whose turn it is in the DataLoader's round robin.

So the stream is a pure function of (seed, batch size, workers, items per transfer, world size,
rank, window) and the step it starts at: a run resumed at any step reads what the uninterrupted
run read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.errors import UserError
from student.shards import DecodedCache, SetShards, ShardDamage, damage_message, open_transfer_sets
from student.stream.mixing import Quotas
from student.stream.order import PartOrder, reader_part
from student.stream.real import RealMember, RealPart
from student.stream.sets import ReadLog, SetMember

ERROR_KEY = "__error__"
FIELDS = ("image", "target", "label", "has_target", "origin", "sample", "sources")
# The extra row field of a stream with a sampled-class set: importance weights (zeros elsewhere).
WEIGHTS = "weights"
SET_ORDER, REAL_ORDER, BATCH_ORDER = 21, 22, 23  # seed words of the stream's random parts
Chunk = dict[str, np.ndarray]


@dataclass(frozen=True)
class StreamPlan:
    """Everything the content and order of the stream depends on (besides the data).
    ``shuffle_window``: rows of a set shuffled together (several shards open at once)."""

    batch_size: int
    seed: int
    start_step: int = 0
    num_workers: int = 0
    world_size: int = 1
    rank: int = 0
    batches_per_item: int = 8
    shuffle_window: int = 16384
    cache_bytes: int = 1 << 30
    on_bad_shard: str = "error"


def to_item(batches: list[Chunk], log: ReadLog) -> dict[str, Any]:
    """Stack batches into one transfer: images become NCHW torch tensors."""
    images = np.stack([b["image"] for b in batches])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3))),
        **{name: torch.from_numpy(np.stack([b[name] for b in batches])) for name in batches[0] if name != "image"},
        **log.take(),
    }


class Reader:
    """One reader's members and the batches it makes (its ``k``-th batch at any ``k``)."""

    def __init__(self, sets: list[SetShards], real: RealPart | None, plan: StreamPlan, reader: int,
                 readers: int) -> None:
        self.plan, self.reader = plan, reader
        self.width = sets[0].width if sets else (real.source.out_dim if real is not None and real.values else 0)
        weighted = any(s.sampled for s in sets)
        self.log, cache = ReadLog(), DecodedCache(plan.cache_bytes)
        self.members: list[Any] = []
        for origin, shards in enumerate(sets):
            part = reader_part(shards.samples, reader, readers)
            if not part:
                raise UserError(f"transfer set {shards.directory}: too few samples to share among {readers} "
                                f"readers; lower train.num_workers")
            order = PartOrder(part, plan.shuffle_window, (plan.seed, SET_ORDER, origin, reader))
            self.members.append(SetMember(shards, order, cache, self.log, origin=origin, weighted=weighted,
                                          on_bad_shard=plan.on_bad_shard))
        weights = [s.weight for s in sets]
        if real is not None:
            self.members.append(RealMember(real, reader, readers, (plan.seed, REAL_ORDER, reader), self.width,
                                           origin=len(sets), weighted=weighted))
            weights.append(real.weight)
        self.quotas = Quotas(weights, plan.batch_size)

    def batch(self, k: int) -> Chunk:
        given, counts = self.quotas.given(k), self.quotas.counts(k)
        parts = [member.take(int(given[m]), int(given[m] + counts[m]), k)
                 for m, member in enumerate(self.members) if counts[m]]
        order = np.random.default_rng([self.plan.seed, BATCH_ORDER, self.reader, k]).permutation(self.plan.batch_size)
        if len(parts) == 1:
            return {name: values[order] for name, values in parts[0].items()}
        return {name: np.concatenate([p[name] for p in parts])[order] for name in parts[0]}


class TransferStream(IterableDataset):
    """The items of one DataLoader worker (or of the main process): see the module docstring."""

    def __init__(self, sets: list[SetShards], plan: StreamPlan, real: RealPart | None = None) -> None:
        super().__init__()
        if not sets and real is None:
            raise ValueError("a stream needs a transfer set or the real split")
        self.sets, self.plan, self.real = sets, plan, real

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
        plan, per_item = self.plan, self.plan.batches_per_item
        item = plan.start_step // per_item + worker
        consumer = item % workers
        reader = Reader(self.sets, self.real, plan, plan.rank * workers + consumer, plan.world_size * workers)
        while True:
            first, last = max(item * per_item, plan.start_step), (item + 1) * per_item
            ks = [(item // workers) * per_item + (g - item * per_item) for g in range(first, last)]
            yield to_item([reader.batch(k) for k in ks], reader.log)
            item += workers


class TransferLoader:
    """Endless batches ``{"image": uint8 NCHW, "target": float32 (N, width), "label": int64 (N,),
    "has_target": bool (N,), "origin": int16 (N,), "sample": int64 (N,), "sources": int32 (N, 2)}``.
    ``target`` is the teacher's target row (log p̄ over the classes, or ``[μ, log σ²]``; zeros for
    real-split rows, or their regression targets in an ERM stream), ``label`` −1 where a sample has
    no real label, ``has_target`` False where it has no teacher target (real-split samples),
    ``origin`` the position of the sample's set in ``sets`` (``len(sets)`` for the real split),
    ``sample`` its number within its set (the image index for the real split), ``sources`` the
    real images it was made from (−1: none); with a sampled-class set among ``sets``, also
    ``"weights"``: float32 (N, width), its importance weights (zero rows elsewhere). ``visited`` /
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
            persistent_workers=False,
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
                    source: Any = None, **plan: Any) -> TransferLoader:
    """Open and check ``(set directory, weight)`` pairs, and stream them (see :class:`StreamPlan`);
    ``source``: the training split replay sets rebuild their images from."""
    opened = open_transfer_sets(sets, on_bad_shard=plan.get("on_bad_shard", "error"), source=source)
    return TransferLoader(opened, StreamPlan(batch_size=batch_size, seed=seed, num_workers=num_workers, **plan))
