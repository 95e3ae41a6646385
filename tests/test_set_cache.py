"""A shared set cache under growth and concurrency (issue 24), through the installed command:

* a listed shard never changes — growth completes a short last shard under its full name, every
  earlier index still verifies, a run killed while growing leaves a set that verifies, and a
  grown set equals a clean one (after ``gc``, byte for byte);
* writers of one set take its lease — a second identical request waits and makes nothing, a
  smaller one that waited for a larger is refused and the index keeps the larger, a killed or
  silent holder is taken over, a live writer's temp file is never deleted, ``gc`` refuses while
  the lease is held.

Each of these failed before the fix (checked against f4bfe00 and f24531e). The concurrency suite
(``tests/test_concurrency.py``) runs the same on random schedules, locally and on S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input import Corpus, job_with, last_line, tree, write_config
from bad_input import transferset as installed_transferset
from cache_jobs import as_indexed, config, forward_passes, generate, start_generate, the_set, transferset
from conftest import kill_session

from core.config import parse_config
from core.sets import index as sx
from pipeline.generate.plan import finish, plan_set, resume, start
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

pytestmark = pytest.mark.e2e

# The lease's modules are imported in the tests that use them, so that the rest of this file runs
# (and fails for what it shows) on a version without them.


@pytest.fixture(scope="session")
def made(teachers: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path, int, Path], Path]:
    """``made(cache, samples, where)``: the cached mix set of ``samples`` samples in ``cache``, as
    ``transferset generate`` (a job in ``where``) makes it. The first request of a size runs the
    installed command; later ones get a copy of that cache — the same bytes, since a set is a
    pure function of its config and teachers (the golden-bytes test), without a run of ~17 s."""
    made_once: dict[int, Path] = {}

    def make(cache: Path, samples: int, where: Path) -> Path:
        if samples not in made_once:
            first = tmp_path_factory.mktemp(f"cache-{samples}")
            result = generate(config(where, first, teachers, samples))
            assert result.returncode == 0, result.stderr[-3000:]
            made_once[samples] = first
        shutil.copytree(made_once[samples], cache)
        return the_set(cache)

    return make


def test_growth_completes_a_short_shard_under_its_full_name_and_changes_no_listed_file(made, teachers,
                                                                                        tmp_path) -> None:
    cache = tmp_path / "cache"
    set_dir = made(cache, 300, tmp_path / "small")
    shutil.copy(set_dir / sx.INDEX_NAME, tmp_path / "index-300.json")
    old = sx.read_index(set_dir)
    before = {e.name: (set_dir / "shards" / str(e.name)).read_bytes() for e in old.listed()}

    grown = generate(config(tmp_path / "big", cache, teachers, 500))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert forward_passes(grown) == 500 - 4 * 64  # shard 4 in full, 5, 6 and 7 (52)
    for name, data in before.items():
        assert (set_dir / "shards" / name).read_bytes() == data, f"{name} changed while the set grew"
    assert "shard-000004-000044.tar" in before  # a short last shard is named by its count
    old_verified = transferset("verify", set_dir, "--index", tmp_path / "index-300.json")
    assert old_verified.returncode == 0, old_verified.stdout + old_verified.stderr
    now = transferset("verify", set_dir)
    assert now.returncode == 0 and "shard-000004-000044.tar" in now.stdout and "transferset gc" in now.stdout

    clean_cache = tmp_path / "clean"
    clean = made(clean_cache, 500, tmp_path / "clean-job")
    assert clean.name == set_dir.name
    grown_tree, clean_tree = tree(set_dir), tree(clean)
    assert {k: v for k, v in grown_tree.items() if k != "shards/shard-000004-000044.tar"} == clean_tree
    swept = transferset("gc", set_dir)
    assert swept.returncode == 0, swept.stderr[-2000:]
    assert json.loads(swept.stdout)["removed"] == ["shard-000004-000044.tar"]
    assert tree(set_dir) == clean_tree  # the grown set is the clean set, byte for byte


@pytest.mark.own_ray  # killed with its Ray
def test_a_run_killed_while_growing_leaves_a_set_that_verifies(made, teachers, tmp_path) -> None:
    """The short shard used to be rewritten in place: a kill after that left an index listing
    a shard whose size and sha256 it did not know."""
    cache = tmp_path / "cache"
    set_dir = made(cache, 300, tmp_path / "small")
    index = sx.read_index(set_dir)
    listed_bytes = {e.name: e.bytes for e in index.listed()}
    full = set_dir / "shards" / "shard-000004.tar"  # shard 4 in full (before the fix: rewritten in place)
    proc = start_generate(config(tmp_path / "big", cache, teachers, 500), tmp_path / "grow.log")
    try:
        deadline = time.monotonic() + 300
        while not (full.is_file() and full.stat().st_size not in (0, listed_bytes.get(full.name))):
            assert proc.poll() is None, (tmp_path / "grow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "shard 4 was never completed"
            time.sleep(0.02)
    finally:
        kill_session(proc)
    assert as_indexed(set_dir, index) == []
    left = transferset("verify", set_dir)
    assert left.returncode == 0, left.stdout + left.stderr


@pytest.mark.own_ray  # two runs at once, each with a Ray of its own
def test_identical_concurrent_requests_make_each_shard_once(teachers, tmp_path) -> None:
    cache = tmp_path / "cache"
    configs = [config(tmp_path / f"job-{n}", cache, teachers, 300) for n in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; from cache_jobs import generate; from pathlib "
                               "import Path; r = generate(Path(sys.argv[1])); print(r.returncode); "
                               "print(r.stdout); print(r.stderr, file=sys.stderr)", str(c)],
                              cwd=Path(__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in configs]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [out.splitlines()[0] for out, _ in outputs]
    assert codes == ["0", "0"], [err[-2000:] for _, err in outputs]
    passes = [forward_passes(subprocess.CompletedProcess([], 0, out.split("\n", 1)[1], "")) for out, _ in outputs]
    assert sorted(passes) == [0, 300], passes  # one made the set, the other waited and reused it
    assert transferset("verify", the_set(cache)).returncode == 0


def _grow_in_process(cache: Path, teachers: list[Path], samples: int) -> None:
    """Make the set to ``samples`` here (no Ray), as a writer already holding the lease does."""
    from cache_jobs import job

    plan = plan_set(parse_config(job(str(cache), teachers, samples)), "mix", "unused", teachers)
    start(plan)
    state = resume(plan, lambda _: None)
    ensemble = Ensemble(teachers, 10, device="cpu")
    for shard in state.missing(plan.spec):
        images, drawn, labels = make_shard(plan.spec, shard)
        state.summaries[shard] = write_shard(plan.spec, shard, images, drawn, labels, ensemble.predict(images),
                                             count=plan.spec.planned(shard), name=plan.name(shard))
    finish(plan, state)


def test_a_waiting_smaller_request_is_refused_once_the_set_grew_and_the_index_keeps_the_larger(made, teachers,
                                                                                               tmp_path) -> None:
    """``check_not_smaller`` ran only at plan time and each job's finish wrote its own index: a
    smaller request planned before a larger one finished put the index back to the smaller count."""
    from core.store.lease import SetLease

    cache = tmp_path / "cache"
    set_dir = made(cache, 128, tmp_path / "first")
    lease = SetLease(set_dir, "test: 320 samples").acquire()
    log = tmp_path / "smaller.log"
    proc = start_generate(config(tmp_path / "smaller", cache, teachers, 192), log)
    try:
        deadline = time.monotonic() + 300
        while "waiting for" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the second writer never waited"
            time.sleep(0.1)
        assert sorted(p.name for p in (set_dir / "shards").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
        _grow_in_process(cache, teachers, 320)
    finally:
        lease.release()
    assert proc.wait(timeout=600) == 2, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "already holds 320 samples" in last_line(text), text[-2000:]
    assert sx.read_index(set_dir).totals.planned == 320
    assert transferset("verify", set_dir).returncode == 0


@pytest.mark.own_ray  # killed with its Ray
def test_a_killed_holder_is_taken_over_at_once_and_a_silent_one_after_its_ttl(made, teachers, tmp_path) -> None:
    from core.store.lease import LeaseRecord

    cache = tmp_path / "cache"
    set_dir = made(cache, 128, tmp_path / "first")
    proc = start_generate(config(tmp_path / "killed", cache, teachers, 320), tmp_path / "killed.log")
    try:
        deadline = time.monotonic() + 300
        while not any(p.name.startswith("_lease.") for p in set_dir.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.02)
    finally:
        kill_session(proc)
    assert [p.name for p in set_dir.iterdir() if p.name.startswith("_lease.")]  # the killed holder's lease is left
    began = time.monotonic()
    after_kill = generate(config(tmp_path / "after-kill", cache, teachers, 320))
    assert after_kill.returncode == 0, after_kill.stderr[-3000:]
    assert "waiting for" not in after_kill.stderr  # a dead process of this host holds nothing

    silent = LeaseRecord(token="t", space="00000000", host="elsewhere", pid=1, started="", what="mix: 999 samples",
                         since=time.time(), beat=0, ttl=4.0)
    (set_dir / "_lease.000007").write_bytes(silent.encode())
    began = time.monotonic()
    grown = generate(config(tmp_path / "after-silence", cache, teachers, 384))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "waiting for" in grown.stderr and "being written by pid 1 on elsewhere" in grown.stderr
    assert time.monotonic() - began >= 4.0
    assert not [p for p in set_dir.iterdir() if p.name.startswith("_lease.")]
    assert transferset("verify", set_dir).returncode == 0


def test_a_live_writers_temp_file_is_never_deleted(made, teachers, tmp_path) -> None:
    """``remove_stale_temps`` deleted every temp file at start and finish, another writer's too."""
    from core.store.liveness import writer_tag

    cache = tmp_path / "cache"
    set_dir = made(cache, 128, tmp_path / "first")
    live = set_dir / "shards" / f"shard-000009.tar.tmp-{writer_tag()}-0123456789ab"  # this test process: alive
    live.write_bytes(b"half a shard")
    os.utime(live, (time.time() - 3600, time.time() - 3600))  # however old: its writer lives
    dead = subprocess.run([sys.executable, "-c", "from core.store.liveness import writer_tag; print(writer_tag())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    gone = set_dir / "shards" / f"shard-000008.tar.tmp-{dead}-0123456789ab"
    gone.write_bytes(b"a dead writer's")
    grown = generate(config(tmp_path / "grown", cache, teachers, 256))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert live.read_bytes() == b"half a shard" and not gone.exists()
    swept = transferset("gc", set_dir)
    assert json.loads(swept.stdout)["temp_files_removed"] == 0 and live.exists()


def test_gc_refuses_while_a_writer_holds_the_lease(made, teachers, tmp_path) -> None:
    from core.store.lease import SetLease

    cache = tmp_path / "cache"
    set_dir = made(cache, 128, tmp_path / "first")
    (set_dir / "shards" / "shard-000005.tar").write_bytes((set_dir / "shards" / "shard-000001.tar").read_bytes())
    lease = SetLease(set_dir, "mix: 999 samples").acquire()

    def unleased() -> dict:  # the set's files but the lease, whose heartbeat moves
        return {k: v for k, v in tree(set_dir).items() if not k.startswith("_lease.")}

    try:
        before = unleased()
        refused = transferset("gc", set_dir)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "mix: 999 samples is being written by pid" in last_line(refused.stderr)
        assert last_line(refused.stderr).startswith("error: ") and "holds the set's lease" in last_line(refused.stderr)
        assert unleased() == before
    finally:
        lease.release()
    swept = transferset("gc", set_dir)
    assert swept.returncode == 0 and json.loads(swept.stdout)["removed"] == ["shard-000005.tar"], swept.stderr


def test_a_set_made_before_counted_names_is_read_and_grown(teachers, tmp_path) -> None:
    """An earlier version named the short last shard ``shard-N.tar``: it stays as it is, and the
    full shard N takes the counted name ``shard-N-<spp>.tar``."""
    from format1 import legacy_names

    cache = tmp_path / "cache"
    _grow_in_process(cache, teachers, 300)
    set_dir = the_set(cache)
    index = set_dir / sx.INDEX_NAME
    index.write_text(json.dumps(legacy_names(set_dir, json.loads(index.read_text())), indent=1, sort_keys=True))
    shutil.copy(index, tmp_path / "index-300.json")
    old = (set_dir / "shards" / "shard-000004.tar").read_bytes()
    assert transferset("verify", set_dir).returncode == 0
    grown = generate(config(tmp_path / "big", cache, teachers, 500))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert (set_dir / "shards" / "shard-000004.tar").read_bytes() == old
    names = [e.name for e in sx.read_index(set_dir).listed()]
    assert names[4:] == ["shard-000004-000064.tar", "shard-000005.tar", "shard-000006.tar", "shard-000007-000052.tar"]
    assert transferset("verify", set_dir, "--index", tmp_path / "index-300.json").returncode == 0
    assert transferset("verify", set_dir).returncode == 0


# Issue 13: a cached set asked for fewer samples, and a student of a grown set (on the corpus job).


def test_a_smaller_request_for_a_cached_set_keeps_every_shard(corpus: Corpus, tmp_path: Path) -> None:
    """``out: auto`` ignores the sample count; a smaller request deleted the shards another job
    made (and asking for the larger count again ran the teachers again)."""
    cache = tmp_path / "cache"

    def generate(samples: int):
        raw = job_with(cache_root=str(cache), teachers__checkpoints=[str(corpus.teacher())], students={},
                       sets={"mix": {"sampler": {"kind": "mix"}, "samples": samples, "samples_per_shard": 512,
                                     "out": "auto"}})
        return installed_transferset("generate", write_config(tmp_path / f"job-{samples}.yaml", raw),
                                     "--out", tmp_path / "out", cwd=tmp_path)

    assert generate(1024).returncode == 0
    made = tree(cache)
    (set_dir,) = cache.iterdir()
    assert len(list((set_dir / "shards").iterdir())) == 2
    smaller = generate(512)
    assert smaller.returncode == 2 and "Traceback" not in smaller.stderr
    assert "already holds 1024 samples" in last_line(smaller.stderr) and "a set only grows" in last_line(smaller.stderr)
    assert tree(cache) == made, "the cached set lost or changed a shard"
    larger = generate(1536)
    assert larger.returncode == 0, larger.stderr[-2000:]
    assert '"teacher_forward_samples": 512' in larger.stdout  # only the new shard was labelled
    grown = tree(cache)
    for name in ("shards/shard-000000.tar", "shards/shard-000001.tar"):
        key = f"{set_dir.name}/{name}"
        assert grown[key] == made[key], f"{name} changed while the set grew"
    assert f"{set_dir.name}/shards/shard-000002.tar" in grown


def test_a_student_of_a_grown_set_is_trained_again(corpus: Corpus, tmp_path: Path) -> None:
    """The reuse spec recorded set fingerprints, which a grown set keeps: the student was reused."""
    job = corpus.copy_job(tmp_path / "job")
    config = write_config(tmp_path / "grown.yaml", job_with(sets__mix__samples=1536))
    result = installed_transferset("run", config, "--out", job, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student kd/seed-0: training" in result.stderr  # reads mix, which grew
    assert "student erm/seed-0: reused" in result.stderr  # reads the real split only
    assert "teacher 0: reused" in result.stderr
