"""The concurrency suite (issue 24): processes growing, reading, verifying and killing one cached
set at random moments, on a local disk and on an S3-compatible server (moto's, over HTTP).

Each round starts two ``transferset generate`` runs of the same ``out: auto`` set with random
sample counts (identical ones included; each round's counts lie above the last round's, so every
round grows the set) at random offsets, SIGKILLs one of them (with its Ray) at a random moment in
most rounds (half of those while a writer holds the lease), and runs two readers
(``tests/set_reader.py``: index, then every listed shard checked against it) and one
``transferset verify`` meanwhile. Every run must end with
exit 0, or exit 2 with "a set only grows" (it asked for fewer than the set came to hold), or be
the killed one; no reader may ever meet a listed shard that is not as its index says, the planned
total a reader sees never falls, and every index any reader saw still verifies at the end of its
round (``verify --index``). After the rounds a last run of the largest count and ``gc`` must
leave a set byte-identical to a clean one made by a single run (one on a local disk, made once
for both stores: the S3 set must equal it byte for byte too).

Marked ``concurrency``; ``TRANSFERSET_CONCURRENCY_ROUNDS`` rounds per store (default 2, what
``make test`` and CI run: about 2–3 minutes here, every assertion of a round and of the end kept,
the second round growing the set the first made; 3 before the suite was tiered, docs/TESTING.md;
20 for the figures in docs/ARCHITECTURE.md,
"Reliability"). The figures of a run are appended as JSON lines to
``$TRANSFERSET_CONCURRENCY_LOG`` when set.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_input import last_line
from cache_jobs import as_indexed, config, environment, files, generate, start_generate, transferset
from conftest import kill_session

from core.sets import index as sx
from core.store import storage
from pipeline.inspect.verify import verify_set

pytestmark = [pytest.mark.concurrency, pytest.mark.own_ray]  # runs killed with their Ray, two at once
ROUNDS = int(os.environ.get("TRANSFERSET_CONCURRENCY_ROUNDS", "2"))
GROWTH = (0, 20, 44, 100)  # a round asks for base + one of these: short last shards of other counts
STEP = 110  # above the largest GROWTH: each round asks for more than the last one made, so it grows the set


def sizes_of(round_no: int) -> tuple[int, ...]:
    return tuple(192 + STEP * round_no + extra for extra in GROWTH)


HERE = Path(__file__).resolve().parent


def _reader(cache_root: str, out: Path, stop: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "set_reader.py"), cache_root, str(out), str(stop)],
                            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _set_dir(cache_root: str) -> str | None:
    found = [name for name, is_dir, _ in storage.list_entries(cache_root) if is_dir]
    return storage.join(cache_root, found[0]) if found else None


def _kill_later(rng: random.Random, proc: subprocess.Popen, cache_root: str) -> int:
    """SIGKILL ``proc`` with its Ray at a random moment: half the time any moment, half the time
    while a writer holds the set's lease (making or committing shards). Returns 1 if it was killed."""
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0, 12))
    else:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            set_dir = _set_dir(cache_root)
            if set_dir and any(name.startswith("_lease.") for name in storage.list_names(set_dir)):
                break
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 3))
    if proc.poll() is not None:
        return 0
    kill_session(proc)
    return 1


