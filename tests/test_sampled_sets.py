"""A set with ``targets: {kind: sampled, k: 10}`` through the installed ``transferset`` command:
made by the real stages, verified, inspected, and trained on by a KD student whose loss is the
sampled one (checked by value on its first batch); bad configs stop with one line, exit 2."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bad_input import STUDENT, transferset, tree, write_config
from set_files import local_shard

from core.config import SourceConfig
from core.errors import UserError
from core.models import build_model
from core.records import format as fmt
from core.sources import load_source
from core.tasks import decode_fields
from student.build import source_input_spec
from student.losses import kd_loss
from student.shards import check_sampled_temperature, open_transfer_sets

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 256  # one shard, one batch: the first step's loss is a function of the whole set
TEMPERATURE = 4.0  # the default kd.temperature, so also the default draw temperature
JOB = {
    "name": "sampled", "seed": 0,
    "source": {"kind": "digits", "pad": 1},
    "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                 "train": {"steps": 30, "batch_size": 128}},
    "teacher_stage": {"batch_size": 512, "actors": 1, "num_cpus": 0.5, "threads": 1},
    "student_stage": {"parallel": "off"},
    "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": SAMPLES, "samples_per_shard": SAMPLES,
                     "targets": {"kind": "sampled", "k": 10}}},
    "students": {"kd": {"model": STUDENT, "objective": "kd", "sets": {"mix": 1.0}, "kd": {"alpha": 1.0},
                        "train": {"steps": 1, "batch_size": SAMPLES, "shuffle_window": SAMPLES,
                                  "num_workers": 0}},
                 # pick scores candidates with the dense estimate and trains the chosen rows' weights
                 "kd_pick": {"model": STUDENT, "objective": "kd", "sets": {"mix": 1.0},
                             "kd": {"alpha": 1.0, "pick": {"ratio": 2.0}},
                             "train": {"steps": 3, "batch_size": 32, "num_workers": 0}}},
}


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sampled")
    result = transferset("run", write_config(root / "job.yaml", JOB), "--out", root / "out", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out"


def records(set_dir: Path) -> list[dict]:
    return [decode_fields(fields) for _, fields in fmt.iter_tar(local_shard(set_dir, 0))]


def test_the_set_stores_sampled_records_and_verifies(job) -> None:
    set_dir = job / "sets" / "mix"
    index = json.loads((set_dir / "index.json").read_text())
    assert index["target"] == {"kind": "sampled", "dtype": "float16", "temperature_free": False, "k": 10,
                               "index_dtype": "uint8", "temperature": TEMPERATURE, "uniform": 0.0,
                               "payload_bytes": 57}  # 10 + 20 + 20 + 2 + 1 + 4 bytes
    found = records(set_dir)
    assert len(found) == SAMPLES
    for record in found:
        weights = record["weights"].astype(np.float64)
        assert np.count_nonzero(weights) >= 1 and abs(weights.sum() - 1) < 2e-3  # counts / 10, float16
        assert np.allclose(weights * 10, np.round(weights * 10), atol=1e-2)
    result = transferset("verify", set_dir, cwd=job)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def test_verify_finds_a_tampered_weight(job, tmp_path) -> None:
    """Weights that are not counts of k draws (a set drawn from p alone) are a problem."""
    import shutil

    copy_dir = tmp_path / "mix"
    shutil.copytree(job / "sets" / "mix", copy_dir)
    shard = local_shard(copy_dir, 0)
    member = dict(fmt.iter_tar(shard))[fmt.sample_key(0, 3)]["sampled.npy"]
    raw = fmt.decode_npy(member)
    raw["weight"][0] = raw["weight"][0] * 2
    blob = shard.read_bytes()
    shard.write_bytes(blob.replace(member, fmt.encode_npy(raw), 1))  # same size, in place
    result = transferset("verify", copy_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert "weights are not counts of 10 draws" in result.stdout


def test_inspect_reports_bytes_and_the_estimate_kl(job) -> None:
    set_dir = job / "sets" / "mix"
    result = transferset("inspect", set_dir, "--json", cwd=job)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["target_bytes_per_sample"] == 57 and stats["dense_float16_bytes_per_sample"] == 20
    member = next(fmt.iter_tar(local_shard(set_dir, 0)))[1]["sampled.npy"]
    assert stats["target_npy_bytes_per_sample"] == len(member) > 57  # with its .npy header
    assert 1 <= stats["sampled_classes_mean"] <= 10
    assert stats["sampled_weight_sum_mean"] == pytest.approx(1.0, abs=2e-3)
    assert stats["target_kl_mean"] >= 0 and stats["target_kl_source"] == "teachers"
    text = transferset("inspect", set_dir, cwd=job).stdout
    assert "sampled targets: 10 draws at temperature 4" in text and "dense estimate" in text


def test_the_student_learns_from_the_weights(job) -> None:
    """The first step's logged loss is the sampled estimate on the whole set, with the run's
    initial model — not the KL to the dense estimate, which differs by much more than rounding."""
    set_dir, run_dir = job / "sets" / "mix", job / "students" / "kd" / "seed-0"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r["loss"] for r in rows if r.get("kind") == "train" and r["step"] == 1)
    seed = json.loads((run_dir / "spec.json").read_text())["seed"]
    source = load_source(SourceConfig(kind="digits", pad=1), "train")
    torch.manual_seed(seed)  # what student.build does before it builds the model
    model = build_model("tiny_cnn", source.shape[2], 10, {"width": 4}).train()
    spec = source_input_spec(source)
    found = records(set_dir)
    images = torch.from_numpy(np.stack([r["image"] for r in found])).permute(0, 3, 1, 2).float() / 255.0
    x = (images - torch.tensor(spec["mean"]).view(1, -1, 1, 1)) / torch.tensor(spec["std"]).view(1, -1, 1, 1)
    estimate = torch.from_numpy(np.stack([r["logp"] for r in found]))
    weights = torch.from_numpy(np.stack([r["weights"] for r in found]))
    labels = torch.full((len(found),), -1)
    with torch.no_grad():
        z = model(x)
        sampled = kd_loss(z, estimate, labels, TEMPERATURE, 1.0, weights=weights,
                          sampled=torch.ones(len(found), dtype=torch.bool)).item()
        dense = kd_loss(z, estimate, labels, TEMPERATURE, 1.0).item()
    assert logged == pytest.approx(sampled, rel=1e-4)
    assert abs(sampled - dense) > 100 * 1e-4 * abs(sampled)
    picked = json.loads((job / "students" / "kd_pick" / "seed-0" / "result.json").read_text())
    assert picked["steps"] == 3 and 0 <= picked["accuracy"] <= 1
    # The trainer refuses a student at another temperature (reweighting would need the full p).
    opened = open_transfer_sets([(str(set_dir), 1.0)])
    assert opened[0].sampled_temperature == TEMPERATURE
    with pytest.raises(UserError, match="drawn at temperature 4, the student's kd.temperature is 2"):
        check_sampled_temperature(opened, 2.0)


def bad(**targets) -> dict:
    raw = copy.deepcopy(JOB)
    raw["sets"]["mix"]["targets"] = targets
    return raw


@pytest.mark.parametrize(("raw", "message"), [
    (bad(kind="sampled", k=0), "sets.mix.targets.k: Input should be greater than or equal to 1"),
    (bad(kind="topk", k=10, temperature=2.0), "temperature: only for kind 'sampled'"),
    (bad(kind="sampled", k=10, uniform=1.0), "sets.mix.targets.uniform: Input should be less than 1"),
    (bad(kind="sampled", k=10, temperature=2.0), "students.kd.kd.temperature is 4 but set 'mix' draws its "
                                                 "sampled targets at temperature 2"),
], ids=["k0", "temperature-for-topk", "uniform-1", "student-temperature"])
def test_bad_configs_stop_with_one_line(tmp_path, raw, message) -> None:
    config = write_config(tmp_path / "job.yaml", raw)
    before = tree(tmp_path)
    result = transferset("run", config, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and tree(tmp_path) == before


def test_sampled_targets_for_a_regression_set_stop_with_one_line(tmp_path) -> None:
    raw = yaml.safe_load((ROOT / "examples" / "gaze.yaml").read_text())
    raw["sets"]["mix"]["targets"] = {"kind": "sampled", "k": 10}
    config = write_config(tmp_path / "gaze.yaml", raw)
    before = tree(tmp_path)
    result = transferset("plan", config, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: targets.kind: sampled-class targets are for classification; a regression set "
                      "stores dense mu and logvar (remove targets.kind)"]
    assert "Traceback" not in result.stderr and tree(tmp_path) == before
