"""Replay records: one fixed-width row per sample instead of a tar record with pixels.

A replay shard (``shards/shard-NNNNNN.npy``) is one structured ``.npy`` array: numpy reads it
with ``np.load(path)`` (no pickle, no project code). A row holds, in this order:

- ``index`` (uint16, uint32 past 65 536 samples a shard): the sample's key is ``shard-index``;
  ``candidate`` too when the set keeps the most uncertain candidates (``select``);
- the parameter columns of :mod:`core.records.replay_params`;
- ``label`` (int8/int16/int32, −1 where none), present when a sampler keeps real labels;
- the target column, named by its kind (:mod:`core.records.targets`, a class each):
  ``logp`` float16 (C,), or the ``topk`` / ``sampled`` record of :mod:`core.records.target_codec`
  / :mod:`core.records.sampled_target` without its constant ``classes`` field (the index has the
  class count), so each row holds only what varies;
- the statistics the manifest shows: ``entropy`` and ``disagreement`` in [0, 1] as uint8
  (1/255 steps), ``teacher_argmax``, and ``target_kl`` (float16) for top-k and sampled targets.

:func:`decode_record` gives back the record's metadata and its target members exactly as a
pixel set's tar holds them, so one decoder (the task's) reads both kinds of set.
:func:`decode_columns` gives a trainer the same targets, labels and source images for a whole
shard at once, column by column (a one-record ``.npy`` round trip per sample cost most of a
rebuild); tests hold the two paths equal bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.records.format import Sample, decode_npy, encode_npy, sample_key
from core.records.replay_checks import first_problem
from core.records.replay_params import ParamLayout, dtype_of, index_dtype, layout_of
from core.records.targets import StoredTarget, stored_kind, stored_target
from core.samplers import SAMPLERS, record_sources

LABEL_MEMBER = "cls"
OPTIONAL_META = ("candidate", "label", "target_kl")  # kept where the layout has their column
STAT_STEPS = 255


def label_dtype(num_classes: int) -> str:
    return "i1" if num_classes <= 127 else "i2" if num_classes <= 32767 else "i4"


@dataclass(frozen=True)
class RecordLayout:
    """The columns of one replay set's records (a function of its config and source)."""

    params: ParamLayout
    num_classes: int
    target: str  # the target column's name, its kind: logp | topk | sampled (core.records.targets)
    k: int = 0  # top-k or sampled slots
    index: str = "u2"
    candidate: bool = False  # the set selects candidates: their positions are kept too

    @property
    def labels(self) -> bool:
        return any(SAMPLERS[kind].keeps_label for kind in self.params.kinds)  # a real label to keep

    @property
    def stored(self) -> StoredTarget:
        return stored_kind(self.target)

    @property
    def member_dtype(self) -> np.dtype:
        """The dtype of the target member a pixel set's tar holds (a 0-d record or a vector)."""
        return self.stored.record_dtype(self.k, self.num_classes)

    def fields(self) -> list[tuple[str, Any, tuple[int, ...]]]:
        out: list[tuple[str, Any, tuple[int, ...]]] = [("index", self.index, ())]
        if self.candidate:
            out.append(("candidate", self.index, ()))
        out += self.params.fields()
        if self.labels:
            out.append(("label", label_dtype(self.num_classes), ()))
        out.append(self.stored.column_field(self.k, self.num_classes))
        argmax = "u1" if self.num_classes <= 256 else index_dtype(self.num_classes)
        out += [("entropy", "u1", ()), ("disagreement", "u1", ()), ("teacher_argmax", argmax, ())]
        if self.stored.compact:  # a compact record keeps its KL to the teachers' p̄
            out.append(("target_kl", "<f2", ()))
        return out

    @property
    def dtype(self) -> np.dtype:
        return dtype_of(self.fields())


def record_layout(set_cfg: Any, source: Any, num_classes: int) -> RecordLayout:
    """The record layout of a classification set (``SetConfig``) made from ``source``."""
    stored = stored_target(set_cfg.targets)
    return RecordLayout(params=layout_of(set_cfg, source), num_classes=num_classes, target=stored.kind,
                        k=stored.slots(set_cfg.targets, num_classes),
                        index=index_dtype(set_cfg.candidates(set_cfg.samples_per_shard)),
                        candidate=set_cfg.select is not None)


