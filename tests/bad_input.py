"""The machinery of the bad-input corpus (tests/test_bad_input.py): a tiny finished job made by
the installed ``transferset`` command, a runner that calls that command the way a user does, and
the inputs the cases break (files, checkpoints, damaged copies of sets)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STUDENT = {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}
STUDENT_TRAIN = {"steps": 10, "batch_size": 64, "num_workers": 0}
# One teacher, one views set of 3 shards, one mix set of 2, an ERM and a KD student: seconds.
JOB: dict[str, Any] = {
    "name": "corpus",
    "seed": 0,
    "source": {"kind": "digits", "pad": 1},
    "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                 "train": {"steps": 30, "batch_size": 128}},
    "teacher_stage": {"batch_size": 512, "actors": 1, "num_cpus": 0.5, "threads": 1},
    "student_stage": {"parallel": "off"},
    "sets": {"real": {"sampler": {"kind": "views", "views": 1}, "samples_per_shard": 512},
             "mix": {"sampler": {"kind": "mix"}, "samples": 1024, "samples_per_shard": 512}},
    "students": {"erm": {"model": STUDENT, "objective": "erm", "train": STUDENT_TRAIN},
                 "kd": {"model": STUDENT, "objective": "kd", "sets": {"real": 0.5, "mix": 0.5},
                        "kd": {"alpha": 1.0}, "train": STUDENT_TRAIN}},
}


def command() -> str:
    """The installed console script (what a user runs), beside this interpreter."""
    script = Path(sys.executable).with_name("transferset")
    return str(script) if script.is_file() else shutil.which("transferset") or "transferset"


def transferset(*args: Any, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def job_with(**changes: Any) -> dict[str, Any]:
    """JOB with ``dotted__keys=value`` replaced (``None`` removes the key)."""
    raw = copy.deepcopy(JOB)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``directory``: equal trees = nothing
    written, deleted or changed."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@dataclass
class Corpus:
    """The finished job every case runs against, and its config file."""

    root: Path
    job: Path  # OUT of the finished job: teachers/, sets/, students/
    config: Path
    run_stderr: str
    snapshot: dict[str, bytes | None] = field(default_factory=dict)

    def copy_job(self, to: Path) -> Path:
        shutil.copytree(self.job, to)
        return to

    def copy_set(self, name: str, to: Path) -> Path:
        shutil.copytree(self.job / "sets" / name, to)
        return to

    def teacher(self) -> Path:
        return self.job / "teachers" / "member-0" / "model.pt"

    def changed(self) -> bool:
        """Whether the job differs from its snapshot; if so it is restored from a pristine copy,
        so that one case that damages it fails alone instead of failing every later case."""
        if tree(self.job) == self.snapshot:
            return False
        shutil.rmtree(self.job)
        shutil.copytree(self.root / "pristine", self.job)
        return True


def make_corpus(root: Path) -> Corpus:
    config = write_config(root / "corpus.yaml", JOB)
    job = root / "job"
    result = transferset("run", config, "--out", job, cwd=root)
    if result.returncode != 0:
        raise AssertionError(f"the corpus job failed: exit {result.returncode}\n{result.stderr[-3000:]}")
    shutil.copytree(job, root / "pristine")
    return Corpus(root=root, job=job, config=config, run_stderr=result.stderr, snapshot=tree(job))


# ---------------------------------------------------------------- inputs the cases break


def shard(set_dir: Path, number: int = 1) -> Path:
    return set_dir / "shards" / f"shard-{number:06d}.tar"


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def flip_byte(path: Path, at: float = 0.6) -> Path:
    """Flip one byte inside a member's payload (same size: only hashes and decoding can tell)."""
    data = bytearray(path.read_bytes())
    position = int(len(data) * at)
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def save_torch(path: Path, payload: Any) -> Path:
    import torch

    torch.save(payload, path)
    return path


def checkpoint_payload(corpus: Corpus) -> dict[str, Any]:
    import torch

    return torch.load(corpus.teacher(), map_location="cpu", weights_only=True)


class RunsCode:
    """Unpickling this runs ``open(marker, 'w')``: the checkpoint a safe loader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def imagefolder(root: Path, sizes: list[tuple[int, int]], garbage: int | None = None) -> Path:
    """``root/train|test/<class>/<n>.png``: two classes, one image per size (``garbage``: that
    image is not an image at all)."""
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for n, (h, w) in enumerate(sizes):
                path = folder / f"{n}.png"
                if n == garbage:
                    path.write_bytes(b"this is not a PNG")
                else:
                    Image.fromarray(np.full((h, w, 3), 40 * n, np.uint8)).save(path)
    return root


def npz(path: Path, **arrays: Any) -> Path:
    import numpy as np

    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_error_line(result: subprocess.CompletedProcess[str], needles: Any = ()) -> str:
    """Bad input's contract: exit 2, no traceback, a last stderr line ``error: …`` holding every
    needle. Returns that line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 2, output[-3000:]
    last = last_line(result.stderr)
    assert last.startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


def dumps(value: Any) -> str:
    return json.dumps(value)
