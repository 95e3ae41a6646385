"""``transferset gc``: remove the files of a set that its index no longer lists.

A listed shard never changes (docs/ARCHITECTURE.md, "The set cache"), so growth leaves files
behind: a short last shard completed under its full name, and the shards of a killed run that no
index lists yet. Readers never see them and a reader holding an older ``index.json`` may still
read the first kind, so nothing removes them but this command, run on purpose. It takes the set's
lease without waiting, so it refuses (one line, exit 2) while a writer holds it.
"""

from __future__ import annotations

from typing import Any

from core.errors import FormatError, UserError
from core.progress import Progress, quiet
from core.sets import index as sx
from core.store import storage
from core.store.lease import SetLease, lease_ttl


def _index(set_dir: str) -> sx.SetIndex:
    try:
        index = sx.read_index(set_dir)
    except FormatError as err:
        raise UserError(f"gc {set_dir}: {err}") from err
    if index is None:
        raise UserError(f"gc {set_dir}: no {sx.INDEX_NAME}, an unfinished set (its shards are a run's to resume); "
                        "finish it with `transferset generate`, or delete the directory")
    return index


def collect(set_dir: str, progress: Progress = quiet) -> dict[str, Any]:
    """Remove every shard file the set's index does not list and dead writers' temp files, under
    the lease; returns what was removed and kept."""
    if not storage.is_dir(set_dir):
        raise UserError(f"gc: {set_dir} is not a directory")
    _index(set_dir)  # refuse before taking the lease (which would create a file)
    lease = SetLease(set_dir, "gc", progress)
    lease.acquire(wait=False)
    try:
        index = _index(set_dir)  # as it is now, under the lease
        listed = {entry.name for entry in index.listed()}
        removed, freed = [], 0
        shards_dir = storage.join(set_dir, sx.SHARDS_DIR)
        for name, is_dir, size in storage.list_entries(shards_dir):
            if not is_dir and sx.parse_shard(name) is not None and name not in listed:
                storage.remove(storage.join(shards_dir, name))
                removed.append(name)
                freed += size
        temps = sx.remove_stale_temps(set_dir, lease_ttl())
    finally:
        lease.release()
    return {"set_dir": set_dir, "removed": removed, "bytes_freed": freed, "temp_files_removed": temps,
            "listed": len(listed)}
