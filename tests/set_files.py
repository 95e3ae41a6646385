"""A set's files as tests reach them: a local shard's path, an index written as given (to make the
odd sets a test needs). The product reads and commits sets only through core.sets."""

from __future__ import annotations

from pathlib import Path

from core.sets import index as sx
from core.store import storage


def local_shard(set_dir: str | Path, shard: int) -> Path:
    """A full tar shard of a local set."""
    return Path(sx.shard_url(str(set_dir), shard))


def write_index(set_dir: str | Path, index: sx.SetIndex) -> None:
    storage.atomic_write(storage.join(set_dir, sx.INDEX_NAME), sx.index_bytes(index))
