"""The replay format (``store: replay``): a shard is one structured ``.npy`` of records without
pixels (:mod:`core.records.replay`); a reader rebuilds each image from the set's source with the
functions generation made it with (:func:`core.samplers.apply_params`).

The records index the source's images, so a reader must hold the very source they were made
from: ``verify`` and ``inspect`` open the set's own (``config.source`` of its ``index.json``) and
report a changed one first, the trainer checks that the job's is that one. Every reader runs the
same range checks (:mod:`core.records.replay_checks`): a number out of range rebuilds *some*
image without an error, one the teachers never labelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import SourceConfig
from core.errors import FormatError, UserError
from core.records import format as fmt
from core.records.replay import RecordLayout, decode_record, encode_records, record_layout, source_fingerprint
from core.records.replay_checks import record_problems
from core.samplers import apply_params
from core.sets import index as sx
from core.sets.arrays import Records, ShardArrays
from core.sets.index import SetIndex
from core.sets.replay_read import decode_replay_shards
from core.sets.shard_format import Drawn, RecordCheck, ShardFormat
from core.sources import IN_MEMORY_BYTES, Source, load_in_memory, load_source, load_source_cached
from core.store import storage
from core.tasks import CLASSIFY, Task

if TYPE_CHECKING:
    from core.sets.spec import SetSpec


@dataclass(frozen=True)
class ReplayShards(ShardFormat):
    """Records of ``layout``; ``source`` (for readers) is what their images are rebuilt from."""

    kind = "replay"
    suffix = sx.REPLAY_SUFFIX
    encodings = ("replay",)
    rebuilds = True
    layout: RecordLayout
    source: Source | None = None

    @staticmethod
    def plan_layout(name: str, set_cfg: Any, source: Source, outputs: int) -> RecordLayout:
        """The records' columns (the config checked that its samplers are replayable)."""
        if source.task is not CLASSIFY:
            raise UserError(f"sets.{name}: store: replay holds classification targets; a {source.task.name} set "
                            f"stores pixels (drop store: replay)")
        return record_layout(set_cfg, source, outputs)

    @classmethod
    def planned(cls, spec: SetSpec) -> ReplayShards:
        if not isinstance(spec.records, RecordLayout):
            raise TypeError(f"a replay set is planned with a RecordLayout, not {type(spec.records).__name__}")
        return cls(spec.records)

    @classmethod
    def checked(cls, index: SetIndex) -> ReplayShards | str:
        """The format of a set ``verify`` and ``inspect`` read, over the set's own source; or the
        problem that stops them."""
        source_cfg, set_cfg = index.source_config(), index.set_config()
        if source_cfg is None or set_cfg is None:
            return "index.json: a replay set's index must give config.source and config.set"
        try:
            source = load_source(source_cfg, "train")
        except Exception as err:  # noqa: BLE001 — an unreadable source is a finding
            return f"replay source: cannot open the set's source ({type(err).__name__}: {err})"
        made_from = str((index.replay or {}).get("source"))
        if source_fingerprint(source) != made_from:
            return (f"replay source: {source.name} is not the source the records were made from (fingerprint "
                    f"{source_fingerprint(source)[:12]}…, index says {made_from[:12]}…); "
                    f"its images would rebuild differently")
        try:
            return cls.made(record_layout(set_cfg, source, index.outputs), source, index)
        except FormatError as err:
            return str(err)

    @classmethod
    def opened(cls, set_dir: str, index: SetIndex, source: Source | None) -> ReplayShards:
        """The format of a set a trainer reads: the job's ``source`` must be the set's own; decoded
        once when it fits in memory and has no image contract (views then crop the files themselves)."""
        made_from = index.replay or {}
        set_cfg = index.set_config()
        if source is None or set_cfg is None:
            raise UserError(f"transfer set {set_dir}: a replay set needs the source it was made from to rebuild "
                            f"its images; train it from a job config whose source is that one")
        if source_fingerprint(source) != made_from.get("source"):
            given = (index.config or {}).get("source", {})
            raise UserError(f"transfer set {set_dir}: a replay set rebuilds its images from the source it was made "
                            f"from ({made_from.get('images')} images, {given.get('kind')} {given.get('path') or ''}"
                            f"fingerprint {str(made_from.get('source'))[:12]}…), but this job's source is another "
                            f"({len(source)} images, {source.name}, {source_fingerprint(source)[:12]}…); train with "
                            f"the set's source or regenerate the set from this one")
        layout = record_layout(set_cfg, source, index.outputs)
        if json.loads(json.dumps(np.lib.format.dtype_to_descr(layout.dtype))) != made_from.get("dtype"):
            raise UserError(f"transfer set {set_dir}: its records have another layout than this version reads; "
                            f"regenerate the set")
        fits = len(source) * int(np.prod(source.shape)) <= IN_MEMORY_BYTES
        try:
            return cls.made(layout, load_in_memory(source) if source.contract is None and fits else source, index)
        except FormatError as err:
            raise UserError(f"transfer set {set_dir}: {err}") from err

    @classmethod
    def made(cls, layout: RecordLayout, source: Source, index: SetIndex) -> ReplayShards:
        """The format of an indexed set of ``layout`` over ``source`` (raises :class:`FormatError`
        where the index pins what this code cannot read)."""
        return cls(layout, source)

    @property
    def encoding(self) -> str:
        return "replay"

    def index_entry(self, source_cfg: SourceConfig) -> dict[str, Any]:
        """What a trainer checks its source against, and the records' dtype."""
        source = load_source_cached(source_cfg, "train")
        return {"source": source_fingerprint(source), "images": len(source),
                "dtype": np.lib.format.dtype_to_descr(self.layout.dtype), "record_bytes": self.layout.dtype.itemsize}

    def recorded(self, drawn: Drawn) -> Drawn:
        params = self.layout.params  # what the records will say, not what was drawn (the same values, checked)
        return [params.decode(params.encode(kind, p)) for kind, p in drawn]

    def encode(self, shard: int, samples: list[fmt.Sample]) -> tuple[bytes, list[dict[str, Any]]]:
        records = self.stored(encode_records(self.layout, samples))
        self.check_records(shard, records)
        return self.records_bytes(records), [decode_record(self.layout, shard, row)[0] for row in records]

    def check_records(self, shard: int, records: np.ndarray) -> None:
        """Raise :class:`FormatError` where a reader would not get ``records`` back (a format
        that stores less than the records hold checks here that the rest re-derives)."""

    def stored(self, records: np.ndarray) -> np.ndarray:
        """The records as this format stores them (the metadata is taken from these)."""
        return records

    def records_bytes(self, records: np.ndarray) -> bytes:
        """A shard file of structured ``records``."""
        return fmt.encode_npy(records)

    def read_records(self, url: str) -> np.ndarray:
        """A shard's structured records (:mod:`core.records.replay`): every reader reads them here,
        so another record encoding (:mod:`core.sets.packed_shards`) needs only this and
        :meth:`records_bytes`."""
        return fmt.read_records(url, self.layout.dtype)

    def metas(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, metadata)`` of every record of a committed shard, decoded."""
        shard = int(sx.parse_shard_name(storage.name_of(path)) or 0)
        for row in self.read_records(path):
            meta, _ = decode_record(self.layout, shard, row)
            yield meta["key"], meta

    def records(self, url: str, task: str | Task | None = None) -> Records:
        """Each record's key and how to decode it: range-checked, the image rebuilt, the targets as
        the task's decoder reads a tar's (a problem raises :class:`FormatError`)."""
        shard = int(sx.parse_shard_name(storage.name_of(url)) or 0)
        records = self.read_records(url)
        layout, source = self.layout, self.source
        for position, row in enumerate(records):
            def decode(row: Any = row, position: int = position) -> dict[str, Any]:
                found = record_problems(layout.params, records[position:position + 1], layout.num_classes,
                                        source.raw_size)
                if found:
                    raise FormatError(found[0][1])
                meta, members = decode_record(layout, shard, row)
                image = apply_params(meta["sampler"], meta["params"], source)
                return {**CLASSIFY.decode_targets(members), "image": image, "meta": meta}

            yield fmt.sample_key(shard, int(row["index"])), decode

    def decode_shards(self, shards: list[tuple[str, int]], width: int) -> list[ShardArrays]:
        """Shards decoded together, column-wise, each source image decoded once (:mod:`core.sets.replay_read`)."""
        return decode_replay_shards(shards, width, self.layout, self.source, self.read_records)

    def check_shard(self, path: str, name: str, shard: int, seen: dict[str, str],
                    check: RecordCheck) -> tuple[int | None, list[str]]:
        """``(records read, problems)``: every record in range (each view box against its image's
        header), decoded and its image rebuilt."""
        try:
            records = self.read_records(path)
        except FormatError as err:
            return None, [f"{name}: {err}"]
        out_of_range: dict[int, list[str]] = {}
        for row, problem in record_problems(self.layout.params, records, self.layout.num_classes,
                                            self.source.raw_size):
            out_of_range.setdefault(row, []).append(problem)
        problems: list[str] = []
        for position, row in enumerate(records):
            key = fmt.sample_key(shard, int(row["index"]))
            where = f"{name}: sample {key}"
            if key in seen:
                problems.append(f"{where}: also in {seen[key]}")
            seen[key] = name
            if position in out_of_range:
                problems += [f"{where}: {problem}" for problem in out_of_range[position]]
                continue
            problems += self._check_record(where, shard, row, check)
        return len(records), problems

    def _check_record(self, where: str, shard: int, row: Any, check: RecordCheck) -> list[str]:
        try:
            meta, members = decode_record(self.layout, shard, row)
        except Exception as err:  # noqa: BLE001 — a record that does not decode is a finding
            return [f"{where}: cannot decode ({type(err).__name__}: {err})"]
        try:
            image = apply_params(meta["sampler"], meta["params"], self.source)
            record = {**CLASSIFY.decode_targets(members), "meta": meta, "image": image}
        except Exception as err:  # noqa: BLE001
            return [f"{where}: cannot rebuild ({type(err).__name__}: {err})"]
        return check(where, record, members)

    @classmethod
    def target_bytes(cls, urls: list[str], index: SetIndex, members: tuple[str, ...]) -> float:
        """A record's target column (what the index says a target takes)."""
        return float(index.target.payload_bytes or 0)

    @classmethod
    def stats(cls, index: SetIndex) -> dict[str, Any]:
        return {"replay_record_bytes": int((index.replay or {}).get("record_bytes", 0))}

    @classmethod
    def lines(cls, stats: dict[str, Any]) -> list[str]:
        size = stats.get("replay_record_bytes")
        return [f"replay records: {size} B a sample (parameters, target and statistics; no pixels: the images "
                f"are rebuilt from the source)"] if size else []
