"""Exactly-once under a hard kill: a generate run SIGKILLed mid-way (with its Ray) resumes by
making only the missing shards, and ends byte-identical to a run that was never killed.
Damaged shards are named by verify_set and remade by the next generate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import generate_set_in, kill_session, snapshot

from core.config import SetConfig, sampler_config
from core.records import format as fmt
from core.sets import index as sx
from core.store import storage
from pipeline.generate.set_gc import collect
from pipeline.inspect.verify import unlisted_shards, verify_set

SHARDS, PER_SHARD = 40, 32
SET = SetConfig(sampler=sampler_config(kind="mix"), samples=SHARDS * PER_SHARD, samples_per_shard=PER_SHARD)
SCRIPT = textwrap.dedent("""
    import json, sys
    from core.config import parse_config
    from pipeline.generate.driver import generate_set
    args = json.loads(sys.argv[1])
    cfg = parse_config({"name": "test", "seed": 0, "source": {"kind": "digits"},
                        "teachers": {"model": {"arch": "tiny_cnn"}, "train": {"steps": 1}},
                        "teacher_stage": {"batch_size": 128}, "ray": {"num_cpus": 2}, "sets": {"mix": args["set"]}})
    generate_set(cfg, "mix", args["out"], args["teachers"], lambda m: print(m, flush=True))
""")


@pytest.fixture(scope="module")
def clean(ray_session, teachers, tmp_path_factory) -> Path:
    """The reference: the same set made by one uninterrupted run."""
    out = tmp_path_factory.mktemp("clean") / "set"
    assert generate_set_in(out, SET, teachers)["shards_made"] == SHARDS
    return out


@pytest.mark.own_ray  # killed with its Ray
@pytest.mark.e2e
def test_killed_run_resumes_exactly_once(clean, teachers, tmp_path) -> None:
    out = tmp_path / "set"
    script = tmp_path / "run_generate.py"
    script.write_text(SCRIPT)
    args = json.dumps({"set": SET.model_dump(mode="json"), "teachers": [str(p) for p in teachers],
                       "out": str(out)})
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.monotonic() + 120
        while len(sx.committed_shards(out)) < 2:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no shards committed in 120 s"
            time.sleep(0.02)
    finally:
        kill_session(proc)
    survived = set(sx.committed_shards(out))
    assert 2 <= len(survived) < SHARDS and sx.read_index(out) is None

    result = generate_set_in(out, SET, teachers)
    assert result["shards_made"] == SHARDS - len(survived)
    assert snapshot(out) == snapshot(clean)  # every shard, the manifest and the index; no temp files
    index = sx.read_index(out)
    assert [s.name for s in index.shards] == [sx.shard_name(i) for i in range(SHARDS)]
    expected = [fmt.sample_key(s, i) for s in range(SHARDS) for i in range(PER_SHARD)]
    assert sx.read_manifest(out).column("key").to_pylist() == expected
    assert [key for url in sx.shard_urls(out) for key, _ in fmt.iter_tar(url)] == expected
    assert not [p for p in out.rglob("*") if storage.TMP_MARKER in p.name]
    assert verify_set(out) == []


def test_damaged_shards_are_named_and_remade(clean, teachers, tmp_path) -> None:
    damaged = tmp_path / "set"
    shutil.copytree(clean, damaged)
    shards = damaged / sx.SHARDS_DIR
    cut = shards / sx.shard_name(3)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    flipped = shards / sx.shard_name(5)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    shutil.copy(shards / sx.shard_name(0), shards / sx.shard_name(99))
    problems = verify_set(damaged)
    for name in (sx.shard_name(3), sx.shard_name(5)):
        assert any(p.startswith(name) for p in problems), (name, problems)
    assert not any(sx.shard_name(99) in p for p in problems)  # unlisted: no reader sees it
    assert unlisted_shards(damaged, sx.read_index(damaged)) == [sx.shard_name(99)]

    # A committed shard past the set's end may be another job's (a killed larger request of the
    # same fingerprint): the rerun leaves it alone, and only `gc` removes it.
    extra = (shards / sx.shard_name(99)).read_bytes()
    assert generate_set_in(damaged, SET, teachers)["shards_made"] == 2
    assert (shards / sx.shard_name(99)).read_bytes() == extra
    assert verify_set(damaged) == []
    assert collect(str(damaged))["removed"] == [sx.shard_name(99)]
    assert snapshot(damaged) == snapshot(clean)
