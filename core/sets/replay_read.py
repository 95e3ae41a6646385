"""A replay set's shards decoded column-wise, several at once, each source image decoded once.

Why column-wise: pushing every record's target through a one-record ``.npy`` (what a pixel set's
tar member holds) was ~73 % of a rebuild (BENCHMARKS "Replay sets");
:func:`core.records.replay.decode_columns` decodes a shard's target, label and source columns in
a few numpy operations, to the same bits.

Why several shards together: a file-backed source (an image contract, or a source too large to
hold in memory) decodes a file on every ``raw(i)``. The views and mixes of a window of shards
that read one image are made from one decode of it, held from its first use to its last (a
views set holds one image at a time; a mix holds its first image until its partner's turn).
Every image is still made by :func:`core.samplers.apply_params`, generation's own function.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import RecordError
from core.records.format import read_records, sample_key
from core.records.replay import RecordColumns, RecordLayout, decode_columns
from core.records.replay_checks import sample_box_problem
from core.samplers import Params, apply_params
from core.sets.arrays import ShardArrays, ShardDamage, one_line
from core.sets.index import parse_shard_name
from core.sources import Source
from core.store import storage


@dataclass(frozen=True)
class ReadShard:
    """One replay shard's records, decoded but for the images."""

    url: str
    shard: int
    index: np.ndarray  # the records' index column (a sample's key is shard-index)
    samples: list[tuple[str, Params]]  # (sampler kind, parameters) per record
    columns: RecordColumns

    def key(self, row: int) -> str:
        return sample_key(self.shard, int(self.index[row]))


ReadRecords = Callable[[str], np.ndarray]  # a shard's structured records (the format's ``read_records``)


def read_replay_shard(url: str, expected_samples: int, width: int, layout: RecordLayout,
                      read: ReadRecords | None = None) -> ReadShard:
    """A replay shard's records (``read``: how the set's format reads them; default one
    structured ``.npy``) with their columns decoded; :class:`ShardDamage` names the shard (and
    the sample, when one record is bad)."""
    shard = int(parse_shard_name(storage.name_of(url)) or 0)
    try:
        records = read(url) if read is not None else read_records(url, layout.dtype)
    except FileNotFoundError as err:
        raise ShardDamage(url, "file missing") from err
    except Exception as err:  # numpy and the storage layer raise their own types
        raise ShardDamage(url, one_line(err)) from err
    if expected_samples >= 0 and len(records) != expected_samples:
        raise ShardDamage(url, f"{len(records)} complete samples read, the index lists {expected_samples}")
    if not len(records):
        raise ShardDamage(url, "no samples")
    try:
        if width != layout.num_classes:
            raise RecordError(0, f"target shape ({layout.num_classes},), expected ({width},)")
        columns = decode_columns(layout, records)
        samples = layout.params.decode_all(records)
    except RecordError as err:
        raise ShardDamage(url, f"sample {sample_key(shard, int(records['index'][err.row]))}: {one_line(err)}") from err
    return ReadShard(url, shard, records["index"], samples, columns)


def _last_uses(sources: np.ndarray, ready: np.ndarray) -> dict[int, list[int]]:
    """The images to drop once the walk has made every sample whose later image is ``r``."""
    flat, at = sources.ravel(), np.repeat(ready, 2)
    keep = flat >= 0
    images, inverse = np.unique(flat[keep], return_inverse=True)
    last = np.full(len(images), -1, dtype=np.int64)
    np.maximum.at(last, inverse, at[keep])
    drop: dict[int, list[int]] = defaultdict(list)
    for image, r in zip(images.tolist(), last.tolist(), strict=True):
        drop[r].append(image)
    return drop


def rebuild_images(shards: list[ReadShard], source: Source) -> list[np.ndarray]:
    """Every sample's image, one uint8 (N, H, W, C) array per shard. Samples are made in order of
    the later of their images, each image decoded at its first use and dropped after its last. A
    random-resized-crop box outside its image (which only the decoded image can tell; every
    other range was checked by ``decode_columns``) is :class:`ShardDamage` naming the sample."""
    sources = np.concatenate([s.columns.sources for s in shards])
    samples = [sample for s in shards for sample in s.samples]
    ends = np.cumsum([len(s.samples) for s in shards])
    ready = sources.max(axis=1)  # −1: made without a real image
    order = np.argsort(ready, kind="stable")
    walk = ready[order]
    drop, held = _last_uses(sources, ready), {}

    def raw(index: int) -> np.ndarray:
        image = held.get(index)
        if image is None:
            image = held[index] = source.raw(index)
        return image

    def size(index: int) -> tuple[int, int]:
        shape = raw(index).shape  # decoded here, held for the rebuild that follows
        return int(shape[0]), int(shape[1])

    images: list[np.ndarray | None] = [None] * len(samples)
    for step, pos in enumerate(order.tolist()):
        try:
            problem = sample_box_problem(samples[pos][1], size) if source.contract is not None else None
            if problem is not None:  # the one range check that needs the image itself
                raise RecordError(pos, problem)
            images[pos] = apply_params(*samples[pos], source, raw)
        except Exception as err:  # PIL, numpy and torchvision raise their own types
            which = int(np.searchsorted(ends, pos, side="right"))
            shard = shards[which]
            row = pos - (int(ends[which - 1]) if which else 0)
            raise ShardDamage(shard.url, f"sample {shard.key(row)}: {one_line(err)}") from err
        if step + 1 == len(order) or walk[step + 1] != walk[step]:
            for index in drop.pop(int(walk[step]), ()):
                held.pop(index, None)
    out, start = [], 0
    for shard, end in zip(shards, ends.tolist(), strict=True):
        made = images[start:end]
        shapes = {image.shape for image in made}
        if len(shapes) > 1:
            raise ShardDamage(shard.url, f"images of different shapes {sorted(shapes)}")
        out.append(np.stack(made))
        start = end
    return out


def decode_replay_shards(shards: list[tuple[str, int]], width: int, layout: RecordLayout,
                         source: Source, read: ReadRecords | None = None) -> list[ShardArrays]:
    """Replay shards ``(url, expected samples)`` decoded together: one :class:`ShardArrays` each, in
    order. A damaged shard raises :class:`ShardDamage` naming it (the others are not returned:
    a caller that skips bad shards decodes them again without it)."""
    read_shards = [read_replay_shard(url, count, width, layout, read) for url, count in shards]
    images = rebuild_images(read_shards, source)
    return [ShardArrays(shard.url, made, shard.columns.target, shard.columns.labels, shard.columns.weights,
                        shard.columns.sources.astype(np.int32))
            for shard, made in zip(read_shards, images, strict=True)]
