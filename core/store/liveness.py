"""Who is writing, and is it still alive: the identity a writer stamps on its lease and its temp
files, so that another process can tell a live writer from a dead one.

A process is named by its *process space* (host name, boot id and pid namespace: two containers on
one host share a boot id but not a pid namespace, so their pids are never compared) and its pid,
plus the pid's start time (``/proc/<pid>/stat``), so a pid reused by a new process is not taken
for the old writer. Only a process of this process space can be proven dead; any other is judged
by its lease's heartbeat (:mod:`core.store.lease`) or a temp file's age.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path


@functools.cache
def process_space() -> str:
    """8 hex digits naming this host's boot and pid namespace (the space in which pids mean something)."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot_id" in source else str(os.stat(source).st_ino))
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" where /proc does not say)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def writer_tag() -> str:
    """``<process space>-<pid>``: what temp files carry so that a dead writer's can be removed."""
    return f"{process_space()}-{os.getpid()}"


def process_alive(space: str, pid: int, started: str = "") -> bool | None:
    """True or False for a process of this process space (False when its pid now names a process
    that started at another time); None for another space's, which cannot be told from here."""
    if space != process_space():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if started and process_start(pid) not in ("", started):
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed child not yet reaped by its parent still has a pid: it writes nothing any more."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
