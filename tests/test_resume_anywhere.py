"""Resume anywhere, through the installed command: a student's training SIGKILLed at a random
step (mid-epoch, mid-item) and started again with the same command ends with the weights of a
run that was never killed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from bad_input import command, job_with, transferset, write_config
from conftest import kill_session

from core.models import read_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.own_ray]  # a run killed with its Ray

STEPS = 400
# KD from two sets and the real split, with a loader worker and items of 3 batches; a state every
# 7 steps, so the kill lands between states and inside an item.
STUDENT = {"model": {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": 8}}, "objective": "kd",
           "sets": {"real": 0.5, "mix": 0.25, "source": 0.25}, "kd": {"alpha": 0.5},
           "train": {"steps": STEPS, "batch_size": 64, "num_workers": 1, "batches_per_transfer": 3,
                     "checkpoint_steps": 7}}


def test_a_student_killed_at_a_random_step_resumes_to_the_same_weights(tmp_path: Path) -> None:
    config = write_config(tmp_path / "job.yaml", job_with(students={"kd": STUDENT}))
    whole = tmp_path / "whole"
    done = transferset("run", config, "--out", whole, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path("students/kd/seed-0")
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed, ignore=shutil.ignore_patterns("students"))
    args = [command(), "train", str(config), "--student", "kd", "--out", str(killed)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    state = killed / run_dir / "state.pt"
    try:
        deadline = time.monotonic() + 300
        while not state.is_file():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.5))
    finally:
        kill_session(proc)
    assert not (killed / run_dir / "model.pt").exists(), "the run ended before the kill: raise STEPS"
    step = torch.load(state, weights_only=True)["step"]
    assert 0 < step < STEPS and step % 7 == 0
    resumed = transferset("train", config, "--student", "kd", "--out", killed, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {step}" in resumed.stdout + resumed.stderr
    first = read_checkpoint(whole / run_dir / "model.pt")["state_dict"]
    second = read_checkpoint(killed / run_dir / "model.pt")["state_dict"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
