"""The three loaders ``bench/peers.py`` compares on one pixel transfer set, and what it counts.

Every loader yields endless batches ``{"image": uint8 NCHW, "target": float32 log p̄, "label":
int64, "sample": int64 (the sample's number in its set), "source": int64 (the real image it is a
view of)}``, so one training step and one randomness count serve all three:

* :func:`stream_loader` — this project's stream as ``student/build.py`` builds it for a KD student
  (``stream_plan`` with the trainer's defaults: shuffle window, batches per transfer, cache).
* :func:`wds_loader` — the webdataset maintainers' recipe (their FAQ and ``train-resnet50-wds``
  example): shard shuffle, a 5 000-sample shuffle buffer and per-sample decoding in the workers,
  worker batches of 64, then ``WebLoader(...).unbatched().shuffle(1000).batched(B)``.
* :func:`mds_loader` — mosaicml-streaming: the set converted once to MDS (:func:`write_mds`), read
  by ``StreamingDataset(shuffle=True, shuffle_algo="py1e")`` in a plain ``DataLoader``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import gammaln

from core.config import TrainConfig
from core.records.format import parse_key
from core.sources import Source
from student import distributed
from student.build import open_sets, stream_plan
from student.shards import SetShards, decode_shard
from student.stream import TransferLoader

Batch = dict[str, torch.Tensor]
MDS_COLUMNS = {"image": "bytes", "target": "bytes", "label": "int", "sample": "int", "source": "int"}
WDS_SHUFFLE, WDS_WORKER_BATCH, WDS_LOADER_SHUFFLE = 5000, 64, 1000
# The names mosaicml-streaming's package imports from transformers (see import_streaming).
TRANSFORMERS_NAMES = {
    "transformers": (), "transformers.models": (), "transformers.models.auto": (),
    "transformers.models.auto.tokenization_auto": ("AutoTokenizer",),
    "transformers.feature_extraction_utils": ("BatchFeature",),
    "transformers.tokenization_utils_base": ("BatchEncoding",),
}


def import_streaming() -> tuple[Any, Any, Any]:
    """mosaicml-streaming's ``MDSWriter``, ``StreamingDataset`` and stale-shared-memory cleaner.

    Its package imports transformers on import (for its text datasets and StreamingDataLoader's
    type checks; pinned < 5, whose releases need huggingface_hub < 1 where timm here needs 2.x).
    Nothing used here touches it, so while it is absent, empty stand-ins serve that import and
    are removed right after."""
    added = []
    if importlib.util.find_spec("transformers") is None:
        for name, attrs in TRANSFORMERS_NAMES.items():
            module = types.ModuleType(name)
            module.__path__ = []
            for attr in attrs:
                setattr(module, attr, type(attr, (dict,), {}))
            sys.modules[name] = module
            added.append(name)
    try:
        from streaming import MDSWriter, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return MDSWriter, StreamingDataset, clean_stale_shared_memory


def open_set(set_dir: Path, source: Source) -> SetShards:
    """The set, opened and checked as the trainer opens a KD student's sets."""
    return open_sets([(str(set_dir), 1.0)], source.task, TrainConfig(steps=1), source)[0]


def first_samples(opened: SetShards) -> np.ndarray:
    """The set's number of each shard's first sample."""
    return np.concatenate([[0], np.cumsum(opened.samples)[:-1]]).astype(np.int64)


# ---------------------------------------------------------------- (a) this stream


def stream_loader(opened: SetShards, source: Source, batch: int, seed: int, workers: int) -> Iterator[Batch]:
    """(a): the trainer's stream with its defaults (``student.build.stream_plan``)."""
    cfg = TrainConfig(steps=1, batch_size=batch, num_workers=workers)
    plan = stream_plan(cfg, batch, seed, 0, distributed.Dist(), source, opened.width)
    for b in TransferLoader([opened], plan):
        yield {"image": b["image"], "target": b["target"], "label": b["label"], "sample": b["sample"],
               "source": b["sources"][:, 0].long()}


# ---------------------------------------------------------------- (b) webdataset


def wds_row(sample: dict[str, Any], first: np.ndarray) -> tuple[Any, ...]:
    """One decoded webdataset sample as a tuple; the source image comes from its JSON meta."""
    shard, index = parse_key(sample["__key__"])
    return (np.ascontiguousarray(sample["png"].transpose(2, 0, 1)), sample["logp.npy"].astype(np.float32),
            int(sample["cls"]), int(first[shard] + index), int(sample["json"]["params"]["image"]))


