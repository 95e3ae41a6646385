"""The training loop on digits: ERM and KD learn, outputs are complete and consistent, runs repeat."""

import json
import math

import numpy as np
import pytest
import torch
from transfer_fixtures import write_set

from core.config import KDConfig, ModelConfig, SourceConfig, TrainConfig
from core.errors import UserError
from core.models import load_model, read_checkpoint
from core.records.format import sha256_file
from core.sources import load_source
from student.evaluate import accuracy, predict_probs
from student.train import TrainRequest, log_interval, lr_factor, train_model

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


def run(digits, out_dir, *, objective="erm", sets=(), seed=0, progress=None, kd=None, **train):
    train_source, test_source = digits
    cfg = TrainConfig(**{"steps": 150, "batch_size": 64, "lr": 0.05, "num_workers": 0, **train})
    request = TrainRequest(name="m", model=MODEL, train=cfg, objective=objective,
                           kd=kd or KDConfig(temperature=4.0, alpha=0.5), sets=list(sets), out_dir=out_dir, seed=seed)
    return train_model(request, train_source, test_source, progress)


def rows(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == kind]


def test_erm_learns_digits_and_writes_consistent_outputs(digits, tmp_path):
    lines = []
    result = run(digits, tmp_path, eval_every=50, cutmix=0.3, progress=lines.append)
    assert result["accuracy"] > 0.6  # chance is 0.1
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert set(result) == {"name", "objective", "accuracy", "steps", "seconds", "samples_per_s", "parameters",
                           "checkpoint_sha256", "top5", "ece", "seen", "images_per_batch"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "state.pt").exists()  # a finished run leaves no resumable state
    assert result["steps"] == 150 and result["objective"] == "erm" and result["samples_per_s"] > 0

    train_rows = rows(tmp_path, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 151))
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train_rows)
    assert train_rows[0]["lr"] == pytest.approx(0.05) and train_rows[-1]["lr"] < 0.001  # cosine
    assert np.mean([r["loss"] for r in train_rows[-20:]]) < np.mean([r["loss"] for r in train_rows[:20]])
    evals = rows(tmp_path, "eval")
    assert [r["step"] for r in evals] == [50, 100, 150] and evals[-1]["accuracy"] == result["accuracy"]
    last = evals[-1]
    assert last["accuracy"] <= last["top5"] <= 1.0 and 0.0 <= last["ece"] <= 1.0 and last["nll"] > 0
    per_class = last["per_class"]
    counts = np.bincount(digits[1].labels, minlength=10)
    assert len(per_class) == 10
    assert np.dot(per_class, counts) / counts.sum() == pytest.approx(last["accuracy"])
    assert len(lines) == 10 and lines[-1].startswith("m: step 150/150 loss ")
    assert lines[-1].endswith("samples/s")

    assert sha256_file(tmp_path / "model.pt") == result["checkpoint_sha256"]
    model, payload = load_model(tmp_path / "model.pt", outputs=10)
    test = digits[1]
    assert accuracy(predict_probs([model], [payload["input"]], test), test.labels) == result["accuracy"]
    assert payload["input"]["size"] == [8, 8] and payload["input"]["channels"] == 1
    assert payload["train"]["objective"] == "erm" and payload["train"]["seed"] == 0
    assert payload["train"]["cutmix"] == 0.3 and payload["arch_kwargs"] == {"width": 8}


def test_kd_from_a_transfer_set_learns_digits(digits, smoothed_set, tmp_path):
    result = run(digits, tmp_path, objective="kd", sets=[(smoothed_set, 1.0)], num_workers=1)
    assert result["accuracy"] > 0.6 and result["objective"] == "kd"
    assert len(rows(tmp_path, "train")) == 150
    assert read_checkpoint(tmp_path / "model.pt")["train"]["kd"] == {
        "temperature": 4.0, "alpha": 0.5, "pick": None, "regression_loss": "gaussian_kl", "online_mix": 0.0}


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


def test_multistep_schedule_scales_with_the_run():
    cfg = TrainConfig(steps=200, schedule="multistep", milestones=[0.5, 0.75], gamma=0.2, warmup_steps=0)
    assert [lr_factor(s, cfg) for s in (0, 99, 100, 149, 150, 199)] == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])


