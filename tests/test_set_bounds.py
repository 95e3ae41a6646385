"""Issue 24's boundary defects that are not one bad-input case (those are named cases of
tests/test_bad_input.py): each through the installed command, each failed before its fix.

- A nine-level YAML alias bomb ended only when the memory ran out; now refused within seconds.
- ``source.pad`` and ``source.flip`` were not in the set identity: ``pad: 3`` reused a ``pad: 1``
  set's cache entry. Now a value other than the reader's default gives another cache directory,
  and a spelled-out default the same one.
- A read-only cache failed with a ``PermissionError`` traceback when a set had to grow; now one
  line before anything is written, while its complete sets are still served.
- An explicit ``out:`` on the cache directory of another set's ``out: auto`` (only the
  fingerprint tells) silently took the set over; now refused once the sets are planned.
- A replay record with λ = 7.5 trained to the end; under ``train.on_bad_shard: skip`` its shard
  is now skipped and counted, as a damaged shard is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_input import (
    Corpus,
    alias_bomb,
    assert_one_error_line,
    damaged_replay_job,
    job_with,
    lam_out_of_range,
    transferset,
    tree,
    write_config,
)

pytestmark = pytest.mark.e2e

GiB = 1 << 30
MIX = {"sampler": {"kind": "mix"}, "samples": 64, "samples_per_shard": 64, "out": "auto"}


def cached_job(corpus: Corpus, tmp: Path, name: str, sets: dict[str, Any], **changes: Any) -> Path:
    """A config of the corpus's teacher, no students and ``sets``, with its cache under ``tmp``."""
    raw = job_with(teachers__checkpoints=[str(corpus.teacher())], cache_root=str(tmp / "cache"), students={},
                   sets=sets, **changes)
    return write_config(tmp / f"{name}.yaml", raw)


def test_a_nine_level_alias_bomb_is_refused_within_seconds(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(alias_bomb(levels=9))  # 9**9 = 387 420 489 values once expanded, 700 bytes
    began = time.monotonic()
    result = transferset("run", path, "--out", tmp_path / "out", cwd=tmp_path, timeout=60, memory=4 * GiB)
    seconds = time.monotonic() - began
    assert_one_error_line(result, ("job.yaml", "alias bomb"))
    assert seconds < 10, f"{seconds:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def planned_dir(corpus: Corpus, tmp: Path, name: str, **source: Any) -> str:
    """Where ``transferset plan`` puts the ``out: auto`` set of a digits source with ``source``
    options (the teacher exists, so the plan names the cache directory)."""
    config = cached_job(corpus, tmp, name, {"mix": MIX}, source={"kind": "digits", **source})
    result = transferset("plan", config, "--out", tmp / "out", "--json", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["sets"][0]["out_dir"]


def test_pad_and_flip_give_other_cache_directories_and_spelled_defaults_the_same(corpus: Corpus,
                                                                                  tmp_path: Path) -> None:
    default = planned_dir(corpus, tmp_path, "default")
    assert default.startswith(str(tmp_path / "cache" / "mix-"))
    assert planned_dir(corpus, tmp_path, "spelled", pad=1, flip=False) == default  # digits' own defaults
    padded, flipped = planned_dir(corpus, tmp_path, "pad3", pad=3), planned_dir(corpus, tmp_path, "flip", flip=True)
    assert len({default, padded, flipped}) == 3
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # plan writes nothing


@contextlib.contextmanager
def read_only(*directories: Path) -> Iterator[None]:
    """The directories made unwritable: ``chmod a-w``, or for root (whom modes do not stop) the
    immutable attribute; restored afterwards."""
    if os.geteuid() != 0:
        modes = {d: d.stat().st_mode for d in directories}
        for directory in directories:
            directory.chmod(0o555)
        try:
            yield
        finally:
            for directory, mode in modes.items():
                directory.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *map(str, directories)]).returncode:
        pytest.skip("root, and no immutable attribute on this file system: nothing is read-only to root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, directories)], check=True)


def test_a_read_only_cache_serves_its_sets_and_refuses_growth_with_one_line(corpus: Corpus, tmp_path: Path) -> None:
    def generate(name: str, **mix: Any) -> subprocess.CompletedProcess[str]:
        config = cached_job(corpus, tmp_path, name, {"mix": {**MIX, "samples_per_shard": 32, **mix}})
        return transferset("generate", config, "--out", tmp_path / "out", cwd=tmp_path)

    made = generate("made")
    assert made.returncode == 0, made.stderr[-3000:]
    cache = tmp_path / "cache"
    (set_dir,) = cache.iterdir()
    before = tree(cache)
    with read_only(cache, set_dir, set_dir / "shards"):
        served = generate("served")
        assert served.returncode == 0, served.stderr[-3000:]
        assert '"teacher_forward_samples": 0' in served.stdout
        grown = generate("grown", samples=96)  # one more shard
        assert_one_error_line(grown, ("cache_root", "cannot write in", str(set_dir), "'mix' has shards to make"))
        other = generate("other", sampler={"kind": "mix", "augment": False})  # a new set in the cache
        assert_one_error_line(other, ("cache_root", f"cannot write in {cache} ",))
    assert tree(cache) == before
    assert not (tmp_path / "out").exists()


def test_an_out_on_the_cache_directory_of_an_auto_set_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    auto_dir = planned_dir(corpus, tmp_path, "first")
    config = cached_job(corpus, tmp_path, "clash", {"mix": MIX, "copy": {**MIX, "out": auto_dir}})
    before = tree(tmp_path)
    for verb in ("generate", "plan"):
        result = transferset(verb, config, "--out", tmp_path / "out", cwd=tmp_path)
        assert_one_error_line(result, ("sets.copy.out", "is also the directory of set 'mix'", "out: auto"))
    assert tree(tmp_path) == before


def test_a_replay_record_out_of_range_is_skipped_and_counted_with_on_bad_shard_skip(corpus: Corpus,
                                                                                    tmp_path: Path) -> None:
    config, copy = damaged_replay_job(corpus, tmp_path, lam_out_of_range)
    result = transferset("train", config, "--out", copy, "--student", "kd",
                         "--set", "students.kd.train.on_bad_shard=skip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
    assert line["shards_skipped"] >= 1, line
