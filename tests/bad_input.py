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
from filelock import FileLock

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


def transferset(*args: Any, cwd: Path, extra_path: Path | None = None, timeout: float = 600,
                memory: int | None = None, own_ray: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed command; ``memory``: an address-space limit in bytes (for inputs that
    would make an unguarded loader eat the machine's memory); ``own_ray``: with an embedded Ray
    of its own, not the session's (tests/conftest.py, ``attached_runs``)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    if own_ray:
        env["RAY_ADDRESS"] = ""
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit if memory else None)


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


    def replay(self) -> tuple[Path, Path]:
        """``(config, job)`` of a replay set made from this job's teacher (mix and cutmix records,
        2 shards) and a student of it: made by the installed command on first use."""
        job = self.root / "replay-job"
        config = self.root / "replay.yaml"
        with FileLock(f"{self.root}.replay.lock"):  # the corpus is shared by the pytest workers
            self._make_replay(config, job)
        return config, job

    def _make_replay(self, config: Path, job: Path) -> None:
        if not (job / "sets" / "rmix" / "index.json").is_file():
            write_config(config, job_with(teachers__checkpoints=[str(self.teacher())], sets=REPLAY_SETS,
                                          students={"kd": {**JOB["students"]["kd"], "sets": {"rmix": 1.0}}}))
            result = transferset("generate", config, "--out", job, cwd=self.root)
            if result.returncode != 0:
                raise AssertionError(f"the replay set failed: exit {result.returncode}\n{result.stderr[-3000:]}")


REPLAY_SETS = {"rmix": {"samplers": [{"kind": "mix", "share": 0.5}, {"kind": "cutmix", "share": 0.5}],
                        "samples": 256, "samples_per_shard": 128, "store": "replay"}}


def shared_corpus(root: Path) -> Corpus:
    """The corpus in ``root``, made once for the whole test run: the first pytest worker to ask
    makes it (a file lock beside ``root``), the others wait and read it (the job takes ~45 s and
    every case only reads it or copies it; ``Corpus.changed`` restores it should a case break it)."""
    with FileLock(f"{root}.lock"):
        made = root / "made.json"
        if made.is_file():
            return Corpus(root=root, job=root / "job", config=root / "corpus.yaml",
                          run_stderr=json.loads(made.read_text())["run_stderr"], snapshot=tree(root / "job"))
        shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way left this
        root.mkdir(parents=True)
        corpus = make_corpus(root)
        made.write_text(json.dumps({"run_stderr": corpus.run_stderr}))
        return corpus


def make_corpus(root: Path) -> Corpus:
    config = write_config(root / "corpus.yaml", JOB)
    job = root / "job"
    # an embedded Ray, as `make run` starts one: the run's stderr is checked (test_command_output)
    result = transferset("run", config, "--out", job, cwd=root, own_ray=True)
    if result.returncode != 0:
        raise AssertionError(f"the corpus job failed: exit {result.returncode}\n{result.stderr[-3000:]}")
    shutil.copytree(job, root / "pristine")
    return Corpus(root=root, job=job, config=config, run_stderr=result.stderr, snapshot=tree(job))


# ---------------------------------------------------------------- inputs the cases break


def shard(set_dir: Path, number: int = 1) -> Path:
    return set_dir / "shards" / f"shard-{number:06d}.tar"


def last_shard(set_dir: Path) -> Path:
    """The set's last shard: the short one (``shard-NNNNNN-CCCCCC.tar``) when its samples do not fill it."""
    return sorted((set_dir / "shards").glob("shard-*.tar"))[-1]


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


# ---------------------------------------------------------------- boundary inputs (issue 24)


def png_bomb(path: Path, side: int = 16000) -> Path:
    """A valid 1-bit PNG of ``side``×``side`` blank pixels: 256 megapixels (more than twice PIL's
    MAX_IMAGE_PIXELS) in about 30 KB — a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    pixels = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML "billion laughs": ``levels`` anchors, each a list of ``width`` aliases of the one
    before (width**levels values once expanded), under a key the config does not have."""
    names = [f"l{n}" for n in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    lines += [f"{name}: &{name} [{', '.join(['*' + names[n]] * width)}]" for n, name in enumerate(names[1:])]
    return "name: bomb\nbomb:\n" + "\n".join("  " + line for line in lines) + "\n"


def replay_records(set_dir: Path, shard_number: int = 1) -> tuple[Path, Any]:
    """The records of one replay shard (path, structured array) to damage and save back."""
    import numpy as np

    path = set_dir / "shards" / f"shard-{shard_number:06d}.npy"
    return path, np.load(path)


def save_records(path: Path, records: Any) -> None:
    """Write damaged records back in place: the same dtype and length, so the same size."""
    import numpy as np

    size = path.stat().st_size
    np.save(path, records, allow_pickle=False)
    assert path.stat().st_size == size


def first_row(records: Any, code: int) -> int:
    """The first record of sampler code ``code`` (0: mix, 1: cutmix in REPLAY_SETS)."""
    import numpy as np

    return int(np.flatnonzero(records["sampler"] == code)[0])


def with_overrides(verb: str, *overrides: Any) -> Any:
    """``verb`` (generate, plan) of the finished job with ``--set`` overrides, each a string or a
    function of (corpus, the case's directory) giving one."""
    def build(c: Corpus, tmp: Path) -> list[Any]:
        made = [o(c, tmp) if callable(o) else o for o in overrides]
        return [verb, c.config, "--out", c.job, *[a for o in made for a in ("--set", o)]]
    return build


def linked_folder(target: str) -> Any:
    """An ImageFolder (tests' two-class one) whose train/a/2.png is a symlink to ``target``
    (relative to its folder): a dangling link or a loop."""
    def make(_: Corpus, tmp: Path) -> str:
        root = imagefolder(tmp / "images", [(8, 8), (8, 8)])
        (root / "train" / "a" / "2.png").symlink_to(target)
        return str(root)
    return make


def bombed_folder(number: int) -> Any:
    """An ImageFolder whose train/a/<number>.png is a decompression bomb (0: the first file, which
    the reader decodes; 1: a later one, which the header check meets)."""
    def make(_: Corpus, tmp: Path) -> str:
        root = imagefolder(tmp / "images", [(8, 8), (8, 8)])
        png_bomb(root / "train" / "a" / f"{number}.png")
        return str(root)
    return make


def damaged_replay_job(c: Corpus, tmp: Path, damage: Any) -> tuple[Path, Path]:
    """``(config, job)``: a copy of the corpus's replay job in ``tmp / "job"`` after
    ``damage(records)`` on shard 1's records of its set ``rmix``, written back at the same size."""
    config, job = c.replay()
    copy = tmp / "job"
    shutil.copytree(job, copy)
    path, records = replay_records(copy / "sets" / "rmix")
    damage(records)
    save_records(path, records)
    return config, copy


def damaged_replay(damage: Any, verb: str) -> Any:
    """``train --student kd`` (or ``inspect``) of a copy of the corpus's replay job after
    ``damage(records)`` (:func:`damaged_replay_job`)."""
    def build(c: Corpus, tmp: Path) -> list[Any]:
        config, copy = damaged_replay_job(c, tmp, damage)
        if verb == "train":
            return ["train", config, "--out", copy, "--student", "kd"]
        return [verb, copy / "sets" / "rmix"]
    return build


def lam_out_of_range(records: Any) -> None:
    records["lam"][first_row(records, 0)] = 7.5


def box_out_of_range(records: Any) -> None:
    records["box"][first_row(records, 1)] = [0, 12, 0, 12]  # digits are 8×8


def offset_out_of_range(records: Any) -> None:
    records["aug_i_dx"][first_row(records, 0)] = 9  # pad 1: offsets lie in [0, 2]