def test_schedule_and_log_interval():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1.0)
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, cfg) == 1.0 and lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(109, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert log_interval(150) == 1 and log_interval(1000) == 1 and log_interval(1001) == 2


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(digits, smoothed_set, tmp_path):
    """Interrupted mid-epoch (KD with pick from shards, a worker process, states every 5 steps,
    items of 3 batches: the resumed stream starts inside an item), then resumed."""
    kw = dict(objective="kd", sets=[(smoothed_set, 1.0)], steps=40, checkpoint_steps=5, num_workers=1,
              batches_per_transfer=3, shuffle_window=100, seed=5)
    pick = KDConfig(temperature=4.0, alpha=0.5, pick={"ratio": 2.0})
    whole = run(digits, tmp_path / "whole", kd=pick, **kw)

    def interrupt(line):
        if "step 28/40" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(digits, tmp_path / "cut", kd=pick, progress=interrupt, **kw)
    assert (tmp_path / "cut" / "state.pt").is_file()
    lines = []
    resumed = run(digits, tmp_path / "cut", kd=pick, progress=lines.append, **kw)
    assert lines[0].endswith("resuming at step 25 from " + str(tmp_path / "cut" / "state.pt"))
    first = read_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    second = read_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert resumed["checkpoint_sha256"] == whole["checkpoint_sha256"]
    assert resumed["seen"] == whole["seen"] and whole["seen"][0]["trained"] == 40 * 64  # counted across the resume
    assert whole["seen"][0]["distinct_samples"] == len(digits[0])  # 40 × 128 candidates: every sample read
    steps = [r["step"] for r in rows(tmp_path / "cut", "train")]
    assert steps == list(range(1, 41))  # no missing, no duplicate rows
    ratios = [r["pick_kl_ratio"] for r in rows(tmp_path / "cut", "train")]
    assert all(r >= 1.0 for r in ratios)


def test_a_changed_config_does_not_resume_a_foreign_state(digits, tmp_path):
    def interrupt(line):
        if "step 21/" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(digits, tmp_path, steps=30, checkpoint_steps=10, progress=interrupt)
    lines = []
    run(digits, tmp_path, steps=30, checkpoint_steps=10, lr=0.04, progress=lines.append)
    assert not any("resuming" in line for line in lines)


# Width 4: thin enough that the trainer turns oneDNN off on the CPU (student/cpu_kernels.py); on
# an AMD EPYC (AVX2) with one thread these runs corrupted the heap inside oneDNN before that.
SG_MODEL = ModelConfig(arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 4, "survival": 0.5})


def test_thin_models_train_without_onednn_on_the_cpu():
    from core.models import build_model
    from student.cpu_kernels import is_thin, safe_cpu_kernels

    thin, wide = (build_model("resnet_cifar", 1, 10, {"depth": 8, "width": w}) for w in (4, 8))
    assert is_thin(thin) and not is_thin(wide)
    with safe_cpu_kernels(thin, torch.device("cpu")):
        assert not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled == torch.backends.mkldnn.is_available()
    with safe_cpu_kernels(wide, torch.device("cpu")):
        assert torch.backends.mkldnn.enabled == torch.backends.mkldnn.is_available()


def test_self_guidance_trains_a_stochastic_depth_resnet(digits, tmp_path):
    model = SG_MODEL
    train_source, test_source = digits
    cfg = TrainConfig(steps=60, batch_size=64, num_workers=0, self_guidance={"weight": 0.25, "temperature": 3.0})
    result = train_model(TrainRequest(name="sg", model=model, train=cfg, out_dir=tmp_path, seed=0),
                         train_source, test_source)
    assert result["accuracy"] > 0.3
    with pytest.raises(UserError, match="self_guidance needs a stochastic-depth model"):
        train_model(TrainRequest(name="sg", model=MODEL, train=TrainConfig(steps=5, self_guidance={}),
                                 out_dir=tmp_path / "no", seed=0), train_source, test_source)
    assert not (tmp_path / "no").exists()


def test_kd_skips_a_damaged_shard_when_asked_and_counts_it(digits, tmp_path):
    train_source, _ = digits
    set_dir = tmp_path / "set"
    probs = np.full((len(train_source), 10), 0.01)
    probs[np.arange(len(train_source)), train_source.labels] = 0.91
    paths = write_set(set_dir, train_source.images(), np.log(probs), [None] * len(train_source), 256)
    data = bytearray(paths[1].read_bytes())
    data[2000:2400] = bytes(400)  # garble a member in the middle, same size
    paths[1].write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"transfer shard {paths[1]} is damaged"):
        run(digits, tmp_path / "strict", objective="kd", sets=[(str(set_dir), 1.0)], steps=40)
    result = run(digits, tmp_path / "skip", objective="kd", sets=[(str(set_dir), 1.0)], steps=40,
                 on_bad_shard="skip")
    assert result["shards_skipped"] == 1
    assert rows(tmp_path / "skip", "train")[-1]["shards_skipped"] == 1


def test_self_guidance_with_kd_and_clipping_on_a_student(digits, smoothed_set, tmp_path):
    model = SG_MODEL
    train_source, test_source = digits
    cfg = TrainConfig(steps=60, batch_size=64, num_workers=0, clip_grad_norm=0.5, schedule="multistep",
                      self_guidance={"weight": 0.25, "temperature": 3.0})
    request = TrainRequest(name="sgkd", model=model, train=cfg, objective="kd", kd=KDConfig(temperature=4.0, alpha=0.9),
                           sets=[(smoothed_set, 1.0)], out_dir=tmp_path, seed=0)
    result = train_model(request, train_source, test_source)
    assert result["accuracy"] > 0.3
    train_rows = rows(tmp_path, "train")
    assert all(r["grad_norm"] > 0 for r in train_rows)  # the norm before clipping is logged
    assert sorted({round(r["lr"], 10) for r in train_rows}) == pytest.approx([0.0005, 0.005, 0.05])


def test_tensorboard_without_the_package_is_a_clear_error(digits, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="train.tensorboard: the tensorboard package is not installed"):
            run(digits, tmp_path / "out", steps=5, tensorboard=True)
        assert not (tmp_path / "out").exists()
    else:
        run(digits, tmp_path / "out", steps=5, tensorboard=True)
        assert any((tmp_path / "out" / "tensorboard").iterdir())
