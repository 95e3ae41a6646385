"""How a set's shards hold its samples: :class:`ShardFormat`, and :class:`PixelShards`, the
WebDataset tars of images and targets.

Every step that touches shard bytes asks the set's format instead of testing which one it is
(mosaicml-streaming's way: one reader class per shard format, chosen from the index): the writer
(a shard's name and bytes, what its records will say), resume (each committed sample's
metadata), ``verify`` (a shard checked), ``inspect`` (samples decoded as records, the bytes a
target takes) and the trainer (a window of shards decoded into arrays). The registry is
:mod:`core.sets.formats`; the replay format is :mod:`core.sets.replay_shards`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from core.config import SourceConfig
from core.errors import FormatError
from core.records import format as fmt
from core.records.replay import RecordLayout
from core.sets import index as sx
from core.sets.arrays import Records, ShardArrays, decode_records
from core.sets.index import SetIndex
from core.sources import Source
from core.tasks import Task, decode_fields

if TYPE_CHECKING:
    from core.sets.spec import SetSpec

Drawn = list[tuple[str, dict[str, Any]]]  # (sampler kind, parameters) of each candidate
# verify's checks of one decoded record beyond its format's: (where, record, target members) → problems
RecordCheck = Callable[[str, dict[str, Any], dict[str, bytes]], list[str]]


@dataclass(frozen=True)
class ShardFormat:
    """What every shard format answers. ``kind`` is the config's ``store.kind``, ``encodings``
    the ``image.encoding`` values of the indexes it is chosen for."""

    kind: ClassVar[str]
    suffix: ClassVar[str]
    encodings: ClassVar[tuple[str, ...]]
    rebuilds: ClassVar[bool] = False  # images are made from the source when read, not stored
    writes_manifest: ClassVar[bool] = True  # manifest.parquet holds a row per sample (else: the records do)

    @staticmethod
    def plan_layout(name: str, set_cfg: Any, source: Source, outputs: int) -> RecordLayout | None:
        """What the plan computes once for this format (a replay set's record layout)."""
        return None

    def shard_name(self, shard: int, count: int | None = None) -> str:
        return sx.shard_name(shard, count, self.suffix)

    def index_entry(self, source_cfg: SourceConfig) -> dict[str, Any] | None:
        """index.json's ``replay`` part for a set made from ``source_cfg`` (None: the index has none)."""
        return None

    def recorded(self, drawn: Drawn) -> Drawn:
        """The parameters as the stored records will give them back (the images are made from these)."""
        return drawn

    @classmethod
    def planned(cls, spec: SetSpec) -> ShardFormat:
        """The format a planned set is written in (``spec.records``: what :meth:`plan_layout` gave)."""
        raise NotImplementedError

    @classmethod
    def checked(cls, index: SetIndex) -> ShardFormat | str:
        """The format ``verify`` and ``inspect`` read an indexed set in, or the problem that stops them."""
        raise NotImplementedError

    @classmethod
    def opened(cls, set_dir: str, index: SetIndex, source: Source | None) -> ShardFormat:
        """The format a trainer reads an indexed set in (``source``: the job's training split)."""
        raise NotImplementedError

    @property
    def encoding(self) -> str:
        """index.json's ``image.encoding``."""
        raise NotImplementedError

    def encode(self, shard: int, samples: list[fmt.Sample]) -> tuple[bytes, list[dict[str, Any]]]:
        """A shard's bytes and the metadata of its samples as :meth:`metas` will read them back."""
        raise NotImplementedError

    def metas(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, metadata)`` of every sample of a committed shard (what resume rebuilds)."""
        raise NotImplementedError

    def records(self, url: str, task: str | Task | None = None) -> Records:
        """Each sample's key and how to decode it as its task's record (image, meta, targets)."""
        raise NotImplementedError

    def decode_shards(self, shards: list[tuple[str, int]], width: int) -> list[ShardArrays]:
        """Shards ``(url, expected samples)`` decoded into arrays, in order (the trainer's read)."""
        raise NotImplementedError

    def check_shard(self, path: str, name: str, shard: int, seen: dict[str, str],
                    check: RecordCheck) -> tuple[int | None, list[str]]:
        """``(samples read, problems)`` of one shard for ``verify`` (None: it could not be read to
        its end); ``check`` is what every decoded record must satisfy beyond the format."""
        raise NotImplementedError

    @classmethod
    def target_bytes(cls, urls: list[str], index: SetIndex, members: tuple[str, ...]) -> float:
        """Bytes a sample's target takes as stored (``inspect``; ``members``: the task's target members)."""
        raise NotImplementedError

    def manifest(self, set_dir: str, index: SetIndex) -> dict[str, list[Any]]:
        """The manifest's columns (the task's ``manifest_columns``, one row per sample, by key)
        rebuilt from the listed shards: what ``manifest.parquet`` holds, for a format that
        writes none."""
        task = index.kind
        rows = [task.manifest_row(meta) for url in sx.shard_urls(set_dir, index) for _, meta in self.metas(url)]
        rows.sort(key=lambda row: row["key"])
        return {name: [row[name] for row in rows] for name in task.manifest_columns}

    @classmethod
    def stats(cls, index: SetIndex) -> dict[str, Any]:
        """What ``inspect`` adds for a set of this format."""
        return {}

    @classmethod
    def lines(cls, stats: dict[str, Any]) -> list[str]:
        """What ``inspect``'s text adds where ``stats`` holds this format's :meth:`stats`."""
        return []


@dataclass(frozen=True)
class PixelShards(ShardFormat):
    """A WebDataset tar a shard: each sample's image (PNG or JPEG at ``quality``), its metadata
    JSON and its target members."""

    kind = "pixels"
    suffix = sx.SHARD_SUFFIX
    encodings = ("png", "jpeg")
    image: str = "png"
    quality: int = 90

    @classmethod
    def planned(cls, spec: SetSpec) -> PixelShards:
        return cls(spec.set_cfg.store.image, spec.set_cfg.store.quality)

    @classmethod
    def checked(cls, index: SetIndex) -> PixelShards:
        return cls()

    @classmethod
    def opened(cls, set_dir: str, index: SetIndex, source: Source | None) -> PixelShards:
        return cls()

    @property
    def encoding(self) -> str:
        return self.image

    def encode(self, shard: int, samples: list[fmt.Sample]) -> tuple[bytes, list[dict[str, Any]]]:
        return fmt.tar_bytes(samples, self.image, self.quality), [s.meta for s in samples]

    def metas(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Its JSON members."""
        for key, fields in fmt.iter_tar(path):
            if "json" not in fields:
                raise FormatError(f"{path}: sample {key} has no json member")
            yield key, json.loads(fields["json"])

    def records(self, url: str, task: str | Task | None = None) -> Records:
        for key, fields in fmt.iter_tar(url):
            yield key, lambda fields=fields: decode_fields(fields, task)

    def decode_shards(self, shards: list[tuple[str, int]], width: int) -> list[ShardArrays]:
        """Shards ``(url, expected samples)`` decoded one by one."""
        return [decode_records(url, count, width, self.records(url)) for url, count in shards]

    def check_shard(self, path: str, name: str, shard: int, seen: dict[str, str],
                    check: RecordCheck) -> tuple[int | None, list[str]]:
        problems: list[str] = []
        count = 0
        try:
            for key, fields in fmt.iter_tar(path):
                count += 1
                if key in seen:
                    problems.append(f"{name}: sample {key} also in {seen[key]}")
                seen[key] = name
                problems += _check_record(name, shard, key, fields, check)
        except FormatError as err:
            return None, [*problems, f"{name}: {err}"]
        return count, problems

    @classmethod
    def target_bytes(cls, urls: list[str], index: SetIndex, members: tuple[str, ...]) -> float:
        """Bytes per sample of the target's tar members, with .npy headers (first shard)."""
        sizes = [sum(len(fields[m]) for m in members) for _, fields in fmt.iter_tar(urls[0])]
        return float(np.mean(sizes)) if sizes else 0.0


def _check_record(name: str, shard: int, key: str, fields: dict[str, bytes], check: RecordCheck) -> list[str]:
    where = f"{name}: sample {key}"
    try:
        record = decode_fields(fields)
    except Exception as err:  # noqa: BLE001 — any decoder error is a finding, not a crash
        return [f"{where}: cannot decode ({type(err).__name__}: {err})"]
    problems = []
    try:
        key_shard, _ = fmt.parse_key(key)
    except ValueError:
        return [f"{where}: malformed key"]
    if key_shard != shard:
        problems.append(f"{where}: key prefix says shard {key_shard}")
    meta = record["meta"]
    if not isinstance(meta, dict) or meta.get("key") != key:
        problems.append(f"{where}: metadata key is {meta.get('key') if isinstance(meta, dict) else meta!r}")
        return problems
    return problems + check(where, record, fields)
