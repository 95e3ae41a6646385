"""Bring your own teachers, through the installed ``transferset`` command: a timm teacher from a
plain state-dict file imported by ``teachers.models`` (and byte for byte the same by
``import-teacher``), a timm student trained from its set, and the bad inputs of an import — each
one ``error:`` line, exit 2, nothing written. No downloads (the hub is offline)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bad_input import JOB as CORPUS_JOB
from bad_input import (
    RunsCode,
    assert_one_error_line,
    command,
    job_with,
    last_line,
    save_torch,
    tree,
    write_config,
)
from bad_input import transferset as installed_transferset

pytestmark = pytest.mark.e2e

timm = pytest.importorskip("timm")

TEACHER = {"arch": "timm:test_resnet", "weights": "resnet.pt", "input": {"size": 16}}
JOB: dict[str, Any] = {
    "name": "bring", "seed": 0,
    "source": {"kind": "digits", "pad": 1},
    "teachers": {"models": [TEACHER]},
    "teacher_stage": {"batch_size": 256, "actors": 1, "num_cpus": 0.5, "threads": 1},
    "student_stage": {"parallel": "off"},
    "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": 256, "samples_per_shard": 256}},
    "students": {"kd": {"model": {"arch": "timm:test_resnet"}, "objective": "kd", "sets": {"mix": 1.0},
                        "kd": {"alpha": 1.0}, "train": {"steps": 3, "batch_size": 32, "num_workers": 0}}},
}


def transferset(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command, with the Hugging Face hub offline and an empty cache: a pretrained
    tag can only fail, never download."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / ".hf"),
           "TORCH_HOME": str(cwd / ".torch")}
    return subprocess.run([command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights files as other tools write them: plain state dicts of timm models."""
    import torch

    root = tmp_path_factory.mktemp("weights")
    for name, arch, classes in (("resnet.pt", "test_resnet", 10), ("seven.pt", "test_resnet", 7),
                                ("effnet.pt", "test_efficientnet", 10)):
        torch.manual_seed(0)
        torch.save(timm.create_model(arch, num_classes=classes).state_dict(), root / name)
    return root


