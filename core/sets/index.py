"""The set directory's contract: ``index.json`` as a typed :class:`SetIndex`, the manifest, shard
names, and the :class:`ShardSummary` a shard's writer hands the driver.

A transfer set is a directory (a local path or an fsspec URL)::

    index.json          written last; readers trust it, never a glob
    manifest.parquet    one row per sample (the task's manifest columns)
    shards/shard-000000.tar ...     (a replay set: shard-000000.npy, see core.records.replay)
    shards/shard-000004-000044.tar  a short last shard: its planned count in the name

A shard's name says what it holds, so a listed file never changes (:func:`shard_name`).

This is the one module that reads or writes ``index.json`` and shard summaries as JSON; every
other module sees their typed form. Reading is lenient (a field an index lacks is None, so
``transferset verify`` can report a damaged index instead of crashing); writing gives exactly
the JSON the plan describes (fields that are None stay out).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.config import SetConfig, SourceConfig
from core.errors import FormatError
from core.records.format import FORMAT_VERSION, READABLE_FORMATS
from core.records.targets import StoredTarget, stored_kind
from core.store import storage
from core.store.liveness import process_alive
from core.tasks import Task, task_named

INDEX_NAME = "index.json"
MANIFEST_NAME = "manifest.parquet"
SHARDS_DIR = "shards"
SHARD_PREFIX, SHARD_SUFFIX, REPLAY_SUFFIX = "shard-", ".tar", ".npy"
SHARD_SUFFIXES = (SHARD_SUFFIX, REPLAY_SUFFIX)  # the shard formats' (core.sets.formats)


# ---------------------------------------------------------------- shard names


def shard_name(shard: int, count: int | None = None, suffix: str = SHARD_SUFFIX) -> str:
    """A shard's file name: ``shard-NNNNNN.tar`` for shard N full, ``shard-NNNNNN-CCCCCC.tar`` for
    its first ``count`` planned samples (a short last shard). A name thus says what the file holds,
    so its bytes never change (docs/FORMAT.md, "Shard names"). The suffix is the shard format's
    (a replay set's shards end in ``.npy``)."""
    counted = "" if count is None else f"-{count:06d}"
    return f"{SHARD_PREFIX}{shard:06d}{counted}{suffix}"


def parse_shard(name: str) -> tuple[int, int | None] | None:
    """``(shard, count)`` of a committed shard's file name (count None: the full shard, or the
    short last shard of a set made before counted names); None for anything else (temp files too)."""
    stem, dot, suffix = name.rpartition(".")
    if not (name.startswith(SHARD_PREFIX) and dot + suffix in SHARD_SUFFIXES):
        return None
    digits = stem[len(SHARD_PREFIX):].split("-")
    if len(digits) > 2 or not all(part.isdigit() and len(part) >= 6 for part in digits):
        return None
    return int(digits[0]), int(digits[1]) if len(digits) == 2 else None


def parse_shard_name(name: str) -> int | None:
    """The shard number of a committed shard's file name, None for anything else (temp files too)."""
    parsed = parse_shard(name)
    return None if parsed is None else parsed[0]


def shard_url(set_dir: str | Path, shard: int) -> str:
    return storage.join(set_dir, SHARDS_DIR, shard_name(shard))


def committed_shards(set_dir: str | Path) -> dict[str, str]:
    """Shard files whose rename happened (name → location): complete shards, listed or not (temp
    files are ignored)."""
    shards_dir = storage.join(set_dir, SHARDS_DIR)
    return {name: storage.join(shards_dir, name) for name in storage.list_names(shards_dir)
            if parse_shard(name) is not None}


def remove_stale_temps(set_dir: str | Path, max_age_s: float) -> int:
    """Delete the temp files of dead writers; returns how many. A temp names its writer
    (``storage.temp_name``): one of a process of this host goes when that process is gone and
    never while it lives; one of another host (or of an older version, which named no writer) when
    it has not been written for ``max_age_s`` (a lease's time to live; a live writer writes a temp
    in one go and renames it within seconds). So another live writer's temp file is never deleted
    under it. Object stores have no temp files (one PUT is the commit)."""
    if not storage.is_local(set_dir):
        return 0
    removed = 0
    for parent in (str(set_dir), storage.join(set_dir, SHARDS_DIR)):
        for name in storage.list_names(parent):
            if storage.TMP_MARKER in name and _stale_temp(storage.join(parent, name), max_age_s):
                storage.remove(storage.join(parent, name))
                removed += 1
    return removed


def _stale_temp(url: str, max_age_s: float) -> bool:
    writer = storage.name_of(url).rsplit(storage.TMP_MARKER, 1)[1].split("-")
    alive = process_alive(writer[0], int(writer[1])) if len(writer) == 3 and writer[1].isdigit() else None
    if alive is not None:  # a process of this host: its liveness decides, whatever the age
        return not alive
    age = storage.modified_age(url)
    return age is not None and age >= max_age_s


def listed_counts(index: SetIndex, samples_per_shard: int) -> dict[int, tuple[str, int]]:
    """Shard number → (listed name, planned samples) of an index's shards. A name without a count
    is a full shard, except the last shard of a set made before counted names, which may be short
    (its planned count follows from ``totals.planned``)."""
    found: dict[int, tuple[str, int]] = {}
    for entry in index.listed():
        parsed = parse_shard(str(entry.name))
        if parsed is None:
            continue
        shard, count = parsed
        if count is None:
            planned = index.totals.planned
            count = samples_per_shard if planned is None else \
                min(samples_per_shard, planned - shard * samples_per_shard)
        found[shard] = (str(entry.name), count)
    return found


# ---------------------------------------------------------------- the index's parts


def _dump(part: Any) -> dict[str, Any]:
    """A part as index.json holds it: its fields that are set."""
    return {k: v for k, v in asdict(part).items() if v is not None}


def _load(cls: type, raw: Any) -> Any:
    """``cls`` from a JSON object, leniently: unknown keys ignored, missing ones None."""
    raw = raw if isinstance(raw, dict) else {}
    return cls(**{f.name: raw.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ShardEntry:
    """A shard as the index lists it."""

    name: str | None
    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class TeacherEntry:
    """A teacher checkpoint as the index lists it."""

    path: str
    sha256: str
    arch: str | None = None


@dataclass(frozen=True)
class Totals:
    """The set's counts: samples stored, shards, samples dropped (invalid teacher outputs), samples planned."""

    samples: int | None = None
    shards: int | None = None
    rejected: int | None = None
    planned: int | None = None


@dataclass(frozen=True)
class ImageSpec:
    """The stored images: all of one shape and one encoding (png)."""

    height: int | None = None
    width: int | None = None
    channels: int | None = None
    encoding: str | None = None

    @property
    def shape(self) -> tuple[Any, Any, Any]:
        return self.height, self.width, self.channels


@dataclass(frozen=True)
class TargetSpec:
    """How the targets are stored (the task's ``target_spec``)."""

    kind: str | None = None  # logp | topk | sampled | gaussian
    dtype: str | None = None
    temperature_free: bool | None = None
    k: int | None = None  # top-k (classes kept), sampled (classes drawn)
    index_dtype: str | None = None  # top-k, sampled
    temperature: float | None = None  # sampled: drawn at this temperature
    uniform: float | None = None  # sampled: the proposal's uniform share
    members: list[str] | None = None  # gaussian
    logvar: str | None = None  # gaussian
    payload_bytes: int | None = None

    @property
    def stored(self) -> StoredTarget:
        """The kind of classification target the set stores (a regression set's raises FormatError)."""
        return stored_kind(self.kind)

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)


@dataclass(frozen=True)
class SetIndex:
    """``index.json`` (docs/FORMAT.md). ``shards`` is None when the index holds no shard list."""

    fingerprint: str | None = None
    name: str | None = None
    task: str | None = None  # classify (also when absent) | regress
    classes: list[str] | None = None
    num_classes: int | None = None
    out_dim: int | None = None
    image: ImageSpec | None = None
    target: TargetSpec = field(default_factory=TargetSpec)
    teachers: list[TeacherEntry] | None = None
    config: dict[str, Any] | None = None  # the resolved set, source and seed
    shards: list[ShardEntry] | None = None
    totals: Totals = field(default_factory=Totals)
    statistics: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None  # a replay set: its source's fingerprint and size, its records' dtype
    format: int = FORMAT_VERSION

    @property
    def kind(self) -> Task:
        return task_named(self.task or "classify")

    @property
    def outputs(self) -> int:
        """What the set's teachers predict (classes or target dimension; 0 when unsaid)."""
        return self.kind.outputs_of_index(self.num_classes, self.classes, self.out_dim)

    def listed(self) -> list[ShardEntry]:
        """The listed shards that have a name."""
        return [entry for entry in self.shards or [] if entry.name is not None]

    def source_config(self) -> SourceConfig | None:
        """The source the set was made from (None when the index does not say)."""
        source = (self.config or {}).get("source")
        return SourceConfig.model_validate(source) if isinstance(source, dict) else None

    def set_config(self) -> SetConfig | None:
        """The resolved set config the set was made from (None when the index does not say)."""
        found = (self.config or {}).get("set")
        return SetConfig.model_validate(found) if isinstance(found, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of index.json (parts that are unset stay out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("image", "target", "totals") and value is not None:
                value = _dump(value) or None
            elif f.name in ("teachers", "shards") and value is not None:
                value = [asdict(entry) for entry in value]
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SetIndex:
        shards = raw.get("shards")
        return cls(
            **{name: raw.get(name) for name in ("fingerprint", "name", "task", "classes", "num_classes", "out_dim",
                                                 "config", "statistics", "replay")},
            image=_load(ImageSpec, raw["image"]) if "image" in raw else None,
            target=_load(TargetSpec, raw.get("target")),
            teachers=[_load(TeacherEntry, t) for t in raw["teachers"]] if isinstance(raw.get("teachers"), list)
            else None,
            shards=[_load(ShardEntry, s) for s in shards] if isinstance(shards, list) else None,
            totals=_load(Totals, raw.get("totals")),
            format=raw.get("format"),
        )


def index_bytes(index: SetIndex) -> bytes:
    """``index.json``'s bytes; its ``format`` is the set's content version (``index.format``), so a
    set whose bytes format 2 left alone still says 1 and format-1 readers keep reading it."""
    if index.format not in READABLE_FORMATS:
        raise ValueError(f"index format {index.format!r}: this version writes formats {READABLE_FORMATS}")
    return json.dumps(index.to_dict(), indent=1, sort_keys=True).encode()


def commit_index(set_dir: str | Path, rows: Sequence[dict[str, Any]], task: str | Task, index: SetIndex,
                 manifest: bool = True) -> None:
    """The manifest, then ``index.json`` (readers trust the index), renamed back to back
    (``manifest``: False for a format whose records are the manifest: only the index)."""
    files = [(storage.join(set_dir, MANIFEST_NAME), manifest_bytes(rows, task))] if manifest else []
    storage.atomic_write_all([*files, (storage.join(set_dir, INDEX_NAME), index_bytes(index))])


def read_index(set_dir: str | Path) -> SetIndex | None:
    """The set's index, or None when the set was never completed."""
    return read_index_file(storage.join(set_dir, INDEX_NAME))


def read_index_file(path: str | Path) -> SetIndex | None:
    """An ``index.json`` at ``path`` (the set's own, or a copy kept from earlier), None if absent."""
    path = str(path)
    if not storage.is_file(path):
        return None
    try:
        raw = json.loads(storage.read_bytes(path))
    except (OSError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: unreadable index ({err})") from err
    found = raw.get("format") if isinstance(raw, dict) else None
    if type(found) is not int or found not in READABLE_FORMATS:  # not True, not 1.0
        raise FormatError(f"{path}: format {found!r}, this version reads formats "
                          f"{', '.join(map(str, READABLE_FORMATS))}")
    return SetIndex.from_dict(raw)


def shard_urls(set_dir: str | Path, index: SetIndex | None = None) -> list[str]:
    """Locations of the set's shards as listed in its index (never a glob): local paths for a
    local or ``file://`` set, URLs otherwise."""
    index = index if index is not None else read_index(set_dir)
    if index is None:
        raise FormatError(f"{set_dir}: no {INDEX_NAME}; the set is incomplete (run generate again)")
    base = str(storage.local_path(set_dir)) if storage.is_local(set_dir) else str(set_dir)
    return [storage.join(base, SHARDS_DIR, str(entry.name)) for entry in index.shards or []]


# ---------------------------------------------------------------- shard summaries and the manifest


@dataclass(frozen=True)
class ShardSummary:
    """What a committed shard holds: its index entry, what was rejected, and its manifest rows."""

    shard: int
    name: str
    samples: int
    bytes: int
    sha256: str
    rejected: int
    planned: int
    rows: list[dict[str, Any]]

    def entry(self) -> ShardEntry:
        return ShardEntry(name=self.name, samples=self.samples, bytes=self.bytes, sha256=self.sha256)

    def last_index(self) -> int:
        """One past the highest stored sample index (0 for an empty shard)."""
        return max((row["index"] for row in self.rows), default=-1) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardSummary:
        return cls(**json.loads(text))


def manifest_bytes(rows: Sequence[dict[str, Any]], task: str | Task) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda row: row["key"])
    table = pa.table({name: [row[name] for row in ordered] for name in task_named(task).manifest_columns})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def read_manifest(set_dir: str | Path):
    """The manifest as a pyarrow table. Read on this thread, without pre-buffering: a manifest is
    small, and arrow's pre-buffer schedules reads on its IO thread pool, whose last task may
    release the Python buffer during interpreter exit and abort the process ("terminate called
    without an active exception", apache/arrow#34314; seen here with `transferset verify`)."""
    import pyarrow.parquet as pq

    data = io.BytesIO(storage.read_bytes(storage.join(set_dir, MANIFEST_NAME)))
    return pq.ParquetFile(data, pre_buffer=False).read(use_threads=False)
