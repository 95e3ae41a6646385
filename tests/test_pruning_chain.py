"""Pruned students through the installed ``transferset`` command: a tiny chain on digits (ResNet
students, the three methods, every phase) prints the sizes and the Table-1 block, labels the
Self-Distill set with the unpruned checkpoint alone, and a rerun reuses every step; bad pruning
input is one ``error:`` line, exit 2, nothing written."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input import assert_one_error_line, transferset, tree, write_config
from cli_runner import transferset_in_process

from core.config import load_config, recipes_of
from core.models import build_model
from pipeline.report.pruning import surplus
from student.pruning.recipe import check_recipe

RESNET = {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": 4}}
STEPS = {"steps": 6, "batch_size": 64, "num_workers": 0}
TUNE = {"steps": 3, "batch_size": 64, "num_workers": 0}
JOB: dict[str, Any] = {
    "name": "pruning", "seed": 0, "source": {"kind": "digits", "pad": 1},
    "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                 "train": {"steps": 20, "batch_size": 128}},
    "teacher_stage": {"batch_size": 512, "actors": 1, "num_cpus": 0.5, "threads": 1},
    "student_stage": {"parallel": "off"},
    "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": 512, "samples_per_shard": 512}},
    "students": {
        "scratch": {"model": RESNET, "objective": "erm", "train": STEPS, "prune": [
            {"method": "l1", "ratios": [0.5],
             "then": {"objective": ["erm", "kd"], "sets": {"mix": 1.0}, "train": TUNE}},
            {"method": "magnitude", "amount": 0.5, "then": {"objective": "erm", "train": TUNE}}]},
        "distilled": {"model": RESNET, "objective": "kd", "sets": {"mix": 1.0}, "kd": {"alpha": 1.0}, "train": STEPS,
                      "prune": {"method": "l1", "ratios": [0.5],
                                "then": {"objective": ["erm", "kd", "self_distill"], "train": TUNE}}},
        "slim": {"model": RESNET, "objective": "erm", "train": STEPS,
                 "prune": {"method": "slimming", "amount": 0.3, "slimming_l1": 1e-4,
                           "then": {"objective": "erm", "train": TUNE}}},
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_a_tiny_pruning_chain_runs_every_phase_and_a_rerun_reuses_every_step(tmp_path: Path) -> None:
    config, out = write_config(tmp_path / "job.yaml", JOB), tmp_path / "out"
    first = transferset("run", config, "--out", out, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pruned students (measured" in first.stdout and "Table 1: resnet_cifar, l1" in first.stdout
    report = json.loads((out / "report.json").read_text())["pruning"]
    table = next(t for t in report["tables"] if t["method"] == "l1")
    scratch, label = table["rows"]
    assert (scratch["train_type"], label["train_type"]) == ("Scratch", "Label")
    for key in ("unpruned", "finetuned", "post_distill"):
        assert 0 <= scratch[key][0] <= 1
    for key in ("unpruned", "finetuned", "pre_post", "self_distill"):
        assert 0 <= label[key][0] <= 1
    expected = (label["self_distill"][0] - scratch["finetuned"][0]) - (label["unpruned"][0] - scratch["unpruned"][0])
    assert table["surplus"][0] == pytest.approx(expected)

    run = out / "students" / "distilled" / "seed-0"
    (self_set,) = (run / "self-sets").iterdir()
    index = json.loads((self_set / "index.json").read_text())
    assert [t["sha256"] for t in index["teachers"]] == [sha256(run / "model.pt")]  # the unpruned student alone
    assert index["config"]["set"]["sampler"] == json.loads((out / "sets" / "mix" / "index.json").read_text())[
        "config"]["set"]["sampler"]  # the same sampler as the student's set
    spec = json.loads((run / "prune-l1" / "self_distill" / "spec.json").read_text())
    assert list(spec["sets"]) == [self_set.name]

    measured = {e["recipe"] + "/" + e["student"]: e["sizes"] for e in report["recipes"]}
    for name in ("l1/scratch", "slimming/slim"):
        assert measured[name]["pruned"]["parameters"][0] < measured[name]["unpruned"]["parameters"][0]
        assert measured[name]["pruned"]["macs"][0] < measured[name]["unpruned"]["macs"][0]
        assert measured[name]["pruned"]["checkpoint_bytes"][0] < measured[name]["unpruned"]["checkpoint_bytes"][0]
    magnitude = measured["magnitude/scratch"]
    assert magnitude["pruned"]["macs"] == magnitude["unpruned"]["macs"]  # zeros are not removed
    assert magnitude["pruned"]["nonzero"][0] < 0.6 * magnitude["unpruned"]["nonzero"][0]
    tuned = torch.load(out / "students" / "scratch" / "seed-0" / "prune-magnitude" / "erm" / "model.pt",
                       weights_only=True)
    convs = [v for k, v in tuned["state_dict"].items() if v.ndim == 4]
    assert all(float((w == 0).float().mean()) >= 0.5 for w in convs)  # zeros kept through fine-tuning
    assert bool((tuned["state_dict"]["head.weight"] != 0).all())
    slimmed = json.loads((out / "students" / "slim" / "seed-0" / "spec.json").read_text())
    assert slimmed["slimming_l1"] == 1e-4  # the penalised pre-training is its own run

    before = tree(out / "students")
    again = transferset("run", config, "--out", out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ": training" not in again.stderr and "Self-Distill set mix" in again.stderr
    assert "nothing to do: reused" in again.stderr
    assert tree(out / "students") == before  # every step reused, nothing rewritten


def broken(**recipe: Any) -> dict[str, Any]:
    raw = copy.deepcopy(JOB)
    raw["students"]["scratch"]["prune"][0].update(recipe)
    return raw


@pytest.mark.parametrize("raw, needles", [
    (broken(ratios=[1.0]), ["ratio 1", "[0, 1)"]),
    (broken(ratios=[-0.1]), ["ratio -0.1", "[0, 1)"]),
    (broken(then={"objective": ["erm", "distill"], "train": TUNE}), ["unknown phase 'distill'", "self_distill"]),
    (broken(ratios=[0.5, 0.5]), ["2 ratios for a model with 3 stages"]),
], ids=["ratio-one", "ratio-negative", "unknown-phase", "ratio-count"])
def test_bad_pruning_input_is_one_error_line_and_writes_nothing(tmp_path: Path, raw: dict[str, Any],
                                                                needles: list[str]) -> None:
    result = transferset_in_process("run", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out",
                                    cwd=tmp_path)
    assert_one_error_line(result, needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_slimming_a_model_without_batch_norm_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "plain_nets.py").write_text(
        "from torch import nn\n\n\n"
        "def no_norm(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    raw = copy.deepcopy(JOB)
    raw["students"] = {"slim": {**JOB["students"]["slim"], "model": {"arch": "plain_nets:no_norm"}}}
    result = transferset("run", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out", cwd=tmp_path,
                         extra_path=tmp_path)
    assert_one_error_line(result, ["students.slim.prune slimming", "no batch norm"])
    assert not (tmp_path / "out").exists()


def test_surplus_is_the_papers_worked_example() -> None:
    """§4, Table 1, ResNet-56 40/70/90 %: [(73.30 − 70.06) − (73.76 − 71.23)] = 0.71."""
    scratch = {"by_seed": {0: {"unpruned": 71.23, "erm": 70.06}}}
    label = {"by_seed": {0: {"unpruned": 73.76, "self_distill": 73.30}}}
    assert surplus(scratch, label)[0] == pytest.approx(0.71)


def test_the_example_covers_the_three_methods_and_every_phase_in_pairs() -> None:
    """examples/pruning.yaml: for each method a Scratch and a Label student of one arch and recipe,
    between them every phase of Table 1, and each recipe applies to the arch."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "pruning.yaml")
    by_method: dict[str, dict[str, list[str]]] = {}
    for student in cfg.students.values():
        assert student.seeds == [0, 1, 2]
        model = build_model(student.model.arch, 3, 10, student.model.arch_kwargs)
        for recipe in recipes_of(student.prune):
            check_recipe(model, recipe, torch.zeros(1, 3, 32, 32))
            by_method.setdefault(recipe.method, {})[student.objective] = recipe.then.objective
    assert by_method == {method: {"erm": ["erm", "kd"], "kd": ["erm", "kd", "self_distill"]}
                         for method in ("l1", "magnitude", "slimming")}
