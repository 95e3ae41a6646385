"""Make and commit one shard: the pure per-shard steps the driver runs on Ray.

``make_shard`` draws and applies a shard's sampler parameters; ``write_shard`` keeps the
candidates to write (all valid ones, or the most uncertain ones), turns the teacher outputs into
its task's records and commits the tar atomically (temp → fsync → rename), so a retried or
resumed shard replaces itself with identical bytes. ``summary_from_shard`` rebuilds the summary of
a shard committed by an earlier (maybe killed) run. Both take the set's :class:`~core.sets.spec.SetSpec`.
The bytes are the set's shard format's (:mod:`core.sets.formats`): a replay set (``store:
replay``) commits the same samples as one ``.npy`` of records without pixels, and its images are
made from the parameters *as the records decode them*, so the teachers label exactly what a
trainer will rebuild. No Ray here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.config import SelectConfig
from core.errors import FormatError
from core.records import format as fmt
from core.sets import index as sx
from core.sets.index import ShardSummary
from core.sets.shard_format import PixelShards, ShardFormat
from core.sets.spec import SetSpec
from core.sources import load_source_cached
from core.store import storage
from core.tasks import Task, task_named
from stages.samplers import SAMPLERS, draw_shard, shard_images
from stages.samplers.generating import Generate, generate_images, set_generator

Drawn = list[tuple[str, dict[str, Any]]]


def make_shard(spec: SetSpec, shard: int, generate: Generate | None = None) -> tuple[np.ndarray, Drawn, np.ndarray]:
    """Images (uint8 NHWC), ``(sampler, parameters)`` and real labels of every candidate of one
    shard (the task's ``real_labels``: class indices, −1 if none; for regression the real
    targets, float32 (N, D), NaN where a sample has none: mixes, synthetic images).

    A pure function of ``(spec, shard)``: the RNG of every sample is seeded from (seed, shard,
    index), the source is opened from its config (cached per process). ``generate`` makes the
    images of ``gan`` samples (default: the set's generator in this process, on the CPU).
    """
    source = load_source_cached(spec.source_cfg, "train")
    drawn = draw_shard(spec.set_cfg, source, spec.seed, shard, spec.total)
    if not drawn:
        raise ValueError(f"shard {shard} is past the end of the set ({spec.total} samples)")
    drawn = spec.shard_format.recorded(drawn)
    generator = set_generator(spec.set_cfg)
    if generate is None and generator is not None:
        generate = lambda params: generate_images(generator, params, spec.source_cfg)  # noqa: E731
    store = spec.set_cfg.store
    images = fmt.as_stored(shard_images(drawn, source, generate), store.image, store.quality)
    shown = [params["image"] if SAMPLERS[kind].keeps_label else None for kind, params in drawn]
    return images, drawn, spec.task.real_labels(shown, source)


def choose(task: Task, output: Any, count: int, select: SelectConfig | None) -> np.ndarray:
    """Candidate indices to write, ascending. Without ``select``: every valid candidate. With it:
    the ``count`` most uncertain valid ones (the task's score; ties go to the lower index, so it
    is deterministic)."""
    valid = np.flatnonzero(output.valid)
    if select is None:
        return valid
    score = task.uncertainty(output, select.by)[valid]
    ranked = valid[np.lexsort((valid, -score))]
    return np.sort(ranked[:count])


def write_shard(spec: SetSpec, shard: int, images: np.ndarray, drawn: Drawn, labels: np.ndarray, output: Any,
                *, count: int | None = None, name: str | None = None) -> ShardSummary:
    """Commit shard ``shard`` of the set and return its summary.

    ``output`` is the ensemble's targets for every candidate (``Ensemble.predict``); ``count`` is
    the number of samples the shard should hold (default: one per candidate); with the set's
    ``select`` the most uncertain ``count`` candidates are kept. Invalid candidates (non-finite
    teacher outputs) are never written and count as rejected. ``name`` is the file to commit
    (default: the name of the shard's planned count, :meth:`core.sets.spec.SetSpec.shard_name`).
    """
    task, select, candidates = spec.task, spec.set_cfg.select, len(drawn)
    count = candidates if count is None else count
    if not (len(images) == len(labels) == len(output) == candidates):
        raise ValueError(f"shard {shard}: {len(images)} images, {candidates} params, {len(labels)} labels, "
                         f"{len(output)} targets")
    samples: list[fmt.Sample] = []
    for position, candidate in enumerate(choose(task, output, count, select)):
        index = position if select is not None else int(candidate)
        key = fmt.sample_key(shard, index)
        kind, params = drawn[candidate]
        meta: dict[str, Any] = {"key": key, "shard": int(shard), "index": index, "sampler": kind, "params": params}
        if select is not None:
            meta["candidate"] = int(candidate)
        samples.append(task.labelled(key, images[candidate], meta, output, int(candidate), labels[candidate],
                                     spec.set_cfg.targets, identity=(spec.seed, int(shard), int(candidate))))
    data, metas = spec.shard_format.encode(shard, samples)  # metas: as a resume will read them back
    name = name or spec.shard_name(shard)
    storage.atomic_write(storage.join(spec.out_dir, sx.SHARDS_DIR, name), data)
    return ShardSummary(shard=int(shard), name=name, samples=len(samples), bytes=len(data),
                        sha256=fmt.sha256_bytes(data), rejected=count - len(samples), planned=count,
                        rows=[task.manifest_row(meta) for meta in metas])


def summary_from_shard(path: str | Path, task: str | Task, planned: int | None = None,
                     shard_format: ShardFormat = PixelShards()) -> ShardSummary:
    """The summary ``write_shard`` returned for a committed tar, rebuilt from its JSON members.

    ``planned`` is the number of samples the shard was drawn with; without it the highest
    stored index + 1 is used (rejected samples at the very end are then not counted). The shard
    is read in its set's ``shard_format``. Raises ``FormatError`` for a damaged shard.
    """
    name = storage.name_of(path)
    shard = sx.parse_shard_name(name)
    if shard is None:
        raise FormatError(f"{path}: not a shard file name")
    task, rows = task_named(task), []
    for key, meta in shard_format.metas(str(path)):
        if meta.get("key") != key or fmt.parse_key(key)[0] != shard:
            raise FormatError(f"{path}: sample {key} does not belong to shard {shard}")
        rows.append(task.manifest_row(meta))
    last = max((row["index"] for row in rows), default=-1) + 1
    planned = last if planned is None else planned
    return ShardSummary(shard=shard, name=name, samples=len(rows), bytes=storage.size(path),
                        sha256=fmt.sha256_file(path), rejected=max(planned - len(rows), 0), planned=planned,
                        rows=rows)
