"""The supervisor on real failures, through the CLI a user runs (each run starts its own Ray):
a stall ends the execution, restarts from the committed shards and finally gives up with one
line (exit 1); bad input met only inside a Ray actor comes back as the user's one-line error
(exit 2) instead of a retried crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.sets import index as sx

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""})


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An ImageFolder job with its teacher trained: (config, out, folder)."""
    root = tmp_path_factory.mktemp("supervised")
    folder = image_folder(root / "images")
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump({
        "name": "supervised", "source": {"kind": "imagefolder", "path": str(folder)},
        "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                     "train": {"steps": 5, "batch_size": 8, "num_workers": 0}},
        "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": 64, "samples_per_shard": 32}},
    }))
    out = root / "out"
    assert cli("train", config, "--teachers", "--out", out).returncode == 0
    return config, out, folder


def test_a_stall_restarts_then_gives_up_with_one_line(job) -> None:
    config, out, _ = job
    result = cli("generate", config, "--out", out, "--set", "teacher_stage.num_gpus=1",  # no GPU here: unschedulable
                 "--set", "ray.stall_timeout_s=4", "--max-restarts", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "restart 1/1 from the committed shards" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: set mix: the execution stalled") and "gave up after 1 restart(s)" in last
    assert "num_gpus=1" in last and "GPU 0" in last  # says why: what the actors ask for, what there is
    assert "Traceback" not in result.stderr
    assert sx.read_index(out / "sets" / "mix") is None  # nothing half-made is presented as a set


def test_bad_input_inside_an_actor_is_one_user_error(job) -> None:
    config, out, folder = job
    (folder / "train" / "b" / "5.png").write_bytes(b"not a png")  # the teacher was trained before the damage
    teacher = out / "teachers" / "member-0" / "model.pt"
    result = cli("generate", config, "--out", out.parent / "fresh", "--set", f"teachers.checkpoints=[{teacher}]")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image ") and "5.png: unreadable" in last and "remove or replace" in last
    assert "Traceback" not in result.stderr and "infinite retries" not in result.stderr
