"""The set lease (core/store/lease.py) and who-is-alive (core/store/liveness.py), without Ray: a dead
holder is taken over at once, a silent one of another host after its TTL and not before, a
beating one never; a holder taken over knows it; temp files of live writers survive cleanup; a
store that ignores If-None-Match is detected and falls back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from core.errors import UserError
from core.sets import index as sx
from core.store import storage
from core.store.lease import LeaseRecord, SetLease, lease_ttl
from core.store.liveness import process_alive, process_space, writer_tag

ELSEWHERE = "0badf00d"  # a process space that is not this one: its pids cannot be checked from here


def foreign(what: str = "mix: 999 samples", ttl: float = 1.5, beat: int = 0) -> LeaseRecord:
    return LeaseRecord(token="t", space=ELSEWHERE, host="elsewhere", pid=4242, started="", what=what,
                       since=time.time(), beat=beat, ttl=ttl)


def lease_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("_lease."))


def test_a_dead_holder_of_this_host_is_taken_over_at_once(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.store.lease import SetLease; "
                               "SetLease(sys.argv[1], 'killed').acquire(); print('held', flush=True); time.sleep(600)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="killed is being written by pid .* holds the set's lease"):
        SetLease(tmp_path, "gc").acquire(wait=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lease_files(tmp_path) == ["_lease.000001"]
    began = time.monotonic()
    lease = SetLease(tmp_path, "next").acquire(wait=False)
    assert time.monotonic() - began < 1 and lease.holds() and lease_files(tmp_path) == ["_lease.000002"]
    lease.release()
    assert lease_files(tmp_path) == []


def test_a_silent_holder_elsewhere_is_taken_over_after_its_ttl_and_a_beating_one_never(tmp_path) -> None:
    (tmp_path / "_lease.000003").write_bytes(foreign(ttl=1.5).encode())
    lines: list[str] = []
    began = time.monotonic()
    lease = SetLease(tmp_path, "waiter", lines.append).acquire()
    assert 1.5 <= time.monotonic() - began < 10
    assert lease.epoch == 4 and "mix: 999 samples is being written by pid 4242 on elsewhere" in lines[0]
    lease.release()

    stop = threading.Event()

    def beat() -> None:  # another host's live writer: its heartbeat keeps moving
        count = 0
        while not stop.wait(0.2):
            count += 1
            storage.atomic_write(tmp_path / "_lease.000005", foreign(ttl=1.0, beat=count).encode())

    storage.atomic_write(tmp_path / "_lease.000005", foreign(ttl=1.0).encode())
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        with pytest.raises(UserError, match="holds the set's lease"):
            SetLease(tmp_path, "gc").acquire(wait=False)
        os.environ["TRANSFERSET_LEASE_WAIT_S"] = "2.5"
        began = time.monotonic()
        with pytest.raises(UserError, match="gave up waiting after 3 s .TRANSFERSET_LEASE_WAIT_S=2.5."):
            SetLease(tmp_path, "patient").acquire()
        assert time.monotonic() - began >= 2.5
    finally:
        os.environ.pop("TRANSFERSET_LEASE_WAIT_S", None)
        stop.set()
        thread.join()


def test_a_holder_taken_over_knows_it_and_takes_the_lease_again(tmp_path) -> None:
    lease = SetLease(tmp_path, "slow", ttl=1.0).acquire()
    assert lease.holds()
    (tmp_path / "_lease.000002").write_bytes(foreign(ttl=1.0).encode())  # someone judged it silent
    assert not lease.holds()
    lease.ensure()  # waits for the other writer's TTL, then holds epoch 3
    assert lease.holds() and lease.epoch == 3 and lease_files(tmp_path) == ["_lease.000003"]
    time.sleep(0.5)  # heartbeats keep it: the beat moves
    assert LeaseRecord.decode((tmp_path / "_lease.000003").read_bytes()).beat >= 1
    lease.release()
    assert lease_files(tmp_path) == []


def test_temp_files_of_live_writers_survive_cleanup(tmp_path) -> None:
    shards = tmp_path / sx.SHARDS_DIR
    shards.mkdir()
    dead = subprocess.run([sys.executable, "-c", "from core.store.liveness import writer_tag; print(writer_tag())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = {"live": f"shard-000001.tar.tmp-{writer_tag()}-aaaaaaaaaaaa",
             "dead": f"shard-000002.tar.tmp-{dead}-bbbbbbbbbbbb",
             "elsewhere": f"shard-000003.tar.tmp-{ELSEWHERE}-7-cccccccccccc",
             "elsewhere-old": f"shard-000004.tar.tmp-{ELSEWHERE}-7-dddddddddddd",
             "old-style-old": "index.json.tmp-0123456789abcdef0123456789abcdef"}
    for key, name in names.items():
        path = (tmp_path if key.startswith("old-style") else shards) / name
        path.write_bytes(b"x")
        if key.endswith("-old"):
            os.utime(path, (time.time() - 120, time.time() - 120))
    assert sx.remove_stale_temps(tmp_path, 60) == 3
    assert sorted(p.name for p in shards.iterdir()) == sorted([names["live"], names["elsewhere"]])
    assert process_alive(process_space(), os.getpid()) is True and process_alive(ELSEWHERE, 1) is None


class IgnoringFileSystem(MemoryFileSystem):
    """A store that takes every PUT, ``If-None-Match`` or not (some S3-compatible stores do)."""

    protocol = "ignoring"
    store: dict = {}
    pseudo_dirs = [""]

    def pipe_file(self, path, value, mode="overwrite", **kwargs):  # noqa: ANN001
        return super().pipe_file(path, value, **kwargs)


def test_a_store_that_ignores_conditional_create_is_found_and_falls_back(monkeypatch) -> None:
    fsspec.register_implementation("ignoring", IgnoringFileSystem, clobber=True)
    monkeypatch.setattr("core.store.lease.FALLBACK_SETTLE_S", 0.05)
    assert storage.create_exclusive("ignoring://bucket/x", b"1")
    assert storage.create_exclusive("ignoring://bucket/x", b"2")  # a second create of one name: taken
    lines: list[str] = []
    lease = SetLease("ignoring://bucket/set", "mix", lines.append).acquire()
    assert lease.holds() and any("ignores If-None-Match" in line for line in lines)
    lease.release()
    assert storage.list_names("ignoring://bucket/set") == []


def test_a_bad_ttl_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("TRANSFERSET_LEASE_TTL_S", "soon")
    with pytest.raises(UserError, match=r"^TRANSFERSET_LEASE_TTL_S='soon': expected a number of seconds above 0$"):
        lease_ttl()
