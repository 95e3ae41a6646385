"""Stream weighted transfer sets with webdataset: resampled shards, mixing, shuffling, decoding.

Why the pipeline is assembled from webdataset's parts instead of ``wds.WebDataset(...,
resampled=True)`` + ``wds.RandomMix``: in webdataset 1.0.2 the resampled shard list seeds itself
from the pid, the clock and ``os.urandom``, and ``RandomMix`` draws from the global ``random``
module, so a run could not be repeated. Here ``ResampledShards(deterministic=True)``,
``split_by_node``, ``tarfile_samples`` and ``shuffle`` get explicit seeds (run seed + worker id).

Why every shard's sample count is checked: webdataset's tar reader treats a cut file or a
garbled header as the end of the archive, so a damaged shard would silently look short.
Damage never reaches training silently: it ends the run with a :class:`UserError` naming the
shard. Samples are decoded by ``pipeline.format.decode_fields`` (no pickle, no default decoders).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import UserError
from pipeline.format import FormatError, decode_fields, read_index, shard_urls

ERROR_KEY = "__error__"


@dataclass(frozen=True)
class SetShards:
    """One transfer set as its index lists it (checked against the files on disk)."""

    directory: str
    weight: float
    urls: tuple[str, ...]
    samples: tuple[int, ...]
    num_classes: int


class ShardDamage(Exception):
    """A shard that webdataset or the decoder could not read; carries the shard's url."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def damage_message(url: str, set_dir: str, reason: str) -> str:
    return (f"transfer shard {url} is damaged ({reason}); run `transferset verify {set_dir}`, then "
            f"delete the bad shard and run `transferset generate` again to remake it")


# ---------------------------------------------------------------- opening sets


def _open_set(set_dir: str, weight: float) -> SetShards:
    try:
        index = read_index(set_dir)
        if index is None:
            raise UserError(f"transfer set {set_dir}: no index.json, the set is incomplete; "
                            f"run `transferset generate CONFIG` to finish it")
        urls = shard_urls(set_dir, index)
    except FormatError as err:
        raise UserError(f"transfer set {set_dir}: {err}") from err
    entries = index["shards"]
    samples = tuple(int(entry.get("samples", -1)) for entry in entries)
    if not urls or (min(samples) >= 0 and sum(samples) == 0):
        raise UserError(f"transfer set {set_dir}: its index lists no samples; regenerate the set")
    for url, entry in zip(urls, entries, strict=True):
        path = Path(url)
        if not path.is_file():
            raise UserError(damage_message(url, set_dir, "file missing"))
        if "bytes" in entry and path.stat().st_size != int(entry["bytes"]):
            raise UserError(damage_message(
                url, set_dir, f"{path.stat().st_size} bytes, the index says {entry['bytes']}"))
    num_classes = index.get("num_classes", len(index.get("classes", [])))
    if not num_classes:
        raise UserError(f"transfer set {set_dir}: index.json gives no num_classes")
    return SetShards(str(set_dir), float(weight), tuple(urls), samples, int(num_classes))


def open_transfer_sets(sets: list[tuple[str, float]]) -> list[SetShards]:
    """Check every set before training: index, shard files and sizes, one class count."""
    if not sets:
        raise UserError("kd training needs at least one transfer set")
    if any(weight < 0 for _, weight in sets):
        raise UserError(f"transfer set weights must be >= 0, got {[w for _, w in sets]}")
    opened = [_open_set(str(d), w) for d, w in sets if w > 0]
    if not opened:
        raise UserError("transfer set weights are all 0; give at least one set a positive weight")
    counts = {s.directory: s.num_classes for s in opened}
    if len(set(counts.values())) > 1:
        raise UserError(f"transfer sets disagree on the number of classes: {counts}")
    return opened


# ---------------------------------------------------------------- the stream


