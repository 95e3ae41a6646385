"""Where sets live: local paths, ``file://`` URLs, or any fsspec URL (``s3://``, ``gs://``, ``memory://``).

Local paths (and ``file://``) keep the exactly-once commit of the shard contract: temp name,
fsync, rename, fsync of the directory. On an object store a single PUT of the whole object is
the commit (it is never visible half-written), so remote writes go straight to the final name.
Every module that reads or writes a set, a source or a checkpoint goes through this one. The
root of the shared set cache (``out: auto``) is defined here too: the bundled gaze renderer
caches its images under it as well.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from pathlib import Path
from typing import IO, Any

from core.store.liveness import writer_tag

TMP_MARKER = ".tmp-"
CACHE_ENV = "TRANSFERSET_CACHE"


def cache_root(configured: str | None) -> str:
    """Root of the shared set cache: the config's ``cache_root``, else $TRANSFERSET_CACHE, else
    ~/.cache/transferset."""
    return configured or os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "transferset")


def is_local(url: str | Path) -> bool:
    text = str(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | Path) -> Path:
    text = str(url)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def _fresh(url: str) -> tuple[Any, str]:
    """The filesystem with its cached listing of ``url`` dropped: a set directory changes under
    other writers (index, leases, new shards), and s3fs would answer from this process's cache."""
    fs, path = _fs(url)
    fs.invalidate_cache(path)
    return fs, path


def join(url: str | Path, *parts: str) -> str:
    if is_local(url):
        return str(local_path(url).joinpath(*parts))
    return posixpath.join(str(url), *parts)


def name_of(url: str | Path) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def is_file(url: str | Path) -> bool:
    if is_local(url):
        return local_path(url).is_file()
    fs, path = _fresh(str(url))
    return fs.isfile(path)


def is_dir(url: str | Path) -> bool:
    if is_local(url):
        return local_path(url).is_dir()
    fs, path = _fresh(str(url))
    return fs.isdir(path)


def exists(url: str | Path) -> bool:
    if is_local(url):
        return local_path(url).exists()
    fs, path = _fresh(str(url))
    return fs.exists(path)


def list_names(url: str | Path) -> list[str]:
    """Names of the entries of a directory (empty when it does not exist)."""
    if is_local(url):
        directory = local_path(url)
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    fs, path = _fresh(str(url))
    if not fs.isdir(path):
        return []
    return sorted(name_of(entry) for entry in fs.ls(path, detail=False))


def list_entries(url: str | Path) -> list[tuple[str, bool, int]]:
    """``(name, is_dir, bytes)`` of a directory's entries, sorted by name (empty when it does not
    exist): one listing call on an object store, where a HEAD per file would cost minutes."""
    if is_local(url):
        directory = local_path(url)
        if not directory.is_dir():
            return []
        return sorted((p.name, p.is_dir(), 0 if p.is_dir() else p.stat().st_size) for p in directory.iterdir())
    fs, path = _fresh(str(url))
    if not fs.isdir(path):
        return []
    return sorted((name_of(entry["name"]), entry["type"] == "directory", int(entry.get("size") or 0))
                  for entry in fs.ls(path, detail=True))


def size(url: str | Path) -> int:
    if is_local(url):
        return local_path(url).stat().st_size
    fs, path = _fs(str(url))
    return int(fs.size(path))


def stat(url: str | Path) -> tuple[int, str]:
    """``(bytes, version)``: the size, and a token that changes when the file is rewritten (the
    modification time locally; the ETag or modification time an object store reports)."""
    if is_local(url):
        info = local_path(url).stat()
        return info.st_size, str(info.st_mtime_ns)
    fs, path = _fs(str(url))
    entry = fs.info(path)
    token = next((entry[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated", "created")
                  if entry.get(k) is not None), "")
    return int(entry.get("size") or 0), str(token)


def read_range(url: str | Path, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (fewer at the end of the file): a seek and a read locally,
    one ranged GET on an object store, never the whole file."""
    if is_local(url):
        with open(local_path(url), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    fs, path = _fs(str(url))
    return bytes(fs.cat_file(path, start=offset, end=offset + length))


def open_read(url: str | Path) -> IO[bytes]:
    if is_local(url):
        return open(local_path(url), "rb")
    fs, path = _fresh(str(url))
    return fs.open(path, "rb")


def read_bytes(url: str | Path) -> bytes:
    """The whole file. Remote, one GET: a file another job replaces meanwhile (a set's index or
    manifest at its commit) is read whole as one version or the other. s3fs's file object reads
    with a HEAD, then GETs pinned to its ETag, and fails (``FileExpired``) when the file was
    replaced in between; and ``cat_file`` of a large object splits into ranged GETs unless told
    not to (``max_concurrency``, s3fs's option), which could join two versions."""
    if is_local(url):
        return local_path(url).read_bytes()
    fs, path = _fresh(str(url))
    whole = {"max_concurrency": 1} if hasattr(fs, "max_concurrency") else {}
    return bytes(fs.cat_file(path, **whole))


def remove(url: str | Path) -> None:
    if is_local(url):
        local_path(url).unlink(missing_ok=True)
        return
    fs, path = _fresh(str(url))
    if fs.exists(path):
        fs.rm(path)


def make_dirs(url: str | Path) -> None:
    if is_local(url):
        local_path(url).mkdir(parents=True, exist_ok=True)
        return
    fs, path = _fs(str(url))
    fs.makedirs(path, exist_ok=True)


def temp_name(name: str) -> str:
    """A temp file's name: the final name, the marker, and the writer (process space and pid, so a
    dead writer's temps can be told from a live one's: ``core.sets.index.remove_stale_temps``)."""
    return f"{name}{TMP_MARKER}{writer_tag()}-{uuid.uuid4().hex[:12]}"


def _write_temp(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _put(url: str, data: bytes, **options: Any) -> None:
    fs, path = _fs(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data, **options)


def atomic_write(url: str | Path, data: bytes) -> None:
    """Write ``url`` exactly once: readers never see half a file (see the module docstring)."""
    atomic_write_all([(url, data)])


def atomic_write_all(files: list[tuple[str | Path, bytes]]) -> None:
    """Replace several files, in order, with the renames back to back: every temp is written and
    fsynced first, so a writer killed in between leaves them out of step for microseconds, not for
    the time of a write (the manifest and ``index.json`` of a set). Object stores: one PUT each."""
    if not all(is_local(url) for url, _ in files):
        for url, data in files:
            _put(str(url), data)
        return
    temps = [(_write_temp(local_path(url), data), local_path(url)) for url, data in files]
    for tmp, path in temps:
        os.replace(tmp, path)
    for directory in sorted({path.parent for _, path in temps}):
        _fsync_dir(directory)


def create_exclusive(url: str | Path, data: bytes) -> bool:
    """Create ``url`` holding ``data`` if nothing is there, atomically; False if something is.

    Locally (and on NFS): a complete temp file hard-linked to the name (``link`` fails when the
    name exists, and the file appears whole). Object stores: a PUT with ``If-None-Match: *``
    (s3fs's ``mode="create"``); a store that ignores the header overwrites instead, which
    :mod:`core.store.lease` detects by probing it once."""
    if not is_local(url):
        try:
            _put(str(url), data, mode="create")
        except FileExistsError:
            return False
        return True
    path = local_path(url)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def modified_age(url: str | Path) -> float | None:
    """Seconds since a local file was last written (None where that is not known: object stores)."""
    if not is_local(url):
        return None
    try:
        return max(0.0, time.time() - local_path(url).stat().st_mtime)
    except FileNotFoundError:
        return None
