"""One writer per set directory at a time: a lease that works on a local or NFS disk and on object
stores, and that a killed holder cannot keep.

Why: a cached set (``out: auto``) is shared by every job that asks for it, often at once. Shard
names say what they hold (:func:`core.sets.index.shard_name`), so two writers never give one name
two contents; the lease is what keeps ``index.json`` a union (each writer re-reads it under the
lease and never lists less), keeps temp-file cleanup and ``transferset gc`` away from a live
writer, and lets a second identical request wait and reuse the shards instead of making them too.

The protocol needs a single primitive, *create if absent* (``storage.create_exclusive``: a hard
link locally and on NFS, ``If-None-Match: *`` on S3). Lease files are epochs, ``_lease.000001``,
``_lease.000002``…; the holder is the writer of the highest one. A writer takes the lease by
creating the next epoch when the current one is free: absent, its writer provably dead (a process
of this host whose pid is gone or reused), or its heartbeat not advanced for the holder's time to
live as *this* process's monotonic clock measures it (so hosts need no common clock). The holder
rewrites its own file every ``ttl / 5`` with the next heartbeat and deletes it when done. A holder
that finds a higher epoch than its own has lost the lease (it was silent for a whole TTL) and must
take it again before it writes an index. A store that ignores ``If-None-Match`` (found by a probe)
falls back to create, wait, read back: best effort, said in a progress line.

``TRANSFERSET_LEASE_TTL_S`` (default 60 s) sets the time to live; ``TRANSFERSET_LEASE_WAIT_S``
bounds how long a writer waits (default: as long as the holder lives), past which it is refused.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import UserError
from core.progress import Progress, quiet
from core.store import storage
from core.store.liveness import process_alive, process_space, process_start

LEASE_PREFIX = "_lease."
TTL_ENV, WAIT_ENV = "TRANSFERSET_LEASE_TTL_S", "TRANSFERSET_LEASE_WAIT_S"
DEFAULT_TTL_S = 60.0
REPORT_EVERY_S = 15.0
FALLBACK_SETTLE_S = 1.0
_conditional: dict[str, bool] = {}  # store root → whether it honours If-None-Match (probed once)


def _seconds(env: str, default: float | None) -> float | None:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{env}={text!r}: expected a number of seconds above 0")
    return value


def lease_ttl() -> float:
    return float(_seconds(TTL_ENV, DEFAULT_TTL_S) or DEFAULT_TTL_S)


def is_lease_name(name: str) -> bool:
    return name.startswith(LEASE_PREFIX)


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease file holds: who writes (process space, host, pid and its start), what, since
    when, the heartbeat count and the time to live the others must grant it."""

    token: str
    space: str
    host: str
    pid: int
    started: str
    what: str
    since: float
    beat: int
    ttl: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        try:
            raw = json.loads(data)
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return (f"{self.what or 'a set'} is being written by pid {self.pid} on {self.host} since "
                f"{time.strftime('%H:%M:%S', time.localtime(self.since))}")


def _epochs(set_dir: str) -> list[int]:
    names = storage.list_names(set_dir)
    return sorted(int(n[len(LEASE_PREFIX):]) for n in names if is_lease_name(n) and n[len(LEASE_PREFIX):].isdigit())


def _lease_url(set_dir: str, epoch: int) -> str:
    return storage.join(set_dir, f"{LEASE_PREFIX}{epoch:06d}")


def _read(set_dir: str, epoch: int) -> LeaseRecord | None:
    """The record of a lease file; None if it is gone or stays unreadable. A read meeting the
    holder's heartbeat rewrite gets one version whole (``storage.read_bytes``); a transient store
    error is read again before the file is called unreadable."""
    for attempt in range(4):
        try:
            return LeaseRecord.decode(storage.read_bytes(_lease_url(set_dir, epoch)))
        except FileNotFoundError:
            return None
        except OSError:
            time.sleep(0.05 * (attempt + 1))
    return None


