"""The shard contract: deterministic tar bytes, lossless round trips, damage detection."""

import io
import tarfile

import numpy as np
import pytest

from pipeline import format as fmt


def make_samples(n=5, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n):
        logits = rng.normal(size=classes)
        logp = logits - np.log(np.exp(logits).sum())
        samples.append(fmt.Sample(
            key=fmt.sample_key(3, index),
            image=rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8),
            logp=logp,
            meta={"key": fmt.sample_key(3, index), "lam": float(rng.uniform())},
            label=index if index % 2 else None,
        ))
    return samples


def test_tar_bytes_are_deterministic_and_order_free():
    samples = make_samples()
    first = fmt.tar_bytes(samples)
    assert first == fmt.tar_bytes(list(reversed(samples)))
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_round_trip_is_lossless_except_float16_targets():
    samples = make_samples()
    decoded = {key: fmt.decode_fields(fields) for key, fields in fmt.iter_tar(fmt.tar_bytes(samples))}
    assert list(decoded) == [s.key for s in samples]
    for sample in samples:
        out = decoded[sample.key]
        assert np.array_equal(out["image"], sample.image)
        assert out["meta"] == sample.meta
        assert out["logp"].dtype == np.float16
        np.testing.assert_allclose(out["logp"], sample.logp, atol=4e-3)
        assert abs(np.exp(out["logp"].astype(np.float64)).sum() - 1) < 1e-2
        assert out["label"] == (sample.label if sample.label is not None else -1)


def test_keys_with_dots_are_refused():
    bad = make_samples(1)[0]
    with pytest.raises(fmt.FormatError, match="contains a dot"):
        fmt.encode_sample(fmt.Sample(key="a.b", image=bad.image, logp=bad.logp, meta={}))


def test_logp_floor_keeps_float16_finite():
    stored = fmt.quantize_logp(np.array([0.0, -np.inf, -1e9]))
    assert np.isfinite(stored).all()


def test_truncated_tar_is_a_format_error():
    data = fmt.tar_bytes(make_samples(4))
    with pytest.raises(fmt.FormatError):
        list(fmt.iter_tar(data[: len(data) // 2]))


def test_atomic_write_leaves_no_temp_and_replaces_whole(tmp_path):
    target = tmp_path / "shards" / fmt.shard_name(0)
    fmt.atomic_write(target, b"one")
    fmt.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert fmt.committed_shards(tmp_path) == {0: str(target)}
