"""Ensemble targets against direct formulas, the member input contract, and invalid samples
(no Ray: the teacher and writer stages are plain code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import plan_in
from torch.nn import functional as F

from core.config import SetConfig, SourceConfig, sampler_config
from core.models import TinyCNN, input_spec, save_checkpoint
from core.records import format as fmt
from core.samplers import apply_params
from core.sets import index as sx
from core.sources import load_source
from core.store import storage
from core.tasks.classification import ensemble_targets
from stages.teachers import Ensemble
from stages.writer import make_shard, summary_from_shard, write_shard

DIGITS = SourceConfig(kind="digits")


def direct(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of softmaxes, Ĥ and normalised mutual information, straight from the definitions."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # [M, N, C]
    mean = p.mean(0)
    log_c = math.log(logits.shape[-1])
    h_mean = -(mean * np.log(mean)).sum(-1)
    h_members = -(p * np.log(p)).sum(-1).mean(0)
    return mean, h_mean / log_c, (h_mean - h_members) / log_c


def test_targets_match_direct_formulas() -> None:
    logits = np.random.default_rng(0).normal(0, 3, size=(4, 50, 10)).astype(np.float32)
    out = ensemble_targets(torch.from_numpy(logits))
    mean, entropy, disagreement = direct(logits)
    assert out.logp.dtype == np.float32 and out.logp.shape == (50, 10)
    np.testing.assert_allclose(np.exp(out.logp), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.entropy, entropy, atol=1e-6)
    np.testing.assert_allclose(out.disagreement, disagreement, atol=1e-6)
    np.testing.assert_array_equal(out.argmax, mean.argmax(-1))
    assert out.valid.all()


def test_targets_are_normalised_and_bounded() -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 30, size=(3, 200, 7)).astype(np.float32))
    logits[:, 0] = torch.tensor([1e4, -1e4, 0, 0, 0, 0, 0])  # saturated, identical members
    out = ensemble_targets(logits)
    np.testing.assert_allclose(np.exp(out.logp.astype(np.float64)).sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(out.logp).all()
    assert ((out.entropy >= 0) & (out.entropy <= 1)).all()
    assert ((out.disagreement >= 0) & (out.disagreement <= out.entropy + 1e-6)).all()
    assert out.disagreement[0] == pytest.approx(0.0, abs=1e-6)
    single = ensemble_targets(logits[:1])
    np.testing.assert_allclose(single.disagreement, 0.0, atol=1e-6)  # one member: no epistemic part
    uniform = ensemble_targets(torch.zeros(2, 3, 7))
    np.testing.assert_allclose(uniform.entropy, 1.0, atol=1e-6)


def test_non_finite_member_output_marks_only_that_sample_invalid() -> None:
    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(3, 6, 5)).astype(np.float32))
    bad = logits.clone()
    bad[1, 2, 3] = float("nan")
    bad[0, 4, 0] = float("inf")
    out, ref = ensemble_targets(bad), ensemble_targets(logits)
    np.testing.assert_array_equal(out.valid, [True, True, False, True, False, True])
    keep = out.valid
    np.testing.assert_array_equal(out.logp[keep], ref.logp[keep])
    assert np.isfinite(out.logp).all() and np.isfinite(out.entropy).all()


def test_members_see_their_own_input_contract(tmp_path) -> None:
    """Each member gets /255, its own mean/std, and an antialiased resize to its input size."""
    torch.manual_seed(0)
    small, big = TinyCNN(1, 10, width=4).eval(), TinyCNN(3, 10, width=4).eval()
    save_checkpoint(tmp_path / "a.pt", small, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10,
                    input=input_spec(8, 8, 1, [0.3], [0.2]))
    save_checkpoint(tmp_path / "b.pt", big, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10,
                    input=input_spec(16, 16, 3, [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]))
    images = load_source(DIGITS, "train").images(np.arange(40))
    ensemble = Ensemble([tmp_path / "a.pt", tmp_path / "b.pt"], 10, device="cpu", threads=1, batch_size=16)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        za = small((x - 0.3) / 0.2)
        xb = F.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear", antialias=True)
        mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
        std = torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1)
        zb = big((xb - mean) / std)
    expected = ensemble_targets(torch.stack([za, zb]))
    out = ensemble.predict(images)
    np.testing.assert_allclose(out.logp, expected.logp, atol=1e-5)
    np.testing.assert_allclose(out.entropy, expected.entropy, atol=1e-5)
    whole = Ensemble([tmp_path / "a.pt", tmp_path / "b.pt"], 10, device="cpu", batch_size=512).predict(images)
    np.testing.assert_allclose(whole.logp, out.logp, atol=1e-5)  # batching does not change targets


def test_writer_skips_invalid_samples_and_summary_round_trips(tmp_path, teachers) -> None:
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=40, samples_per_shard=16)
    spec = plan_in(tmp_path, set_cfg, teachers, seed=7).spec
    images, drawn, labels = make_shard(spec, 2)
    assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8 and (labels == -1).all()
    source = load_source(DIGITS, "train")
    for image, (kind, p) in zip(images, drawn, strict=True):
        assert kind == "mix"
        np.testing.assert_array_equal(apply_params(kind, p, source), image)
    ensemble = Ensemble(teachers, 10, device="cpu")
    logits = ensemble.member_logits(images)
    logits[0, 5, 1] = float("nan")
    summary = write_shard(spec, 2, images, drawn, labels, ensemble_targets(logits))
    assert (summary.samples, summary.rejected, summary.planned) == (7, 1, 8)
    assert summary.name == sx.shard_name(2, count=8)  # the short last shard's name says what it holds
    shard = tmp_path / sx.SHARDS_DIR / summary.name
    keys = [key for key, _ in fmt.iter_tar(shard)]
    assert keys == [fmt.sample_key(2, i) for i in range(8) if i != 5]
    rebuilt = summary_from_shard(shard, spec.task, planned=8)
    assert rebuilt.to_json() == summary.to_json()
    assert not [p for p in (tmp_path / sx.SHARDS_DIR).iterdir() if storage.TMP_MARKER in p.name]
