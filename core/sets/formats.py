"""The registry of shard formats: chosen by the config's ``store.kind`` when a set is planned,
by its index's ``image.encoding`` when it is read. A new format is one class
(:class:`~core.sets.shard_format.ShardFormat`) listed here."""

from __future__ import annotations

from typing import Any

from core.sets.index import SetIndex
from core.sets.packed_shards import PackedShards
from core.sets.replay_shards import ReplayShards
from core.sets.shard_format import PixelShards, ShardFormat

FORMATS: dict[str, type[ShardFormat]] = {cls.kind: cls for cls in (PixelShards, ReplayShards, PackedShards)}
BY_ENCODING: dict[str, type[ShardFormat]] = {encoding: cls for cls in FORMATS.values() for encoding in cls.encodings}
PIXELS = PixelShards()


def format_of(index: SetIndex) -> type[ShardFormat]:
    """The format of an indexed set (one whose index names no encoding stores pixels)."""
    encoding = index.image.encoding if index.image is not None else None
    return BY_ENCODING.get(str(encoding), PixelShards)


def inspect_lines(stats: dict[str, Any]) -> list[str]:
    """What each format adds to ``inspect``'s text, for the formats whose statistics ``stats`` holds."""
    return [line for cls in FORMATS.values() for line in cls.lines(stats)]