def source_fingerprint(source: Any) -> str:
    """What a replay set's images depend on in its source: its identity (images, order, labels,
    image contract) and the pad-and-crop and flip its views were drawn with. (The identity holds a
    pad or flip that differs from the reader's default too, at the same value: merged here, the
    text — hence every replay set's recorded ``replay.source`` — is the one it was before.)"""
    text = json.dumps({**source.identity, "pad": int(source.pad), "flip": bool(source.flip)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _stat(value: float) -> int:
    return int(round(min(max(float(value), 0.0), 1.0) * STAT_STEPS))


def encode_records(layout: RecordLayout, samples: list[Sample]) -> np.ndarray:
    """The records of a shard's samples (by key), from the samples a pixel set would write."""
    out = np.zeros(len(samples), dtype=layout.dtype)
    stored = layout.stored
    rows, targets = [], []
    for sample in sorted(samples, key=lambda s: s.key):
        meta = sample.meta
        values: dict[str, Any] = {"index": meta["index"], **layout.params.encode(meta["sampler"], meta["params"]),
                                  "entropy": _stat(meta["entropy"]), "disagreement": _stat(meta["disagreement"]),
                                  "teacher_argmax": meta["teacher_argmax"]}
        values.update({name: meta[name] for name in OPTIONAL_META if name in out.dtype.names})
        target = decode_npy(sample.members[stored.member])
        stored.check_member(sample.key, target, layout.k, layout.num_classes)
        rows.append(values)
        targets.append(target)
    if not rows:
        return out
    _fill_columns(out, rows, [name for name in out.dtype.names if name != stored.kind])
    stored.store_column(out, targets)
    return out


def _fill_columns(out: np.ndarray, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Columns ``names`` of ``out`` from one value dict a row; a column a row's sampler kind does
    not use stays zero."""
    if not rows:
        return
    for name in names:
        field = out.dtype[name]
        out[name] = np.stack([np.asarray(row.get(name, 0), dtype=field.base) * np.ones(field.shape, field.base)
                              for row in rows])


def parameter_records(layout: RecordLayout, drawn: list[tuple[str, dict[str, Any]]], labels: np.ndarray) -> np.ndarray:
    """Records of ``layout`` with only the parameter and label columns filled, one per
    ``(sampler kind, parameters)`` of ``drawn`` (``labels``: each one's real label, −1 none):
    what a derived packed set's reader puts beside the bits it read."""
    out = np.zeros(len(drawn), dtype=layout.dtype)
    _fill_columns(out, [layout.params.encode(kind, params) for kind, params in drawn],
                  [name for name, _, _ in layout.params.fields()])
    if layout.labels:
        out["label"] = labels
    return out


def decode_record(layout: RecordLayout, shard: int, row: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A record's metadata (as a pixel set's JSON has it, statistics at the stored resolution)
    and its target members (the bytes a pixel set's tar holds)."""
    kind, params = layout.params.decode(row)
    index = int(row["index"])
    meta: dict[str, Any] = {"key": sample_key(shard, index), "shard": int(shard), "index": index, "sampler": kind,
                            "params": params, "label": int(row["label"]) if layout.labels else -1,
                            "entropy": float(row["entropy"]) / STAT_STEPS,
                            "disagreement": float(row["disagreement"]) / STAT_STEPS,
                            "teacher_argmax": int(row["teacher_argmax"])}
    stored = layout.stored
    if layout.candidate:
        meta["candidate"] = int(row["candidate"])
    if stored.compact:
        meta["target_kl"] = float(row["target_kl"])
    members = {stored.member: encode_npy(stored.member_of_row(row, layout.k, layout.num_classes))}
    if meta["label"] >= 0:
        members[LABEL_MEMBER] = str(meta["label"]).encode("ascii")
    return meta, members


@dataclass(frozen=True)
class RecordColumns:
    """A shard's records decoded column-wise: what :func:`decode_record` and the task's
    ``decode_targets`` give per record, stacked."""

    target: np.ndarray  # float32 (N, C): log p̄ (a sampled set's dense estimate)
    labels: np.ndarray  # int64 (N,), −1 where a sample has no real label
    weights: np.ndarray | None  # float32 (N, C): a sampled set's importance weights, else None
    sources: np.ndarray  # int64 (N, 2): the real images each sample reads, −1 none


def decode_columns(layout: RecordLayout, records: np.ndarray) -> RecordColumns:
    """The targets, labels and source images of every record at once (bit for bit the per-record
    values); a record that does not decode, or whose parameters ``verify`` would reject
    (:mod:`core.records.replay_checks`), raises :class:`RecordError` naming its row."""
    classes, kinds = layout.num_classes, layout.params.kinds
    first_problem(layout.params, records, classes)  # verify's range checks: a bad record stops here
    codes = records["sampler"].astype(np.int64) if len(kinds) > 1 else np.zeros(len(records), np.int64)
    target, weights = layout.stored.column_targets(records[layout.target], classes)
    labels = records["label"].astype(np.int64) if layout.labels else np.full(len(records), -1, np.int64)
    columns = {name: records[name] for name in ("image", "i", "j") if name in records.dtype.names}
    sources = record_sources(kinds, codes, columns)
    return RecordColumns(target, np.where(labels >= 0, labels, -1), weights, sources)
