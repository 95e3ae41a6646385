"""Jobs on one cached set, run as users run them: the installed ``transferset`` in subprocesses,
each asking for some number of samples of the same ``out: auto`` mix set (the cache tests and the
concurrency suite share this). A reader here reads a set the way any reader does: ``index.json``,
then the listed shards, each checked against the size and sha256 that index gave it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bad_input import command, write_config

from core.sets import index as sx
from core.store import storage

SPP = 64  # samples per shard: 300 samples end in a short shard of 44, 500 in one of 52


def job(cache_root: str, teachers: list[Path], samples: int) -> dict[str, Any]:
    """A generate-only job: the digits mix set of ``samples`` samples in the cache at ``cache_root``."""
    return {
        "name": "cached", "seed": 0, "source": {"kind": "digits"}, "cache_root": cache_root,
        "teachers": {"model": {"arch": "tiny_cnn"}, "members": len(teachers), "train": {"steps": 1},
                     "checkpoints": [str(p) for p in teachers]},
        "teacher_stage": {"batch_size": 128, "actors": 1, "num_cpus": 0.5, "threads": 1}, "ray": {"num_cpus": 2},
        "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": samples, "samples_per_shard": SPP, "out": "auto"}},
        "students": {},
    }


def config(directory: Path, cache_root: str | Path, teachers: list[Path], samples: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory / f"job-{samples}.yaml", job(str(cache_root), teachers, samples))


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", **extra}


def generate(config_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([command(), "generate", str(config_path), "--out", str(config_path.parent / "out")],
                          cwd=config_path.parent, env=env or environment(), capture_output=True, text=True,
                          timeout=600)


def start_generate(config_path: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``transferset generate`` in a session of its own (``conftest.kill_session`` kills it with its Ray)."""
    with open(log, "wb") as handle:
        return subprocess.Popen([command(), "generate", str(config_path), "--out", str(config_path.parent / "out")],
                                cwd=config_path.parent, env=env or environment(), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def transferset(*args: Any, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([command(), *map(str, args)], cwd=cwd, env=env or environment(), capture_output=True,
                          text=True, timeout=600)


def forward_passes(result: subprocess.CompletedProcess[str]) -> int:
    return sum(json.loads(line)["teacher_forward_samples"] for line in result.stdout.splitlines()
               if line.startswith("{"))


def the_set(cache: Path) -> Path:
    (found,) = [p for p in cache.iterdir() if p.is_dir()]
    return found


def listed(set_dir: str | Path, index: sx.SetIndex | None = None) -> dict[str, bytes]:
    """Every shard the index lists, read through storage (local or URL): name → bytes."""
    index = index or sx.read_index(set_dir)
    assert index is not None, f"{set_dir}: no index"
    return {str(e.name): storage.read_bytes(storage.join(str(set_dir), sx.SHARDS_DIR, str(e.name)))
            for e in index.listed()}


def as_indexed(set_dir: str | Path, index: sx.SetIndex) -> list[str]:
    """Listed shards whose size or sha256 is not what ``index`` says (empty: all as indexed)."""
    found = []
    for entry in index.listed():
        data = storage.read_bytes(storage.join(str(set_dir), sx.SHARDS_DIR, str(entry.name)))
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            found.append(f"{entry.name}: {len(data)} bytes, index says {entry.bytes}")
    return found


def files(set_dir: str | Path) -> dict[str, bytes]:
    """Every file of a set (local or URL) by path relative to it: equal dicts = byte-identical sets."""
    base = str(set_dir)
    out = {}
    for name, is_dir, _ in storage.list_entries(base):
        if is_dir:
            out.update({f"{name}/{k}": v for k, v in files(storage.join(base, name)).items()})
        else:
            out[name] = storage.read_bytes(storage.join(base, name))
    return out
