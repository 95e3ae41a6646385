"""The sampled-class target (core/records/sampled_target.py): unbiased on average (Monte-Carlo over the
real per-sample seeds), a deterministic plain-numpy record, and the KD loss that uses its weights.

The tolerance of the unbiasedness test is not tuned: it is Z standard errors of the Monte-Carlo
mean, with the standard error measured from the same N draws (per class and for the norm)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import plan_in
from set_files import local_shard
from transfer_fixtures import log_softmax

from core.config import SetConfig, sampler_config
from core.errors import FormatError
from core.records import format as fmt
from core.records import sampled_target as st
from core.records.target_codec import compress_topk, reconstruct_logp
from core.records.targets import STORED_TARGETS, stored_kind
from core.tasks import CLASSIFY, decode_fields
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard
from student.losses import kd_loss

# Monte-Carlo: N draws, a check at Z standard errors. With C = 100 coordinates a false failure of
# the per-class check has probability about C·P(|N(0,1)| > 5) ≈ 6e-5.
DRAWS, Z = 40_000, 5.0


def flat_mix(classes: int = 100, seed: int = 0) -> np.ndarray:
    """A flat, two-peaked teacher distribution like an XCL-Mix sample's (most mass in the tail)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, classes)
    z[:2] += 2.5
    return log_softmax(z[None])[0]


def sampled_gradients(records: list[np.ndarray], student: torch.Tensor, temperature: float) -> np.ndarray:
    """∂ kd_loss / ∂ z of one sample (logits ``student``) for each stored draw: one batch of
    copies, one backward, the batch mean undone."""
    z = student.repeat(len(records), 1).requires_grad_(True)
    weights = torch.from_numpy(np.stack([st.dense_weights(r) for r in records]))
    estimate = torch.from_numpy(np.stack([st.reconstruct_sampled(r) for r in records]))
    kd_loss(z, estimate, torch.full((len(records),), -1), temperature, 1.0, weights=weights,
            sampled=torch.ones(len(records), dtype=torch.bool)).backward()
    return z.grad.double().numpy() * len(records)


def dense_gradient(logp: np.ndarray, student: torch.Tensor, temperature: float) -> np.ndarray:
    z = student.clone().requires_grad_(True)
    kd_loss(z, torch.from_numpy(logp.astype(np.float32))[None], torch.tensor([-1]), temperature, 1.0).backward()
    return z.grad[0].double().numpy()


@pytest.mark.parametrize(("temperature", "uniform"), [(1.0, 0.0), (4.0, 0.0), (2.0, 0.3)])
def test_expected_gradient_is_the_dense_kd_gradient(temperature, uniform) -> None:
    logp = flat_mix()
    student = torch.from_numpy(np.random.default_rng(1).normal(0, 2, (1, 100)).astype(np.float32))
    dense = dense_gradient(logp, student, temperature)
    records = [st.sample_target(logp, 10, temperature, uniform, st.target_rng(7, 3, i)) for i in range(DRAWS)]
    draws = sampled_gradients(records, student, temperature)
    mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(DRAWS)
    assert (np.abs(mean - dense) <= Z * se + 1e-6).all(), np.max(np.abs(mean - dense) / (se + 1e-12))
    # The norm of the error, against its expected size sqrt(Σ se²) (float16 weights: ≤ 2^-11 relative).
    error, expected = np.linalg.norm(mean - dense), np.sqrt((se ** 2).sum())
    assert error <= 2.0 * expected + 2.0**-11 * np.linalg.norm(dense), (error, expected)
    assert expected / np.linalg.norm(dense) < 0.04  # N draws resolve the gradient to a few %
    # The same test catches a biased target: top-10 on this flat sample is off by many standard errors.
    topk = dense_gradient(reconstruct_logp(compress_topk(logp, 10)), student, temperature)
    assert np.linalg.norm(topk - dense) > 10 * expected


