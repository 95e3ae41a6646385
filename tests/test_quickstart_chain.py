"""examples/quickstart.yaml end to end through the command on digits: the whole chain on a tiny
budget, reruns, and bad input (the bad input through ``pipeline.cli:main`` in this process,
tests/cli_runner.py; the chain and its reruns in a process of their own)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import transferset_in_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TINY = [
    "teachers.members=2", "teachers.train.steps=80", "teacher_stage.batch_size=256",
    "sets.real.sampler.views=2", "sets.real.samples_per_shard=512",
    "sets.mix.samples=1536", "sets.mix.samples_per_shard=512",
    "sets.gen.samples=1536", "sets.gen.samples_per_shard=512",
    *(f"students.{s}.train.steps=40" for s in ("erm", "kd", "xcl_mix", "xcl_gen")),
    *(f"students.{s}.train.num_workers=0" for s in ("erm", "kd", "xcl_mix", "xcl_gen")),
    "students.erm.seeds=[0, 1]",
]


def transferset(*args, check=True):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def in_process(*args):
    """The same command (``pipeline.cli:main``) in this process: bad input that stops before any work."""
    return transferset_in_process(*args, cwd=ROOT)


def with_overrides(overrides):
    return [arg for value in overrides for arg in ("--set", value)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    result = transferset("run", QUICKSTART, "--out", out, *with_overrides(TINY))
    return out, result


def test_run_writes_layout_report_and_table(finished_run):
    out, result = finished_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["students"]) == {"erm", "kd", "xcl_mix", "xcl_gen"}
    assert 0.0 <= report["teacher"]["accuracy"] <= 1.0
    assert len(report["teacher"]["members"]) == 2
    for name, student in report["students"].items():
        seeds = [0, 1] if name == "erm" else [0]
        assert student["seeds"] == seeds
        stored = [json.loads((out / "students" / name / f"seed-{s}" / "result.json").read_text()) for s in seeds]
        assert student["accuracy_by_seed"] == [r["accuracy"] for r in stored], "the report shows what the runs measured"
        assert student["accuracy"] == pytest.approx(np.mean(student["accuracy_by_seed"]))
        assert student["steps"] == 40 and 0.0 <= student["agreement"] <= 1.0 and student["kl"] >= 0.0
    erm = report["students"]["erm"]
    assert erm["accuracy_std"] == pytest.approx(np.std(erm["accuracy_by_seed"], ddof=1))
    assert erm["seen"] == [{"set": "source", "stored": False, "samples": 1437, "seen": pytest.approx(40 * 128 / 1437)}]
    kd = json.loads((out / "students" / "kd" / "seed-0" / "result.json").read_text())
    assert kd["seen"][0]["set"] == "real" and kd["seen"][0]["trained"] == 40 * 128
    assert report["students"]["kd"]["seen"] == [{"set": "real", "stored": True, "samples": 2874,
                                                 "seen": pytest.approx(40 * 128 / 2874)}]
    kd, teacher = report["students"]["kd"]["accuracy"], report["teacher"]["accuracy"]
    for name in ("xcl_mix", "xcl_gen"):
        xcl = report["students"][name]["accuracy"]
        expected = None if teacher <= kd else 1 - (teacher - xcl) / (teacher - kd)
        assert report["gap_reduction"][f"{name}_vs_kd"] == pytest.approx(expected) if expected is not None \
            else report["gap_reduction"][f"{name}_vs_kd"] is None
        assert name in result.stdout
    assert "teacher" in result.stdout
    for sub in ("teachers/member-0/model.pt", "sets/real/index.json", "sets/mix/manifest.parquet",
                "sets/gen/index.json"):
        assert (out / sub).is_file(), sub


def test_verify_accepts_generated_sets(finished_run):
    out, _ = finished_run
    for name in ("real", "mix", "gen"):
        result = transferset("verify", out / "sets" / name)
        assert result.stdout.strip().endswith("OK")


def test_generate_on_complete_sets_makes_nothing(finished_run):
    out, _ = finished_run
    before = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    result = transferset("generate", QUICKSTART, "--out", out, *with_overrides(TINY))
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["set"]: row["shards_made"] for row in rows} == {"real": 0, "mix": 0, "gen": 0}
    after = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    assert before == after


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["teachers.membrs=3"], ["teachers.membrs", "Extra inputs"]),
        (["students.kd.train.steps=many"], ["students.kd.train.steps", "integer"]),
        (["teachers.checkpoints=[/nonexistent/model.pt]"], ["/nonexistent/model.pt", "missing"]),
        (["sets.gen.sampler.classes=[3, 12]"], ["gan sampler", "classes [12]"]),
        (["sets.gen.sampler.generator.kind=biggan"], ["sets.gen.sampler.generator", "needs weights"]),
        (["sets.gen.sampler.generator={kind: biggan, weights: /nonexistent/biggan}"],
         ["/nonexistent/biggan", "neither a pretrained name"]),
    ],
)
def test_bad_config_exits_2_and_leaves_sets_untouched(finished_run, overrides, needles):
    out, _ = finished_run
    before = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    result = in_process("generate", QUICKSTART, "--out", out, *with_overrides(TINY + overrides))
    assert_one_line_error(result, *needles)
    after = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    assert before == after


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["students.kd.objective=distill"], ["students.kd.objective", "'erm', 'kd' or 'kd_online'"]),
        (["students.kd.seeds=[1, 1]"], ["students.kd", "distinct"]),
        (["students.kd.kd.temperature=0"], ["students.kd.kd.temperature", "greater than 0"]),
        (["students.kd.sets={real: 0}"], ["students.kd", "sum to more than 0"]),
        (["students.kd.sets={source: 1}"], ["students.kd", "besides 'source'"]),
    ],
)
def test_bad_training_config_exits_2(finished_run, overrides, needles):
    out, _ = finished_run
    result = in_process("train", QUICKSTART, "--out", out, "--student", "kd", *with_overrides(TINY + overrides))
    assert_one_line_error(result, *needles)


def test_a_set_of_another_task_is_refused_before_training(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    shutil.copytree(out / "sets" / "real", tmp_path / "sets" / "real")
    index_path = tmp_path / "sets" / "real" / "index.json"
    index = json.loads(index_path.read_text())
    index["task"] = "regress"
    index_path.write_text(json.dumps(index))
    result = in_process("train", QUICKSTART, "--out", tmp_path, "--student", "kd", *with_overrides(TINY))
    assert_one_line_error(result, "task 'regress'", "'classify'")
    assert not (tmp_path / "students").exists()


def test_teacher_of_the_wrong_task_exits_2(finished_run, tmp_path):
    from core.models import build_model, input_spec, save_checkpoint

    out, _ = finished_run
    wrong = tmp_path / "regress.pt"
    save_checkpoint(wrong, build_model("tiny_cnn", 1, 10, {"width": 4}), arch="tiny_cnn",
                    arch_kwargs={"width": 4}, num_classes=10, input=input_spec(8, 8, 1, [0.0], [1.0]),
                    task="regress", head={"out_dim": 9, "logvar_dim": 1})
    before = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    result = in_process("generate", QUICKSTART, "--out", out,
                        *with_overrides(TINY + [f"teachers.checkpoints=[{wrong}]"]))
    assert_one_line_error(result, str(wrong), "regress")
    after = {p: p.read_bytes() for p in sorted((out / "sets").rglob("*")) if p.is_file()}
    assert before == after


def test_missing_config_file_exits_2(tmp_path):
    assert_one_line_error(in_process("run", tmp_path / "none.yaml"), "file not found")


def test_train_ray_runs_ddp_through_ray_train(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    shutil.copytree(out / "sets", tmp_path / "sets")
    result = transferset("train", QUICKSTART, "--out", tmp_path, "--student", "kd", "--ray", "--workers", "2",
                         *with_overrides(TINY + ["students.kd.train.steps=20"]))
    stored = json.loads((tmp_path / "students" / "kd" / "seed-0" / "result.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == stored and stored["steps"] == 20
    ranks = [json.loads((tmp_path / "students" / "kd" / "seed-0" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["visited"] and set(ranks[0]["visited"]).isdisjoint(ranks[1]["visited"])


def test_the_agreement_in_the_report_is_the_students_own(finished_run):
    """Recomputed from the checkpoints: the student's and the ensemble's top-1 on the test split."""
    from core.config import load_config
    from core.models import load_model
    from core.sources import load_source
    from student.evaluate import predict_probs

    out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    test = load_source(load_config(QUICKSTART).source, "test")
    loaded = [load_model(out / "teachers" / f"member-{m}" / "model.pt", outputs=10) for m in (0, 1)]
    teacher = predict_probs([m for m, _ in loaded], [p["input"] for _, p in loaded], test)
    model, payload = load_model(out / "students" / "xcl_mix" / "seed-0" / "model.pt", outputs=10)
    student = predict_probs([model], [payload["input"]], test)
    agree = float(np.mean(teacher.argmax(1) == student.argmax(1)))
    assert report["students"]["xcl_mix"]["agreement"] == pytest.approx(agree)
    assert report["students"]["xcl_mix"]["kl"] == pytest.approx(
        float(np.mean(np.sum(teacher * (np.log(teacher) - np.log(student)), axis=1))), rel=1e-6)


def test_more_seeds_reuse_the_runs_already_made(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    shutil.copytree(out / "sets", tmp_path / "sets")
    shutil.copytree(out / "students" / "erm", tmp_path / "students" / "erm")
    result = transferset("train", QUICKSTART, "--out", tmp_path, "--student", "erm",
                         *with_overrides(TINY + ["students.erm.seeds=[0, 1, 2]"]))
    assert "erm/seed-0: reused" in result.stderr and "erm/seed-1: reused" in result.stderr
    printed = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [row["seed_index"] for row in printed] == [0, 1, 2]
    fresh = json.loads((tmp_path / "students" / "erm" / "seed-2" / "result.json").read_text())
    assert printed[2] == {**fresh, "seed_index": 2}
    assert len({row["checkpoint_sha256"] for row in printed}) == 3  # three seeds, three different students
    one = in_process("train", QUICKSTART, "--out", tmp_path, "--student", "erm", "--seed", "3",
                     *with_overrides(TINY + ["students.erm.seeds=[0, 1, 2]"]))
    assert_one_line_error(one, "--seed 3", "[0, 1, 2]")
