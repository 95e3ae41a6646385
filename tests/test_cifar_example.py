"""examples/cifar10.yaml: its recipe holds together, and the whole chain runs it end to end on real
CIFAR-10 JPEGs at a tiny budget (skipped where cifar10-mini is absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CIFAR10_MINI

from core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar10.yaml"


def test_the_example_compares_methods_on_one_recipe() -> None:
    cfg = load_config(EXAMPLE)
    students = cfg.students
    assert all(s.seeds == [0, 1, 2] for s in students.values())
    longest = max(s.train.steps for s in students.values())
    assert cfg.teachers.train.steps >= longest, "teachers are trained at least as long as the longest student"
    member = cfg.teachers.model
    recipe = cfg.teachers.train.model_dump(exclude={"steps", "label_smoothing"})
    for name, student in students.items():
        assert student.train.model_dump(exclude={"steps", "label_smoothing"}) == recipe, name
        assert student.model == member, name
    twice, once = students["kd"].train.steps, students["kd_1x"].train.steps
    assert twice == 2 * once
    for name in ("erm", "kd", "xcl_mix"):
        assert students[name].train.steps == twice and students[f"{name}_1x"].train.steps == once
    kd = students["kd"].kd
    for name in ("xcl_mix", "kd_1x", "xcl_mix_1x"):
        assert (students[name].kd.temperature, students[name].kd.alpha) == (kd.temperature, kd.alpha), name


@pytest.mark.e2e
@pytest.mark.skipif(not CIFAR10_MINI.is_dir(), reason="cifar10-mini not present")
def test_the_example_runs_end_to_end_on_a_tiny_budget(tmp_path) -> None:
    cfg = load_config(EXAMPLE)
    tiny = [f"source.path={CIFAR10_MINI}", "source.fraction=0.02", "teachers.members=2", "teachers.train.steps=20",
            "teacher_stage.batch_size=100", "sets.real.sampler.views=2", "sets.real.samples_per_shard=100"]
    for name in ("mix", "cutmix", "gen"):
        tiny += [f"sets.{name}.samples=200", f"sets.{name}.samples_per_shard=100"]
    for name in cfg.students:
        tiny += [f"students.{name}.train.steps=4", f"students.{name}.train.batch_size=16",
                 f"students.{name}.seeds=[0]"]
    tiny += ["students.erm.seeds=[0, 1]", "students.kd.seeds=[0, 1]"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TRANSFERSET_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(EXAMPLE), "--out", str(tmp_path / "run"),
                             *[arg for value in tiny for arg in ("--set", value)]],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["students"]) == set(cfg.students) and report["test_samples"] == 1000
    teacher = report["teacher"]
    assert teacher["accuracy_train"] >= 0.0 and 0.0 <= teacher["entropy_train"] <= 1.0
    assert report["students"]["kd"]["seeds"] == [0, 1] and len(report["students"]["kd"]["accuracy_by_seed"]) == 2
    seen = report["students"]["xcl_mix"]["seen"]
    assert [row["set"] for row in seen] == ["real", "mix"] and all(row["stored"] for row in seen)
    assert "teacher Ĥ: training split" in result.stdout and "xcl_mix_1x" in result.stdout


def test_each_study_student_changes_one_thing_of_the_example() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import yaml
    from kd_study import GROUPS, study_students

    from core.config import parse_config

    raw = yaml.safe_load(EXAMPLE.read_text())
    study = study_students(raw, list(GROUPS))
    assert {"kd_online", "xcl_online_1x", "xcl_mix_4x", "kd_alpha1", "xcl_mix25", "small_kd_1x"} <= set(study)
    assert set(study_students(raw, ["views"], ("2x",))) == {"kd_online", "xcl_online"}
    base = raw["students"]
    assert study["kd_alpha1"]["kd"] == {**base["kd"]["kd"], "alpha": 1.0}
    assert study["xcl_mix_4x"]["train"]["steps"] == 2 * base["xcl_mix"]["train"]["steps"]
    assert study["erm_ls_1x"]["train"]["steps"] == base["erm_1x"]["train"]["steps"]
    assert study["xcl_online"]["objective"] == "kd_online" and study["xcl_online"]["kd"]["online_mix"] == 0.5
    assert study["small_erm"]["model"]["arch_kwargs"]["width"] < base["erm"]["model"]["arch_kwargs"]["width"]
    assert base["kd"]["kd"] == {"temperature": 4.0, "alpha": 0.9}, "variants never write into the example"
    cfg = parse_config({**raw, "students": study, "report": {}}, origin="study")
    assert set(cfg.students) == set(study)
