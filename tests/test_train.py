"""The training loop on digits: ERM and KD learn, outputs are complete and consistent, runs repeat."""

import json
import math

import numpy as np
import pytest
import torch
from transfer_fixtures import write_set

from pipeline.config import KDConfig, ModelConfig, SourceConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.format import sha256_file
from pipeline.models import load_model, read_checkpoint
from stages.sources import load_source
from student.evaluate import accuracy, predict_probs
from student.train import log_interval, lr_factor, train_model

MODEL = ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 8})


@pytest.fixture(scope="module")
def digits():
    cfg = SourceConfig(kind="digits")
    return load_source(cfg, "train"), load_source(cfg, "test")


@pytest.fixture(scope="module")
def smoothed_set(digits, tmp_path_factory):
    """A transfer set of the real training images with smoothed one-hot targets; half labelled."""
    train, _ = digits
    set_dir = tmp_path_factory.mktemp("sets") / "real"
    probs = np.full((len(train), 10), 0.1 / 9)
    probs[np.arange(len(train)), train.labels] = 0.9
    labels = [int(y) if i % 2 else None for i, y in enumerate(train.labels)]
    write_set(set_dir, train.images(), np.log(probs), labels, samples_per_shard=256)
    return str(set_dir)


def run(digits, out_dir, *, objective="erm", sets=(), seed=0, progress=None, **train):
    train_source, test_source = digits
    cfg = TrainConfig(**{"steps": 150, "batch_size": 64, "lr": 0.05, "num_workers": 0, **train})
    return train_model(
        name="m", model_cfg=MODEL, train_cfg=cfg, objective=objective,
        kd_cfg=KDConfig(temperature=4.0, alpha=0.5), sets=list(sets), train_source=train_source,
        test_source=test_source, out_dir=out_dir, seed=seed, progress=progress,
    )


def rows(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == kind]


def test_erm_learns_digits_and_writes_consistent_outputs(digits, tmp_path):
    lines = []
    result = run(digits, tmp_path, eval_every=50, cutmix=0.3, progress=lines.append)
    assert result["accuracy"] > 0.6  # chance is 0.1
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert set(result) == {"name", "objective", "accuracy", "steps", "seconds", "samples_per_s", "parameters",
                           "checkpoint_sha256"}
    assert result["steps"] == 150 and result["objective"] == "erm" and result["samples_per_s"] > 0

    train_rows = rows(tmp_path, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 151))
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train_rows)
    assert train_rows[0]["lr"] == pytest.approx(0.05) and train_rows[-1]["lr"] < 0.001  # cosine
    assert np.mean([r["loss"] for r in train_rows[-20:]]) < np.mean([r["loss"] for r in train_rows[:20]])
    evals = rows(tmp_path, "eval")
    assert [r["step"] for r in evals] == [50, 100, 150] and evals[-1]["accuracy"] == result["accuracy"]
    assert len(lines) == 10 and lines[-1].startswith("m: step 150/150 loss ")
    assert lines[-1].endswith("samples/s")

    assert sha256_file(tmp_path / "model.pt") == result["checkpoint_sha256"]
    model, payload = load_model(tmp_path / "model.pt", num_classes=10)
    test = digits[1]
    assert accuracy(predict_probs([model], [payload["input"]], test), test.labels) == result["accuracy"]
    assert payload["input"]["size"] == [8, 8] and payload["input"]["channels"] == 1
    assert payload["train"]["objective"] == "erm" and payload["train"]["seed"] == 0
    assert payload["train"]["cutmix"] == 0.3 and payload["arch_kwargs"] == {"width": 8}


def test_kd_from_a_transfer_set_learns_digits(digits, smoothed_set, tmp_path):
    result = run(digits, tmp_path, objective="kd", sets=[(smoothed_set, 1.0)], num_workers=1)
    assert result["accuracy"] > 0.6 and result["objective"] == "kd"
    assert len(rows(tmp_path, "train")) == 150
    assert read_checkpoint(tmp_path / "model.pt")["train"]["kd"] == {"temperature": 4.0, "alpha": 0.5}


def test_same_seed_gives_identical_weights(digits, smoothed_set, tmp_path):
    def weights(out_dir, **kw):
        run(digits, out_dir, steps=40, **kw)
        return read_checkpoint(out_dir / "model.pt")["state_dict"]

    for kw in ({"objective": "erm", "cutmix": 0.5}, {"objective": "kd", "sets": [(smoothed_set, 1.0)]}):
        first, second = weights(tmp_path / "a", **kw), weights(tmp_path / "b", **kw)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
        other = weights(tmp_path / "c", seed=1, **kw)
        assert not all(torch.equal(first[k], other[k]) for k in first)


def test_adam_with_warmup_and_a_constant_schedule(digits, tmp_path):
    result = run(digits, tmp_path, steps=30, optimizer="adam", lr=0.01, schedule="constant", warmup_steps=10)
    lrs = [r["lr"] for r in rows(tmp_path, "train")]
    assert lrs[:10] == pytest.approx([0.001 * (i + 1) for i in range(10)])
    assert lrs[10:] == pytest.approx([0.01] * 20)
    assert math.isfinite(result["accuracy"])


def test_kd_with_sets_of_another_class_count_is_refused_before_writing(digits, tmp_path):
    set_dir = tmp_path / "three"
    write_set(set_dir, digits[0].images()[:8], np.log(np.full((8, 3), 1 / 3)), [None] * 8, 8)
    with pytest.raises(UserError, match="3 classes, the source has 10"):
        run(digits, tmp_path / "out", objective="kd", sets=[(str(set_dir), 1.0)])
    assert not (tmp_path / "out").exists()


def test_schedule_and_log_interval():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1.0)
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, cfg) == 1.0 and lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(109, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert log_interval(150) == 1 and log_interval(1000) == 1 and log_interval(1001) == 2