class SetLease:
    """The lease on one set directory; a context manager (acquire, heartbeat, release)."""

    def __init__(self, set_dir: str | Any, what: str, progress: Progress = quiet,
                 ttl: float | None = None) -> None:
        self.set_dir, self.what, self.progress = str(set_dir), what, progress
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.epoch = 0
        self.record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ taking it

    def acquire(self, wait: bool = True) -> SetLease:
        """Take the lease: wait while a live holder has it (progress lines, up to
        ``TRANSFERSET_LEASE_WAIT_S``), or with ``wait=False`` refuse at once (one line)."""
        storage.make_dirs(self.set_dir)
        fallback = not self._honours_conditional()
        max_wait = _seconds(WAIT_ENV, None)
        observed: dict[tuple[int, str], tuple[int, float]] = {}
        began, reported = time.monotonic(), -REPORT_EVERY_S
        poll = min(1.0, self.ttl / 10) if storage.is_local(self.set_dir) else 1.0
        while True:
            epochs = _epochs(self.set_dir)
            top = epochs[-1] if epochs else 0
            holder = _read(self.set_dir, top) if top else None
            verdict = "free" if top == 0 else self._judge(top, holder, observed)
            if verdict == "free":
                if self._create(top + 1, fallback):
                    return self
                continue
            if verdict == "gone":  # released between listing and reading: look again
                continue
            now = time.monotonic()
            shown = holder.describe() if holder else f"{self.set_dir} has an unreadable lease _lease.{top:06d}"
            if not wait and verdict == "live":
                raise UserError(f"{self.set_dir}: {shown} (it holds the set's lease); try again when it is done")
            if max_wait is not None and now - began > max_wait:
                raise UserError(f"{self.set_dir}: {shown}; gave up waiting after {now - began:.0f} s "
                                f"({WAIT_ENV}={max_wait:g}); try again later")
            if now - reported >= REPORT_EVERY_S:
                reported = now
                self.progress(f"{self.what}: waiting for {self.set_dir}: {shown} (a writer silent for "
                              f"{holder.ttl if holder else self.ttl:g} s or gone from this host is taken over)")
            time.sleep(poll)

    def _judge(self, epoch: int, holder: LeaseRecord | None, observed: dict[tuple[int, str], tuple[int, float]]) -> str:
        """``free`` (dead or silent for its TTL), ``live`` (provably alive, or its heartbeat moved),
        ``waiting`` (not known yet: watching its heartbeat) or ``gone`` (vanished meanwhile)."""
        if holder is None and not storage.is_file(_lease_url(self.set_dir, epoch)):
            return "gone"
        if holder is not None:
            alive = process_alive(holder.space, holder.pid, holder.started)
            if alive is not None:
                return "live" if alive else "free"
        key, beat = (epoch, holder.token if holder else "?"), holder.beat if holder else -1
        now = time.monotonic()
        seen = observed.setdefault(key, (beat, now))
        if seen[0] != beat:
            observed[key] = (beat, now)
            return "live"
        return "free" if now - seen[1] >= (holder.ttl if holder else self.ttl) else "waiting"

    def _create(self, epoch: int, fallback: bool) -> bool:
        record = LeaseRecord(token=uuid.uuid4().hex, space=process_space(), host=socket.gethostname(),
                             pid=os.getpid(), started=process_start(os.getpid()), what=self.what,
                             since=time.time(), beat=0, ttl=self.ttl)
        if not storage.create_exclusive(_lease_url(self.set_dir, epoch), record.encode()):
            return False
        if fallback:  # the store overwrote instead of refusing: the last writer in a second wins
            time.sleep(FALLBACK_SETTLE_S)
            found = _read(self.set_dir, epoch)
            if found is None or found.token != record.token:
                return False
        self.epoch, self.record = epoch, record
        self._remove_below(epoch)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="transferset-lease", daemon=True)
        self._thread.start()
        return True

    def _honours_conditional(self) -> bool:
        """Whether the store refuses a second create of one name (probed once per store root)."""
        if storage.is_local(self.set_dir):
            return True
        root = self.set_dir.split("://", 1)[0] + "://" + self.set_dir.split("://", 1)[1].split("/", 1)[0]
        if root not in _conditional:
            probe = storage.join(self.set_dir, f"{LEASE_PREFIX}probe-{uuid.uuid4().hex}")
            storage.create_exclusive(probe, b"probe")
            _conditional[root] = not storage.create_exclusive(probe, b"probe")
            storage.remove(probe)
            if not _conditional[root]:
                self.progress(f"{root} ignores If-None-Match: the set lease falls back to create, wait "
                              f"{FALLBACK_SETTLE_S:g} s, read back (two writers starting within that second may "
                              "both write; shard names say their content, so they only repeat work)")
        return _conditional[root]

    # ------------------------------------------------------------ holding it

    def holds(self) -> bool:
        """Whether this writer still holds the lease (no later epoch took it over)."""
        with self._lock:  # never read our own file while our heartbeat rewrites it
            return self._holds()

    def _holds(self) -> bool:
        if self.record is None:
            return False
        epochs = _epochs(self.set_dir)
        found = _read(self.set_dir, self.epoch) if epochs and epochs[-1] == self.epoch else None
        return found is not None and found.token == self.record.token

    def ensure(self) -> None:
        """Take the lease again if it was lost (this process was silent for a whole TTL)."""
        if not self.holds():
            self.progress(f"{self.what}: lost the lease on {self.set_dir} (silent for {self.ttl:g} s); taking it again")
            self._halt()
            with self._lock:
                found = _read(self.set_dir, self.epoch)
                if found is not None and self.record is not None and found.token == self.record.token:
                    storage.remove(_lease_url(self.set_dir, self.epoch))  # ours, superseded: not a live holder
                self.record = None
            self.acquire(wait=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            with self._lock:
                if self._stop.is_set() or self.record is None or not self._holds():
                    return
                self.record = LeaseRecord(**{**asdict(self.record), "beat": self.record.beat + 1})
                try:
                    storage.atomic_write(_lease_url(self.set_dir, self.epoch), self.record.encode())
                except OSError:  # a transient store error: the next beat tries again
                    continue

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _remove_below(self, epoch: int) -> None:
        for old in _epochs(self.set_dir):
            if old < epoch:
                storage.remove(_lease_url(self.set_dir, old))

    def release(self) -> None:
        """Give the lease back (and remove earlier epochs' files, so a finished set keeps none)."""
        self._halt()
        with self._lock:
            if self._holds():
                self._remove_below(self.epoch + 1)
            self.record = None

    def __enter__(self) -> SetLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
