"""examples/gaze.yaml end to end through the CLI on a tiny budget: teachers, both regression
sets, the six Table-3 students, and a report whose numbers are the ones the run measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.sets import index as sx
from pipeline.inspect.verify import verify_set

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
GAZE = ROOT / "examples" / "gaze.yaml"
STUDENTS = ("erm", "erm_mixup", "kd", "kd_unc", "kd_mix", "xcl_mix")
TINY = [
    "source.samples=160", "source.test_samples=64", "teachers.parallel='off'", "teachers.train.steps=20",
    "teachers.train.batch_size=16", "teachers.train.threads=1", "teachers.model.arch_kwargs.width=4",
    "sets.real.sampler.views=2", "sets.real.samples_per_shard=160", "sets.mix.samples=320",
    "sets.mix.samples_per_shard=160",
    *(f"students.{s}.train.steps=8" for s in STUDENTS),
    *(f"students.{s}.train.num_workers=0" for s in STUDENTS),
]


@pytest.fixture(scope="module")
def gaze_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gaze")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TRANSFERSET_CACHE": str(out / "cache")}
    args = [arg for value in TINY for arg in ("--set", value)]
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(GAZE), "--out", str(out), *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_the_report_holds_the_measured_errors_and_gap_reductions(gaze_run) -> None:
    out, result = gaze_run
    report = json.loads((out / "report.json").read_text())
    assert (report["task"], report["metric"], report["test_samples"]) == ("regress", "angular", 64)
    assert set(report["students"]) == set(STUDENTS) and len(report["teacher"]["members"]) == 2
    teacher = report["teacher"]["error"]
    for name, row in report["students"].items():
        stored = json.loads((out / "students" / name / "seed-0" / "result.json").read_text())
        assert row["error"] == stored["error"] and row["steps"] == 8
        assert row["gap"] == pytest.approx(stored["error"] - teacher)
    kd_gap = report["students"]["kd"]["gap"]
    for name in ("kd_unc", "kd_mix", "xcl_mix"):
        value = report["gap_reduction"][f"{name}_vs_kd"]
        assert value is None if kd_gap <= 0 else value == pytest.approx(1 - report["students"][name]["gap"] / kd_gap)
    assert [report["students"][n]["sigma_trained"] for n in STUDENTS] == [False, False, False, True, False, True]
    assert report["students"]["erm_mixup"]["method"] == "erm mse+mixup"
    assert [report["students"][n]["sets"] for n in STUDENTS] == ["source", "source", "real", "real", "real+mix",
                                                                 "real+mix"]
    for name in STUDENTS:
        assert name in result.stdout
    assert "gap reduction xcl_mix_vs_kd" in result.stdout and "mean σ by λ" in result.stdout


def test_sigma_by_lambda_covers_the_teachers_and_the_gaussian_students(gaze_run) -> None:
    out, _ = gaze_run
    report = json.loads((out / "report.json").read_text())
    curves = report["sigma_by_lambda"]
    assert curves["set"] == "mix" and curves["path"] == str(out / "sets" / "mix") and curves["samples"] == 320
    assert set(curves["curves"]) == {"teacher", "teacher (aleatoric)", "kd_unc", "xcl_mix"}
    assert sum(row["count"] for row in curves["curves"]["teacher"]) == 320
    plot = out / "sigma_vs_lambda.png"
    assert report["plots"] == [str(plot)] and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_both_sets_are_sound_regression_sets(gaze_run) -> None:
    out, _ = gaze_run
    for name, samples in (("real", 320), ("mix", 320)):
        index = sx.read_index(out / "sets" / name)
        assert (index.task, index.totals.samples) == ("regress", samples)
        assert verify_set(out / "sets" / name) == []