def test_a_timm_teacher_from_a_state_dict_teaches_a_timm_student(weights: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "job.yaml", {**JOB, "teachers": {"models": [
        {**TEACHER, "weights": str(weights / "resnet.pt")}]}})
    result = transferset("run", config, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher 0: imported timm:test_resnet" in result.stderr
    from core.models import read_checkpoint

    member = tmp_path / "out" / "teachers" / "member-0" / "model.pt"
    teacher = read_checkpoint(member)
    assert teacher["arch"] == "timm:test_resnet" and teacher["num_classes"] == 10
    assert teacher["input"] == {"size": [16, 16], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bilinear", "crop_pct": 0.95}
    student = read_checkpoint(tmp_path / "out" / "students" / "kd" / "seed-0" / "model.pt")
    assert student["arch"] == "timm:test_resnet" and student["input"]["channels"] == 1  # grey digits: in_chans 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["teacher"]["members"]) == 1 and 0 <= report["teacher"]["accuracy"] <= 1
    assert report["students"][0]["name"] == "kd" if isinstance(report["students"], list) else "kd" in report["students"]

    # the command line writes the very same checkpoint
    cli = transferset("import-teacher", "--arch", "timm:test_resnet", "--weights", weights / "resnet.pt",
                      "--classes", 10, "--input-size", 16, "--out", tmp_path / "cli.pt", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (tmp_path / "cli.pt").read_bytes() == member.read_bytes()
    assert json.loads(cli.stdout)["input"]["interpolation"] == "bilinear"

    again = transferset("train", config, "--out", tmp_path / "out", "--teachers", cwd=tmp_path)
    assert again.returncode == 0 and "teacher 0: reused" in again.stderr, again.stderr[-3000:]
    changed = write_config(tmp_path / "job2.yaml", {**JOB, "teachers": {"models": [
        {**TEACHER, "weights": str(weights / "resnet.pt"), "input": {"size": 20}}]}})
    refused = transferset("generate", changed, "--out", tmp_path / "out", cwd=tmp_path)
    assert refused.returncode == 2 and "input.size = [16, 16], the config says [20, 20]" in last_line(refused.stderr)


def import_args(arch: str, weights: str, classes: int = 10) -> list[object]:
    return ["import-teacher", "--arch", arch, "--weights", weights, "--classes", classes, "--out", "teacher.pt"]


def run_with(*members: dict[str, Any], **teachers: Any) -> Any:
    """``run`` of JOB whose teachers are these members (their weights named relative to the files)."""
    def build(files: Path, tmp: Path) -> list[object]:
        models = [{**m, "weights": str(files / m["weights"]) if m["weights"] != "pretrained" else "pretrained"}
                  for m in members]
        return ["run", write_config(tmp / "job.yaml", {**JOB, "teachers": {"models": models, **teachers}}),
                "--out", tmp / "out"]
    return build


def evil(files: Path, tmp: Path) -> list[object]:
    return import_args("timm:test_resnet", str(save_torch(tmp / "evil.pt", {"state_dict": RunsCode(tmp / "pwned")})))


CASES = {
    "keys-do-not-fit": (lambda f, t: import_args("timm:test_resnet", str(f / "effnet.pt")),
                        ("do not fit arch 'timm:test_resnet'", "missing, e.g. ['conv1",
                         "unexpected, e.g. ['conv_stem")),
    "head-of-other-classes": (lambda f, t: import_args("timm:test_resnet", str(f / "seven.pt")),
                              ("seven.pt", "head 'fc.weight' has 7 classes, the data has 10")),
    "pickle-with-code": (evil, ("evil.pt", "cannot be loaded safely")),
    "weights-missing": (lambda f, t: import_args("timm:test_resnet", str(t / "nope.pt")),
                        ("nope.pt", "file not found")),
    "timm-unknown": (lambda f, t: import_args("timm:test_resnett", str(f / "resnet.pt")),
                     ("timm has no model 'test_resnett'", "did you mean test_resnet")),
    "torchvision-unknown": (lambda f, t: import_args("torchvision:resnet19", str(f / "resnet.pt")),
                            ("torchvision has no classifier 'resnet19'",)),
    "pretrained-offline": (lambda f, t: import_args("timm:test_resnet", "pretrained", 1000),
                           ("weights pretrained", "needs internet")),
    "bad-input-size": (lambda f, t: [*import_args("timm:test_resnet", str(f / "resnet.pt")), "--input-size", "a"],
                       ("--input-size 'a'",)),
    # through `run`: keys that do not fit and a member of other classes are tests/test_jpeg_folders_and_tars_chain.py's
    "run-models-and-checkpoints": (run_with(TEACHER, checkpoints=["a.pt"]), ("teachers", "not both")),
    "run-torchvision-unknown": (run_with({**TEACHER, "arch": "torchvision:squeezenet2"}),
                                ("torchvision has no classifier 'squeezenet2'",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_imports_get_one_line_and_write_nothing(weights: Path, tmp_path: Path, case: str) -> None:
    build, needles = CASES[case]
    args = build(weights, tmp_path)
    before, files_before = tree(tmp_path), tree(weights)
    result = transferset(*args, cwd=tmp_path)
    assert_one_error_line(result, needles)
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith((".hf", ".torch"))}
    assert after == before, f"written: {sorted(set(after) - set(before))[:5]}"
    assert tree(weights) == files_before
    assert not (tmp_path / "pwned").exists(), "a weights file ran code while it was loaded"


def test_a_factory_named_in_the_config_trains_labels_and_reports(tmp_path: Path) -> None:
    """``arch: module:factory`` was always refused: no caller passed allowed_factories."""
    (tmp_path / "user_nets.py").write_text(
        "from core.models import TinyCNN\n\n\n"
        "def small_cnn(in_channels, num_classes, width=4):\n"
        "    return TinyCNN(in_channels, num_classes, width=width)\n")
    model = {"arch": "user_nets:small_cnn", "arch_kwargs": {"width": 4}}
    raw = job_with(teachers__model=model, sets={"real": CORPUS_JOB["sets"]["real"]},
                   students={"kd": {**CORPUS_JOB["students"]["kd"], "model": model, "sets": {"real": 1.0}}})
    result = installed_transferset("run", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out",
                                   cwd=tmp_path, extra_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "sets" / "real" / "index.json").is_file()
    assert (tmp_path / "out" / "students" / "kd" / "seed-0" / "model.pt").is_file()
    assert "kd" in result.stdout and "teacher" in result.stdout
