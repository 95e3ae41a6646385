"""A reader of a cached set while others write it (the concurrency suite runs it as a process):
``python set_reader.py CACHE_ROOT OUT_DIR STOP_FILE``.

Until STOP_FILE exists it reads the set's ``index.json``, then every shard it lists, and checks
each against the size and sha256 *that* index gave it — what any reader trusting an index does.
It keeps each distinct index it saw in OUT_DIR (``index-<sha256>.json``, for ``verify --index``
later) and ends by printing one JSON line: reads, shards checked, mismatches, the planned totals
in the order seen. Works on local paths and fsspec URLs alike (core.store.storage)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from core.sets import index as sx
from core.store import storage


def read_once(cache_root: str, out: Path, stats: dict) -> None:
    sets = [name for name, is_dir, _ in storage.list_entries(cache_root) if is_dir]
    if not sets:
        return
    set_dir = storage.join(cache_root, sets[0])
    try:
        data = storage.read_bytes(storage.join(set_dir, sx.INDEX_NAME))
    except FileNotFoundError:
        return
    index = sx.SetIndex.from_dict(json.loads(data))
    digest = hashlib.sha256(data).hexdigest()
    (out / f"index-{digest}.json").write_bytes(data)
    stats["reads"] += 1
    stats["planned"].append(index.totals.planned)
    for entry in index.listed():
        shard = storage.read_bytes(storage.join(set_dir, sx.SHARDS_DIR, str(entry.name)))
        stats["shards_checked"] += 1
        if len(shard) != entry.bytes or hashlib.sha256(shard).hexdigest() != entry.sha256:
            stats["mismatches"].append(f"{entry.name}: {len(shard)} bytes, index says {entry.bytes}")


def main(cache_root: str, out_dir: str, stop_file: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"reads": 0, "shards_checked": 0, "mismatches": [], "planned": []}
    while not Path(stop_file).exists():
        try:
            read_once(cache_root, out, stats)
        except FileNotFoundError as err:  # a listed shard missing would be a finding too
            stats["mismatches"].append(f"missing: {err}")
        time.sleep(0.05)
    print(json.dumps(stats))


if __name__ == "__main__":
    main(*sys.argv[1:4])
