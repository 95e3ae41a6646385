"""``transferset plan``: the cost of the quickstart (scaled down) before it runs, checked against
what ``run`` then reports and writes; nothing written, no Ray, bad input refused."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bad_input import transferset, tree
from cli_runner import transferset_in_process

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
STUDENTS = ("erm", "kd", "xcl_mix", "xcl_gen")
# 2 members; `real` enumerates the 1437 digits once (3 shards, the last short); `mix` keeps the more
# uncertain half of its candidates (select: twice the samples through the teachers); `gen` 300 samples.
SMALL = [
    "teachers.members=2", "teachers.train.steps=20", "teachers.parallel=off", "teacher_stage.batch_size=200",
    "teacher_stage.actors=1", "ray.num_cpus=2", "student_stage.parallel=off",
    "sets.real.sampler.views=1", "sets.real.samples_per_shard=512",
    "sets.mix.samples=600", "sets.mix.samples_per_shard=256", "sets.mix.select={by: entropy, keep: 0.5}",
    "sets.gen.samples=300", "sets.gen.samples_per_shard=256", "sets.gen.sampler.generator.rank=4",
    *(f"students.{s}.train.steps=4" for s in STUDENTS), *(f"students.{s}.train.batch_size=32" for s in STUDENTS),
    *(f"students.{s}.train.num_workers=0" for s in STUDENTS),
]
EXPECTED_FORWARDS = {"real": 1437, "mix": 2 * 256 + 2 * 256 + math.ceil(88 / 0.5), "gen": 300}


def overrides(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def plan(out: Path, *extra: str, values: list[str] = SMALL, script: bool = True) -> subprocess.CompletedProcess[str]:
    """``transferset plan`` through the installed script (``script=False``: its entry point in this process)."""
    run = transferset if script else transferset_in_process
    return run("plan", QUICKSTART, "--out", out, *overrides(values), *extra, cwd=ROOT)


def set_forwards(stderr: str) -> dict[str, int]:
    """The per-set teacher forward passes a `run` reported."""
    return {m[1]: int(m[2]) for m in re.finditer(r"set (\w+): \d+ of \d+ shards made.* (\d+) teacher forward passes",
                                                 stderr)}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The plan of a fresh job, the job run, and the plan of the finished job."""
    out = tmp_path_factory.mktemp("plan") / "job"
    before = plan(out, "--json")
    assert before.returncode == 0, before.stderr[-3000:]
    assert not out.exists(), "plan wrote into the job's output directory"
    ran = transferset("run", QUICKSTART, "--out", out, *overrides(SMALL), cwd=ROOT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    finished = tree(out)
    after = plan(out, "--json", "--probe")
    assert after.returncode == 0, after.stderr[-3000:]
    return {"out": out, "before": json.loads(before.stdout), "run": ran, "after": json.loads(after.stdout),
            "after_stderr": after.stderr, "unchanged": tree(out) == finished}


@pytest.mark.e2e
def test_forward_count_is_what_run_reports(job: dict[str, Any]) -> None:
    before, reported = job["before"], set_forwards(job["run"].stderr)
    planned = {s["name"]: s["teacher_forward_samples"] for s in before["sets"]}
    assert planned == EXPECTED_FORWARDS
    assert reported == planned
    total = int(re.search(r"sets: (\d+) teacher forward passes in all", job["run"].stderr)[1])
    assert before["totals"]["teacher_forward_samples"] == total == sum(EXPECTED_FORWARDS.values())
    assert before["totals"]["to_make"]["teacher_forward_samples"] == total  # a fresh job makes everything
    mix = next(s for s in before["sets"] if s["name"] == "mix")
    assert (mix["shards"], mix["samples"], mix["member_forwards"]) == (3, 600, 2 * EXPECTED_FORWARDS["mix"])
    assert mix["batches_per_member"] == 3 + 3 + 1  # 512, 512 and 176 candidates in batches of 200
    assert before["teachers"]["to_train"] == 2 and before["teachers"]["weights"].startswith("random")


@pytest.mark.e2e
def test_counts_and_bytes_match_the_sets_written(job: dict[str, Any]) -> None:
    for entry in job["before"]["sets"]:
        index = json.loads((job["out"] / "sets" / entry["name"] / "index.json").read_text())
        assert (entry["shards"], entry["samples"]) == (len(index["shards"]), index["totals"]["planned"])
        written = sum(shard["bytes"] for shard in index["shards"])
        assert abs(entry["bytes"] - written) <= 0.10 * written, (entry["name"], entry["bytes"], written)
        assert entry["probe"]["samples"] == index["shards"][0]["samples"]


@pytest.mark.e2e
def test_plan_of_the_finished_job_finds_nothing_to_make(job: dict[str, Any]) -> None:
    after, before = job["after"], job["before"]
    assert job["unchanged"], "plan changed the finished job"
    assert after["teachers"]["to_train"] == 0 and after["teachers"]["weights"] == "trained"
    assert after["totals"]["teacher_forward_samples"] == before["totals"]["teacher_forward_samples"]
    assert after["totals"]["to_make"] == {"shards": 0, "teacher_forward_samples": 0}
    assert [s["out_dir"] for s in after["sets"]] == [str(job["out"] / "sets" / n) for n in ("real", "mix", "gen")]
    # the real teachers' targets change the stored bytes little: the targets' width is fixed
    for old, new in zip(before["sets"], after["sets"], strict=True):
        assert abs(old["bytes"] - new["bytes"]) <= 0.02 * new["bytes"]


@pytest.mark.e2e
def test_probe_reports_seconds(job: dict[str, Any]) -> None:
    after = job["after"]
    probe, seconds = after["probe"], after["totals"]["seconds"]
    assert probe["teacher_device"] == "cpu" and len(probe["teacher_batch_s"]) == 2
    assert all(0 < s < 60 for s in probe["teacher_batch_s"])
    assert seconds["teacher_training"] == 0 and seconds["teacher_forwards"] == 0  # all done already
    assert seconds["student_training"] > 0
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), abs=0.01)
    assert after["totals"]["device_hours"] == pytest.approx(seconds["total"] / 3600, rel=1e-3)
    for student in after["students"]:
        assert student["seconds"] == pytest.approx(student["step_s"] * 4, abs=0.002)