def one_round(rng: random.Random, round_no: int, cache_root: str, teachers: list[Path], work: Path,
              env: dict[str, str]) -> dict:
    """One schedule; returns its figures (asserting everything said in the module docstring)."""
    work.mkdir(parents=True)
    stop = work / "stop"
    readers = [_reader(cache_root, work / f"reader-{n}", stop, env) for n in range(2)]
    sizes = [rng.choice(sizes_of(round_no)) for _ in range(2)]
    victim = rng.randrange(2) if rng.random() < 0.75 else None
    runs: list[tuple[subprocess.Popen, Path]] = []
    began = time.monotonic()
    for n, size in enumerate(sizes):
        time.sleep(rng.uniform(0, 2))
        log = work / f"generate-{n}.log"
        runs.append((start_generate(config(work / f"job-{n}", cache_root, teachers, size), log, env), log))
    time.sleep(rng.uniform(0.5, 4))
    verified = transferset("verify", _set_dir(cache_root) or cache_root, env=env)
    assert verified.returncode == 0 or "no index.json" in verified.stdout + verified.stderr \
        or "is not a directory" in verified.stderr, verified.stdout[-2000:] + verified.stderr[-2000:]
    killed = _kill_later(rng, runs[victim][0], cache_root) if victim is not None else 0
    for n, (proc, log) in enumerate(runs):
        code = proc.wait(timeout=600)
        if n == victim and killed:
            continue
        text = log.read_text()
        assert code == 0 or (code == 2 and "a set only grows" in last_line(text)), f"{n} ({sizes[n]}): {text[-3000:]}"
    stop.touch()
    stats = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0 and out, f"reader exit {reader.returncode}: {err[-3000:]}"
        stats.append(json.loads(out))
    for found in stats:
        assert found["mismatches"] == [], found["mismatches"]
        assert found["planned"] == sorted(found["planned"]), "a reader saw the set shrink"
    set_dir = _set_dir(cache_root)
    checked = 0
    if set_dir is not None and sx.read_index(set_dir) is not None:
        assert as_indexed(set_dir, sx.read_index(set_dir)) == []
        seen = {p.name: p for n in range(2) for p in (work / f"reader-{n}").glob("index-*.json")}
        for path in seen.values():  # in this process: the CLI's `verify --index` is tested elsewhere
            assert verify_set(set_dir, path) == [], path.read_text()[:300]
            checked += 1
    return {"sizes": sizes, "killed": killed, "reads": sum(s["reads"] for s in stats),
            "shards_checked": sum(s["shards_checked"] for s in stats), "indexes_verified": checked,
            "seconds": round(time.monotonic() - began, 1)}


@pytest.fixture(scope="module")
def clean_set(teachers, tmp_path_factory) -> Path:
    """The set of the largest count made by one run alone, on a local disk: what both stores' sets
    must equal byte for byte at the end (a set's bytes do not depend on its store)."""
    work = tmp_path_factory.mktemp("clean")
    clean = generate(config(work / "job", work / "cache", teachers, max(sizes_of(ROUNDS - 1))))
    assert clean.returncode == 0, clean.stderr[-3000:]
    return Path(_set_dir(str(work / "cache")))


def run_suite(cache_root: str, clean_dir: Path, teachers: list[Path], work: Path, env: dict[str, str],
              store: str) -> None:
    rng = random.Random(int(os.environ.get("TRANSFERSET_CONCURRENCY_SEED", "24")))
    began = time.monotonic()
    rounds = [one_round(rng, n, cache_root, teachers, work / f"round-{n}", env) for n in range(ROUNDS)]
    largest = max(sizes_of(ROUNDS - 1))
    final = generate(config(work / "final", cache_root, teachers, largest), env)
    assert final.returncode == 0, final.stderr[-3000:]
    set_dir = _set_dir(cache_root)
    assert set_dir is not None
    swept = transferset("gc", set_dir, env=env)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert storage.name_of(set_dir) == clean_dir.name
    assert files(set_dir) == files(clean_dir), "the set differs from a clean one"
    figures = {"store": store, "rounds": len(rounds), "kills": sum(r["killed"] for r in rounds),
               "generate_runs": 2 * len(rounds), "reader_reads": sum(r["reads"] for r in rounds),
               "shards_checked": sum(r["shards_checked"] for r in rounds),
               "indexes_verified": sum(r["indexes_verified"] for r in rounds),
               "seconds": round(time.monotonic() - began, 1), "per_round": rounds}
    if os.environ.get("TRANSFERSET_CONCURRENCY_LOG"):
        with open(os.environ["TRANSFERSET_CONCURRENCY_LOG"], "a") as log:
            log.write(json.dumps(figures) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "per_round"}))


def test_concurrent_growth_reads_verifies_and_kills_on_a_local_disk(clean_set, teachers, tmp_path) -> None:
    run_suite(str(tmp_path / "cache"), clean_set, teachers, tmp_path, environment(), "local")


def test_concurrent_growth_reads_verifies_and_kills_on_s3(s3, clean_set, teachers, tmp_path) -> None:
    run_suite("s3://cache/shared", clean_set, teachers, tmp_path, environment(**s3), "s3 (moto)")

