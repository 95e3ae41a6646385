"""Top-k targets (compress → shard → dense reconstruction) and uncertainty-targeted selection."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import plan_in
from set_files import local_shard, write_index
from transfer_fixtures import log_softmax

from core.config import SelectConfig, SetConfig, SourceConfig, TargetConfig, sampler_config
from core.errors import FormatError
from core.records import format as fmt
from core.sets import index as sx
from core.store import storage
from core.tasks import CLASSIFY, decode_fields
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

DIGITS = SourceConfig(kind="digits")


def peaked(n: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return log_softmax(rng.normal(0, 4, size=(n, classes)))


def test_topk_record_is_small_and_reconstructs_a_distribution() -> None:
    logp = peaked(200, 100)
    for row in logp:
        record = fmt.compress_topk(row, 10)
        assert record.dtype.itemsize == fmt.target_payload_bytes(100, 10) == 36  # 20 + 10 + 2 + 4 bytes
        top = np.argsort(-row)[:10]
        np.testing.assert_array_equal(record["index"], top)
        dense = fmt.reconstruct_logp(record)
        assert dense.dtype == np.float32 and dense.shape == (100,)
        assert abs(np.exp(dense.astype(np.float64)).sum() - 1) < 1e-5
        np.testing.assert_allclose(dense[top], row[top], atol=5e-3)  # float16 top-k, renormalised
        tail = np.setdiff1d(np.arange(100), top)
        np.testing.assert_allclose(np.exp(dense[tail]).sum(), np.exp(row[tail]).sum(), rtol=5e-3)  # float16 log
        assert np.ptp(dense[tail]) == 0  # the tail mass is spread evenly
    # k >= C stores everything: reconstruction is the float16 vector, renormalised.
    exact = fmt.reconstruct_logp(fmt.compress_topk(logp[0, :8], 8))
    np.testing.assert_allclose(exact, logp[0, :8] - np.log(np.exp(logp[0, :8]).sum()), atol=5e-3)


def test_kl_of_topk_shrinks_with_k() -> None:
    logp = peaked(100, 100, seed=1)
    kls = [float(np.mean([fmt.kl_divergence(r, fmt.stored_logp(r, k)) for r in logp])) for k in (1, 5, 10, 50)]
    assert all(a > b for a, b in zip(kls, kls[1:], strict=False)) and kls[-1] < 1e-3
    assert all(kl >= 0 for kl in kls)


def test_topk_member_decodes_with_plain_numpy_no_pickle() -> None:
    logp = peaked(1, 300)[0]
    key = fmt.sample_key(0, 0)
    sample = CLASSIFY.sample(key, np.zeros((4, 4, 1), np.uint8), {"key": key}, logp,
                             targets=TargetConfig(kind="topk", k=7))
    fields = fmt.encode_sample(sample)
    assert "logp.npy" not in fields and "topk.npy" in fields
    raw = np.load(io.BytesIO(fields["topk.npy"]), allow_pickle=False)
    assert raw["index"].dtype == np.uint16 and raw["classes"] == 300  # 300 classes need 16-bit indices
    decoded = decode_fields(fields)
    np.testing.assert_allclose(decoded["logp"], fmt.stored_logp(logp, 7))
    with pytest.raises(FormatError, match="missing members"):
        decode_fields({"png": fields["png"], "json": fields["json"]})


def test_writer_records_the_kl_it_costs(teachers, tmp_path) -> None:
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=64, samples_per_shard=64,
                        targets={"kind": "topk", "k": 3})
    spec = plan_in(tmp_path, set_cfg, teachers).spec
    images, drawn, labels = make_shard(spec, 0)
    output = Ensemble(teachers, 10, device="cpu").predict(images)
    write_shard(spec, 0, images, drawn, labels, output)
    records = [decode_fields(f) for _, f in fmt.iter_tar(local_shard(tmp_path, 0))]
    for record, full in zip(records, output.logp, strict=True):
        assert record["meta"]["target_kl"] == pytest.approx(float(fmt.kl_divergence(full, record["logp"])),
                                                            rel=1e-3, abs=1e-7)


def test_select_keeps_the_most_uncertain_candidates(teachers, tmp_path) -> None:
    select = SelectConfig(by="entropy", keep=0.25)
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=40, samples_per_shard=40, select=select)
    spec = plan_in(tmp_path, set_cfg, teachers).spec
    images, drawn, labels = make_shard(spec, 0)
    assert len(drawn) == 160  # 40 / 0.25 candidates
    output = Ensemble(teachers, 10, device="cpu").predict(images)
    summary = write_shard(spec, 0, images, drawn, labels, output, count=40)
    assert (summary.samples, summary.rejected, summary.planned) == (40, 0, 40)
    records = [decode_fields(f) for _, f in fmt.iter_tar(local_shard(tmp_path, 0))]
    kept = [r["meta"]["candidate"] for r in records]
    assert kept == sorted(kept) and [r["meta"]["index"] for r in records] == list(range(40))
    dropped = np.setdiff1d(np.arange(160), kept)
    assert output.entropy[kept].min() >= output.entropy[dropped].max()
    for record in records:
        assert record["meta"]["params"] == drawn[record["meta"]["candidate"]][1]
    again = write_shard(spec.model_copy(update={"out_dir": str(tmp_path / "again")}), 0, images, drawn, labels,
                        output, count=40)
    assert again.sha256 == summary.sha256
    by_disagreement = set_cfg.model_copy(update={"select": SelectConfig(by="disagreement", keep=0.25)})
    by_mi = write_shard(spec.model_copy(update={"out_dir": str(tmp_path / "mi"), "set_cfg": by_disagreement}), 0,
                        images, drawn, labels, output, count=40)
    mi_kept = [r["candidate"] for r in (json_rows(tmp_path / "mi"))]
    assert output.disagreement[mi_kept].min() >= output.disagreement[np.setdiff1d(np.arange(160), mi_kept)].max()
    assert by_mi.sha256 != summary.sha256


def json_rows(set_dir) -> list[dict]:
    return [decode_fields(f)["meta"] for _, f in fmt.iter_tar(local_shard(set_dir, 0))]


def test_student_loader_reads_topk_sets_unchanged(tmp_path) -> None:
    """The trainer's streaming loader gets dense targets from top-k shards (decode_fields reconstructs them)."""
    from student.stream import transfer_loader

    logp = peaked(48, 20, seed=3)
    samples = [CLASSIFY.sample(fmt.sample_key(0, i), np.full((4, 4, 1), i, np.uint8), {"key": fmt.sample_key(0, i)},
                               logp[i], targets=TargetConfig(kind="topk", k=4)) for i in range(48)]
    data = fmt.tar_bytes(samples)
    storage.atomic_write(sx.shard_url(tmp_path, 0), data)
    write_index(tmp_path, sx.SetIndex(num_classes=20, classes=[str(c) for c in range(20)], shards=[
        sx.ShardEntry(name=sx.shard_name(0), samples=48, bytes=len(data), sha256=fmt.sha256_bytes(data))]))
    batch = next(iter(transfer_loader([(str(tmp_path), 1.0)], 16, seed=0, num_workers=0, shuffle_window=1)))
    assert batch["target"].shape == (16, 20)
    for image, target in zip(batch["image"], batch["target"], strict=True):
        expected = fmt.stored_logp(logp[int(image[0, 0, 0])], 4)
        np.testing.assert_allclose(target.numpy(), expected, atol=1e-6)
        assert abs(float(target.double().exp().sum()) - 1) < 1e-5
