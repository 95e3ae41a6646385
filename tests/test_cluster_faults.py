"""Fault tolerance on a real multi-node Ray cluster (tests/cluster_holder.py: a head with no CPUs
and two 2-CPU workers), through the command a user runs: `transferset generate --address`.

(a) The worker node hosting a generation actor is killed mid-run: the job completes with no key
    lost or duplicated, byte-identical to a 1-node run.
(b) The driver is SIGKILLed at 5 random points (one during start-up, the others after a random
    number of newly committed shards); each rerun resumes, and the last one ends byte-identical
    to the 1-node run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import generate_set_in, kill_session, snapshot

from core.config import SetConfig, sampler_config
from core.records import format as fmt
from core.sets import index as sx
from pipeline.inspect.verify import verify_set

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
SHARDS, PER_SHARD = 64, 128  # 64 shards: room for five kills between commits; 128 samples keep it short
SET = SetConfig(sampler=sampler_config(kind="mix"), samples=SHARDS * PER_SHARD, samples_per_shard=PER_SHARD)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


class Holder:
    """The cluster process: a JSON request/answer per line over its stdin/stdout."""

    def __init__(self, log: Path) -> None:
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cluster_holder.py")], cwd=ROOT, env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        self.address = self.read()["address"]

    def read(self) -> dict:
        """The next answer; other lines on the holder's stdout are Ray's own notices."""
        while line := self.proc.stdout.readline():
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise AssertionError(f"cluster holder exited ({self.proc.poll()}); see {self.log.name}")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        kill_session(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def reference(ray_session, teachers, tmp_path_factory) -> Path:
    """The same set made by one uninterrupted run on the embedded 1-node Ray."""
    out = tmp_path_factory.mktemp("one-node") / "mix"
    assert generate_set_in(out, SET, teachers)["shards_made"] == SHARDS
    return out


@pytest.fixture
def cluster(tmp_path):
    holder = Holder(tmp_path / "cluster.log")
    try:
        yield holder
    finally:
        holder.close()


def job_config(directory: Path, teachers: list[Path]) -> Path:
    """A user's config for this set: existing checkpoints, 2 fractional-CPU actors, a short stall timeout."""
    config = {
        "name": "faults", "seed": 0, "source": {"kind": "digits"},
        "teachers": {"model": {"arch": "tiny_cnn"}, "members": len(teachers), "train": {"steps": 1},
                     "checkpoints": [str(p) for p in teachers]},
        "teacher_stage": {"batch_size": 128, "actors": 2, "num_cpus": 0.5, "threads": 1},
        "ray": {"stall_timeout_s": 60},
        "sets": {"mix": SET.model_dump(mode="json", exclude_none=True)},
    }
    path = directory / "faults.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, out: Path, address: str, log: Path) -> subprocess.Popen:
    handle = open(log, "a")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "generate", str(config), "--out", str(out),
                             "--address", address, "--max-restarts", "2"],
                            cwd=ROOT, env=ENV, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def committed(set_dir: Path) -> int:
    return len(sx.committed_shards(set_dir)) if set_dir.is_dir() else 0


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"generate exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def last_result(log: Path) -> dict:
    """The JSON line `generate` prints for the set (progress lines and Ray's own share the log)."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"set"')]
    assert rows, log.read_text()[-3000:]
    return rows[-1]


def assert_exactly_the_reference(set_dir: Path, reference: Path) -> None:
    expected = [fmt.sample_key(s, i) for s in range(SHARDS) for i in range(PER_SHARD)]
    keys = [key for url in sx.shard_urls(set_dir) for key, _ in fmt.iter_tar(url)]
    assert keys == expected  # none lost, none duplicated, in order
    assert sx.read_manifest(set_dir).column("key").to_pylist() == expected
    assert verify_set(set_dir) == []
    assert snapshot(set_dir) == snapshot(reference)  # shards, manifest, index: byte for byte, no temp files


def test_worker_node_killed_mid_run(cluster, reference, teachers, tmp_path) -> None:
    config, out, log = job_config(tmp_path, teachers), tmp_path / "run", tmp_path / "generate.log"
    set_dir = out / "sets" / "mix"
    proc = launch(config, out, cluster.address, log)
    try:
        wait_for(lambda: committed(set_dir) >= 2, proc, log)
        killed = None
        while killed is None:  # the actor that will make the next shards may still be starting
            killed = cluster.ask("kill-actor-node")["killed"]
            assert proc.poll() is None, log.read_text()[-3000:]
        at_kill = committed(set_dir)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_session(proc)
    assert at_kill < SHARDS, "the node was killed after the run had finished"
    assert cluster.ask("nodes")["alive"] == 2  # the head and the surviving worker
    result = last_result(log)
    assert result["shards_made"] == SHARDS and result["samples"] == SHARDS * PER_SHARD
    assert "left the cluster" in log.read_text()
    assert_exactly_the_reference(set_dir, reference)


def test_driver_killed_at_five_random_points(cluster, reference, teachers, tmp_path) -> None:
    config, out, log = job_config(tmp_path, teachers), tmp_path / "run", tmp_path / "generate.log"
    set_dir = out / "sets" / "mix"
    rng = np.random.default_rng(7)
    kills = []
    for point in range(5):
        before = committed(set_dir)
        proc = launch(config, out, cluster.address, log)
        try:
            if point == 0:  # during start-up: connecting, planning, starting the actors
                time.sleep(float(rng.uniform(0.5, 3.0)))
            else:  # after 1–3 more shards, plus a moment, so some kills land mid-write
                target = min(before + int(rng.integers(1, 4)), SHARDS - 1)
                wait_for(lambda target=target: committed(set_dir) >= target, proc, log)
                time.sleep(float(rng.uniform(0.0, 0.2)))
            assert proc.poll() is None, f"run {point} finished before its kill:\n{log.read_text()[-3000:]}"
        finally:
            kill_session(proc)
        kills.append((before, committed(set_dir)))
    assert sx.read_index(set_dir) is None, "the set completed although every run was killed"
    assert kills[-1][1] > 0 and all(b <= a for b, a in kills), kills
    assert any(0 < before for before, _ in kills[1:]), kills  # later runs resumed from committed shards

    final = launch(config, out, cluster.address, log)
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
    result = last_result(log)
    assert result["shards_made"] == SHARDS - kills[-1][1]  # only what the killed runs had not committed
    assert_exactly_the_reference(set_dir, reference)
