"""Tiny transfer sets written with the shard contract (core.records.format, core.sets.index), for the student tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from set_files import local_shard, write_index

from core.records import format as fmt
from core.sets import index as sx
from core.store import storage
from core.tasks import CLASSIFY


def write_set(
    set_dir: Path, images: np.ndarray, logp: np.ndarray, labels: Sequence[int | None], samples_per_shard: int,
    set_config: dict | None = None, made_from: Sequence[int] | None = None,
) -> list[Path]:
    """Write shards and index.json for uint8 NHWC ``images`` with targets ``logp`` (N, C);
    ``set_config`` is what the index records the set was made from (its samplers); ``made_from``:
    the real image each sample is a view of (its meta then names sampler ``views``)."""
    entries, paths = [], []
    for shard, start in enumerate(range(0, len(images), samples_per_shard)):
        samples = []
        for index, position in enumerate(range(start, min(start + samples_per_shard, len(images)))):
            key = fmt.sample_key(shard, index)
            meta = {"key": key, "shard": shard, "index": index}
            if made_from is not None:
                meta.update(sampler="views", params={"image": int(made_from[position])})
            samples.append(CLASSIFY.sample(key, images[position], meta, logp[position], labels[position]))
        data = fmt.tar_bytes(samples)
        path = local_shard(set_dir, shard)
        storage.atomic_write(path, data)
        paths.append(path)
        entries.append(sx.ShardEntry(name=sx.shard_name(shard), samples=len(samples), bytes=len(data),
                                     sha256=fmt.sha256_bytes(data)))
    classes = logp.shape[1]
    write_index(set_dir, sx.SetIndex(shards=entries, num_classes=classes, classes=[str(c) for c in range(classes)],
                                        config={"set": set_config} if set_config is not None else None))
    return paths


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """``{member name: (header offset, data offset)}`` of a tar file."""
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