def test_record_is_small_deterministic_and_plain_numpy() -> None:
    logp = flat_mix(seed=2)
    record = st.sample_target(logp, 10, 4.0, 0.0, st.target_rng(0, 1, 2))
    assert record.dtype.itemsize == stored_kind("sampled").payload_bytes(10, 100) == 57  # 10+20+20+2+1+4 bytes
    again = st.sample_target(logp, 10, 4.0, 0.0, st.target_rng(0, 1, 2))
    assert fmt.encode_npy(record) == fmt.encode_npy(again)  # same identity, same bytes
    other = st.sample_target(logp, 10, 4.0, 0.0, st.target_rng(0, 1, 3))
    assert fmt.encode_npy(record) != fmt.encode_npy(other)  # another sample, another draw
    n = int(record["count"])
    index, weight = record["index"][:n], record["weight"][:n].astype(np.float64)
    assert 1 <= n <= 10 and (np.diff(index.astype(int)) > 0).all()
    assert np.round(weight * 10).sum() == 10 and abs(weight.sum() - 1) < 1e-3  # from p alone: counts / K
    np.testing.assert_allclose(record["logp"][:n], logp[index], atol=2e-3)
    assert (record["index"][n:] == 0).all() and (record["weight"][n:] == 0).all()
    assert st.record_problems(record, 10, 0.0) == []
    dense = st.reconstruct_sampled(record)
    assert abs(np.exp(dense.astype(np.float64)).sum() - 1) < 1e-5
    outside = np.setdiff1d(np.arange(100), index)
    np.testing.assert_allclose(np.exp(dense[outside].astype(np.float64)).sum(), np.exp(logp[outside]).sum(), rtol=5e-3)
    # The member reads back with numpy and no pickle; decode gives the weights and the estimate.
    key = fmt.sample_key(0, 0)
    fields = fmt.encode_sample(CLASSIFY.record_sample(key, np.zeros((4, 4, 1), np.uint8), {"key": key},
                                                      {"sampled.npy": fmt.encode_npy(record)}, None))
    assert [t.member for t in STORED_TARGETS.values() if t.member in fields] == ["sampled.npy"]
    raw = np.load(io.BytesIO(fields["sampled.npy"]), allow_pickle=False)
    assert raw.tobytes() == record.tobytes()
    decoded = decode_fields(fields)
    np.testing.assert_array_equal(decoded["weights"][index], record["weight"][:n].astype(np.float32))
    assert decoded["weights"][outside].max() == 0
    np.testing.assert_array_equal(decoded["logp"], dense)


def test_damaged_records_are_found() -> None:
    record = st.sample_target(flat_mix(), 10, 4.0, 0.0, st.target_rng(0, 0, 0))
    assert int(record["count"]) >= 2
    swapped = record.copy()
    swapped["index"][:2] = swapped["index"][1::-1]
    assert "not distinct and ascending" in st.record_problems(swapped, 10, 0.0)[0]
    scaled = record.copy()
    scaled["weight"][0] *= 3
    assert any("counts of 10 draws" in p for p in st.record_problems(scaled, 10, 0.0))
    overfull = record.copy()
    overfull["count"] = 11
    with pytest.raises(FormatError, match="uses 11 of 10 slots"):
        st.dense_weights(overfull)
    with pytest.raises(FormatError, match="sampled-class record"):
        st.reconstruct_sampled(np.zeros(2, dtype=record.dtype))


def test_kd_loss_uses_the_weights_unnormalised() -> None:
    """Sampled rows: −Σ w·log s at τ, times τ²; other rows of the batch keep the dense KL."""
    torch.manual_seed(0)
    z, temperature = torch.randn(3, 5), 2.0
    weights = torch.tensor([[0.0, 0.7, 0.0, 0.5, 0.0], [0.0] * 5, [0.2, 0.0, 0.0, 0.0, 1.1]])
    logp = torch.log_softmax(torch.randn(3, 5), 1)
    sampled = torch.tensor([True, False, True])
    got = kd_loss(z, logp, torch.tensor([-1, -1, -1]), temperature, 1.0, weights=weights, sampled=sampled)
    teacher = torch.log_softmax(logp / temperature, 1)
    student = torch.log_softmax(z / temperature, 1)
    rows = [-(weights[0] * student[0]).sum(), (teacher[1].exp() * (teacher[1] - student[1])).sum(),
            -(weights[2] * student[2]).sum()]
    assert got.item() == pytest.approx((temperature**2 * torch.stack(rows).mean()).item(), rel=1e-6)


def test_writer_draws_from_the_sample_identity(teachers, tmp_path) -> None:
    """Through the real stages: shards of a sampled set are byte-identical when remade, differ with
    the seed, and every record's weights are counts of k draws at the set's temperature."""
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=64, samples_per_shard=64,
                        targets={"kind": "sampled", "k": 10})
    spec = plan_in(tmp_path / "a", set_cfg, teachers).spec
    images, drawn, labels = make_shard(spec, 0)
    output = Ensemble(teachers, 10, device="cpu").predict(images)
    first = write_shard(spec, 0, images, drawn, labels, output)
    again = write_shard(spec.model_copy(update={"out_dir": str(tmp_path / "b")}), 0, images, drawn, labels, output)
    assert first.sha256 == again.sha256
    reseeded = write_shard(spec.model_copy(update={"out_dir": str(tmp_path / "c"), "seed": 1}), 0, images, drawn,
                           labels, output)
    assert reseeded.sha256 != first.sha256
    records = [decode_fields(f) for _, f in fmt.iter_tar(local_shard(tmp_path / "a", 0))]
    for n, record in enumerate(records):
        expected = st.sample_target(output.logp[n], 10, 4.0, 0.0, st.target_rng(spec.seed, 0, n))
        np.testing.assert_array_equal(record["weights"], st.dense_weights(expected))
        assert record["meta"]["target_kl"] >= 0