@pytest.mark.e2e
def test_text_plan_with_probe_before_the_teachers_exist(tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = plan(out, "--probe")
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert "random weights, not trained yet" in text
    assert re.search(rf"^total\s+8\s+2337\s+{sum(EXPECTED_FORWARDS.values())}\s", text, re.M), text
    assert re.search(r"^teacher training\s+[\d.]+\s+2 members × 20 steps", text, re.M), text
    assert re.search(r"^total\s+[\d.]+\s+= [\d.]+ device-hours", text, re.M), text
    assert not out.exists()


@pytest.mark.e2e
def test_plan_starts_no_ray(tmp_path: Path) -> None:
    """The plan in one process: afterwards Ray was never imported."""
    code = ("import sys\nfrom pipeline.cli import main\nsys.argv = ['transferset', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            "print('ray imported' if 'ray' in sys.modules else 'no ray', file=sys.stderr)\n")
    args = ["plan", QUICKSTART, "--out", tmp_path / "job", *overrides(SMALL), "--json"]
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().endswith("no ray")
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize(("values", "message"), [
    (["teachers.checkpoints=[/nonexistent/teacher.pt]"], "teachers: 1 checkpoint(s) missing"),
    (["sets.mix.select={by: entropy, keep: 2}"], "sets.mix.select.keep"),
    (["teacher_stage.device=cuda"], "teacher_stage.device is 'cuda' but teacher_stage.num_gpus is 0"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, values: list[str], message: str) -> None:
    out = tmp_path / "job"
    result = plan(out, values=SMALL + values, script=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not result.stdout and not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "job"
    out.write_text("not a directory")
    result = plan(out, script=False)
    assert result.returncode == 2 and "plan --out" in result.stderr and "not a directory" in result.stderr
    assert out.read_text() == "not a directory"