def wds_loader(opened: SetShards, batch: int, seed: int, workers: int) -> Iterator[Batch]:
    """(b): the maintainers' recipe, a new pass over the shards whenever one ends (``detshuffle``:
    the shard order changes with the pass, as their seeded multi-epoch runs do)."""
    import webdataset as wds

    dataset = (wds.WebDataset(list(opened.urls), shardshuffle=len(opened.urls), detshuffle=True, seed=seed)
               .shuffle(WDS_SHUFFLE).decode("rgb8").map(functools.partial(wds_row, first=first_samples(opened)))
               .batched(WDS_WORKER_BATCH))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    loader = loader.unbatched().shuffle(WDS_LOADER_SHUFFLE).batched(batch, partial=False)
    while True:
        for image, target, label, sample, source in loader:
            yield {"image": image, "target": target, "label": label, "sample": sample, "source": source}


# ---------------------------------------------------------------- (c) mosaicml-streaming


def write_mds(opened: SetShards, out: Path) -> np.ndarray:
    """Convert the set to MDS once (kept if complete): each sample's image as raw HWC bytes, its
    target as float32 bytes, label, sample number and source image. Returns the samples per
    source image (for the uniform reference)."""
    counts_path = out / "samples_per_image.npy"
    if counts_path.is_file():
        return np.load(counts_path)
    mds_writer = import_streaming()[0]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    sources = []
    with mds_writer(out=str(partial), columns=MDS_COLUMNS) as writer:
        for first, url, count in zip(first_samples(opened), opened.urls, opened.samples, strict=True):
            arrays = decode_shard(url, count, opened.width)
            for row in range(len(arrays)):
                writer.write({"image": arrays.images[row].tobytes(), "target": arrays.target[row].astype(np.float32)
                              .tobytes(), "label": int(arrays.labels[row]), "sample": int(first + row),
                              "source": int(arrays.sources[row, 0])})
            sources.append(arrays.sources[:, 0])
    counts = np.bincount(np.concatenate(sources))
    np.save(partial / "samples_per_image.npy", counts)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return counts


def mds_collate(rows: list[dict[str, Any]], shape: tuple[int, int, int]) -> Batch:
    """A batch of MDS rows (in the loader's worker): raw image bytes → uint8 NCHW."""
    images = np.stack([np.frombuffer(r["image"], np.uint8).reshape(shape) for r in rows])
    return {"image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            "target": torch.from_numpy(np.stack([np.frombuffer(r["target"], np.float32) for r in rows])),
            **{name: torch.tensor([r[name] for r in rows], dtype=torch.int64)
               for name in ("label", "sample", "source")}}


def mds_loader(mds_dir: Path, shape: tuple[int, int, int], batch: int, seed: int, workers: int) -> Iterator[Batch]:
    """(c): ``StreamingDataset`` (py1e shuffle, its default block size) in a DataLoader, a new
    epoch whenever one ends."""
    _, streaming_dataset, clean_stale_shared_memory = import_streaming()
    clean_stale_shared_memory()
    dataset = streaming_dataset(local=str(mds_dir), shuffle=True, shuffle_algo="py1e", shuffle_seed=seed,
                                batch_size=batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         collate_fn=functools.partial(mds_collate, shape=shape),
                                         persistent_workers=workers > 0)
    while True:
        yield from loader


# ---------------------------------------------------------------- randomness


def uniform_distinct(samples_per_image: np.ndarray, batch: int) -> float:
    """E[distinct source images] in ``batch`` rows drawn uniformly without replacement from the
    set: Σ_i 1 − C(N − m_i, B) / C(N, B), m_i the samples of image i."""
    m = samples_per_image[samples_per_image > 0].astype(np.float64)
    n = m.sum()
    rest = n - m
    safe = np.maximum(rest - batch + 1, 1.0)  # C(N − m, B) = 0 where fewer than B rows remain
    log_missing = gammaln(rest + 1) - gammaln(safe) - gammaln(n + 1) + gammaln(n - batch + 1)
    missing = np.where(rest >= batch, np.exp(log_missing), 0.0)
    return float(np.sum(1.0 - missing))


def epoch_randomness(batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """What one epoch of ``(sample, source)`` batches read: distinct source images per batch
    (mean and its standard error), distinct images and distinct samples in all."""
    per_batch = np.array([len(np.unique(source[source >= 0])) for _, source in batches], dtype=np.float64)
    return {"distinct_images_per_batch": float(per_batch.mean()),
            "distinct_images_per_batch_se": float(per_batch.std(ddof=1) / np.sqrt(len(per_batch))),
            "distinct_images": int(len(np.unique(np.concatenate([s for _, s in batches])))),
            "distinct_samples": int(len(np.unique(np.concatenate([s for s, _ in batches]))))}