def _read_shards(src: Iterator[dict[str, Any]], expected: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Raw samples of each shard url from ``src``, with webdataset's tar reader; a shard that
    fails to read, or holds fewer samples than its index says, raises :class:`ShardDamage`."""
    for item in src:
        url = item["url"]
        samples = iter(wds.tarfile_samples([{"url": url}]))
        count = 0
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as err:  # webdataset and tarfile raise many types
                raise ShardDamage(url, _one_line(err)) from err
            count += 1
            yield sample
        if expected.get(url, -1) >= 0 and count != expected[url]:
            raise ShardDamage(url, f"{count} complete samples read, the index lists {expected[url]}")


def _mix(streams: list[Iterator[dict[str, Any]]], probs: list[float], rng: random.Random):
    """Draw each sample from stream i with probability probs[i] (a seeded ``wds.RandomMix``)."""
    cumulative = np.cumsum(probs) / np.sum(probs)
    last = len(streams) - 1
    while True:
        yield next(streams[min(bisect.bisect_right(cumulative, rng.random()), last)])


def _decode(raw: dict[str, Any], num_classes: int) -> dict[str, Any]:
    fields = {k: v for k, v in raw.items() if not k.startswith("__")}
    try:
        decoded = decode_fields(fields)
    except Exception as err:  # PIL, numpy and json each raise their own types
        raise ShardDamage(raw["__url__"], f"sample {raw['__key__']}: {_one_line(err)}") from err
    if decoded["logp"].shape != (num_classes,):
        raise ShardDamage(raw["__url__"], f"sample {raw['__key__']}: logp shape {decoded['logp'].shape}, "
                                          f"expected ({num_classes},)")
    return decoded


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    shapes = {s["image"].shape for s in samples}
    if len(shapes) > 1:
        raise UserError(f"transfer sets hold images of different shapes {sorted(shapes)}; "
                        f"mix only sets made from the same source")
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return {
        "image": images,
        "logp": torch.from_numpy(np.stack([s["logp"] for s in samples]).astype(np.float32)),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
    }


class TransferStream(IterableDataset):
    """Endless batches of the mixed sets, made inside a DataLoader worker (or the main process).

    Worker ``w`` seeds everything from ``seed + w``: workers read different shards, and a run
    is reproducible for a fixed ``num_workers``. A damaged shard ends the stream with one
    ``{ERROR_KEY: message}`` item, so the main process can raise a clean one-line UserError.
    """

    def __init__(self, sets: list[SetShards], batch_size: int, seed: int, shuffle_buffer: int) -> None:
        super().__init__()
        self.sets, self.batch_size, self.seed, self.shuffle_buffer = sets, batch_size, seed, shuffle_buffer
        self.num_classes = sets[0].num_classes

    def _set_stream(self, position: int, shards: SetShards, worker_seed: int) -> Iterator[dict[str, Any]]:
        urls = list(shards.urls)
        expected = dict(zip(urls, shards.samples, strict=True))
        pipeline = wds.DataPipeline(
            wds.ResampledShards(urls, seed=position, worker_seed=lambda: worker_seed, deterministic=True),
            wds.split_by_node,
            lambda src: _read_shards(src, expected),
        )
        return iter(pipeline)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_seed = self.seed + (worker.id if worker is not None else 0)
        by_url = {url: s.directory for s in self.sets for url in s.urls}
        try:
            yield from self._batches(worker_seed)
        except ShardDamage as err:
            yield {ERROR_KEY: damage_message(err.url, by_url.get(err.url, "SET_DIR"), err.reason)}
        except UserError as err:
            yield {ERROR_KEY: str(err)}

    def _batches(self, worker_seed: int) -> Iterator[dict[str, Any]]:
        streams = [self._set_stream(i, s, worker_seed) for i, s in enumerate(self.sets)]
        mixed = _mix(streams, [s.weight for s in self.sets], random.Random(worker_seed))
        shuffle = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                              rng=random.Random(worker_seed + 1))
        pending: list[dict[str, Any]] = []
        for raw in shuffle(mixed):
            pending.append(_decode(raw, self.num_classes))
            if len(pending) == self.batch_size:
                yield _collate(pending)
                pending = []


class TransferLoader:
    """Iterable of batches ``{"image": uint8 NCHW, "logp": float32 (N, C), "label": int64 (N,)}``;
    ``label`` is −1 where a sample has no real label. Iteration never ends by itself."""

    def __init__(self, sets: list[SetShards], *, batch_size: int, seed: int, num_workers: int,
                 shuffle_buffer: int) -> None:
        self.sets = sets
        self.num_classes = sets[0].num_classes
        self.dataset = TransferStream(sets, batch_size, seed, shuffle_buffer)
        self.loader = DataLoader(
            self.dataset, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(seed),  # keeps the global torch RNG untouched
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            if ERROR_KEY in batch:
                raise UserError(batch[ERROR_KEY])
            yield batch
