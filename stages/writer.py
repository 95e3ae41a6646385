"""Make and commit one shard: the pure per-shard steps the driver runs on Ray.

``make_shard`` draws and applies a shard's sampler parameters; ``write_shard`` keeps the
candidates to write (all valid ones, or the most uncertain ones), turns the teacher outputs into
its task's records and commits the tar atomically (temp → fsync → rename), so a retried or
resumed shard replaces itself with identical bytes. ``summary_from_tar`` rebuilds the summary of
a shard committed by an earlier (maybe killed) run. Both take the set's :class:`~core.sets.spec.SetSpec`.
A replay set (``store: replay``) commits the same samples as one ``.npy`` of records without
pixels (:mod:`core.records.replay`); its images are made from the parameters *as the records
decode them*, so the teachers label exactly what a trainer will rebuild. No Ray here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.config import SelectConfig
from core.errors import FormatError
from core.records import format as fmt
from core.records.replay import RecordLayout, decode_record, encode_records, record_layout
from core.sets import index as sx
from core.sets.index import ShardSummary
from core.sets.spec import SetSpec
from core.sources import Source, load_source_cached
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
    if spec.replay:  # what the records will say, not what was drawn (the same values, checked)
        params = replay_layout(spec, source).params
        drawn = [params.decode(params.encode(kind, p)) for kind, p in drawn]
    generator = set_generator(spec.set_cfg)
    if generate is None and generator is not None:
        generate = lambda params: generate_images(generator, params, spec.source_cfg)  # noqa: E731
    store = spec.set_cfg.store
    images = fmt.as_stored(shard_images(drawn, source, generate), store.image, store.quality)
    shown = [params["image"] if SAMPLERS[kind].keeps_label else None for kind, params in drawn]
    return images, drawn, spec.kind.real_labels(shown, source)


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
    task, select, candidates = spec.kind, spec.set_cfg.select, len(drawn)
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
    if spec.replay:
        layout = replay_layout(spec, load_source_cached(spec.source_cfg, "train"))
        records = encode_records(layout, samples)
        data = fmt.encode_npy(records)
        metas = [decode_record(layout, shard, row)[0] for row in records]  # the manifest a resume rebuilds
    else:
        data = fmt.tar_bytes(samples, spec.set_cfg.store.image, spec.set_cfg.store.quality)
        metas = [s.meta for s in samples]
    name = name or spec.shard_name(shard)
    storage.atomic_write(storage.join(spec.out_dir, sx.SHARDS_DIR, name), data)
    return ShardSummary(shard=int(shard), name=name, samples=len(samples), bytes=len(data),
                        sha256=fmt.sha256_bytes(data), rejected=count - len(samples), planned=count,
                        rows=[task.manifest_row(meta) for meta in metas])


def replay_layout(spec: SetSpec, source: Source) -> RecordLayout:
    """The records of a replay set (classification sets only: the planner refuses others)."""
    return record_layout(spec.set_cfg, source, spec.outputs)


def shard_metas(path: str | Path, layout: RecordLayout | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, metadata)`` of every sample of a committed shard: a tar's JSON members, or a
    replay shard's decoded records (``layout`` given)."""
    if layout is None:
        for key, fields in fmt.iter_tar(path):
            if "json" not in fields:
                raise FormatError(f"{path}: sample {key} has no json member")
            yield key, json.loads(fields["json"])
        return
    shard = sx.parse_shard_name(storage.name_of(path))
    records = fmt.read_records(path, layout.dtype)
    for row in records:
        meta, _ = decode_record(layout, int(shard or 0), row)
        yield meta["key"], meta


def summary_from_tar(path: str | Path, task: str | Task, planned: int | None = None,
                     layout: RecordLayout | None = None) -> ShardSummary:
    """The summary ``write_shard`` returned for a committed tar, rebuilt from its JSON members.

    ``planned`` is the number of samples the shard was drawn with; without it the highest
    stored index + 1 is used (rejected samples at the very end are then not counted). A replay
    shard needs its set's record ``layout``. Raises ``FormatError`` for a damaged shard.
    """
    name = storage.name_of(path)
    shard = sx.parse_shard_name(name)
    if shard is None:
        raise FormatError(f"{path}: not a shard file name")
    task, rows = task_named(task), []
    for key, meta in shard_metas(path, layout):
        if meta.get("key") != key or fmt.parse_key(key)[0] != shard:
            raise FormatError(f"{path}: sample {key} does not belong to shard {shard}")
        rows.append(task.manifest_row(meta))
    last = max((row["index"] for row in rows), default=-1) + 1
    planned = last if planned is None else planned
    return ShardSummary(shard=shard, name=name, samples=len(rows), bytes=storage.size(path),
                        sha256=fmt.sha256_file(path), rejected=max(planned - len(rows), 0), planned=planned,
                        rows=rows)
