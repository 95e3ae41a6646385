"""The shard contract: deterministic tar bytes, lossless round trips, damage detection."""

import io
import tarfile

import numpy as np
import pytest

from core.records import format as fmt
from core.sets import index as sx
from core.store import storage
from core.tasks import CLASSIFY, decode_fields


def make_targets(n=5, classes=10, seed=0):
    """(key, image, meta, logp, label) of ``n`` classification records."""
    rng = np.random.default_rng(seed)
    made = []
    for index in range(n):
        logits = rng.normal(size=classes)
        made.append((fmt.sample_key(3, index), rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8),
                     {"key": fmt.sample_key(3, index), "lam": float(rng.uniform())},
                     logits - np.log(np.exp(logits).sum()), index if index % 2 else None))
    return made


def make_samples(n=5, classes=10, seed=0):
    return [CLASSIFY.sample(*made) for made in make_targets(n, classes, seed)]


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
    made = make_targets()
    decoded = {key: decode_fields(fields)
               for key, fields in fmt.iter_tar(fmt.tar_bytes([CLASSIFY.sample(*m) for m in made]))}
    assert list(decoded) == [key for key, *_ in made]
    for key, image, meta, logp, label in made:
        out = decoded[key]
        assert np.array_equal(out["image"], image)
        assert out["meta"] == meta
        assert out["logp"].dtype == np.float16 and out["target"] is out["logp"]
        np.testing.assert_allclose(out["logp"], logp, atol=4e-3)
        assert abs(np.exp(out["logp"].astype(np.float64)).sum() - 1) < 1e-2
        assert out["label"] == (label if label is not None else -1)


def test_keys_with_dots_are_refused():
    _, image, _, logp, _ = make_targets(1)[0]
    with pytest.raises(fmt.FormatError, match="contains a dot"):
        fmt.encode_sample(CLASSIFY.sample("a.b", image, {}, logp))


def test_logp_floor_keeps_float16_finite():
    stored = fmt.quantize_logp(np.array([0.0, -np.inf, -1e9]))
    assert np.isfinite(stored).all()


def test_truncated_tar_is_a_format_error():
    data = fmt.tar_bytes(make_samples(4))
    with pytest.raises(fmt.FormatError):
        list(fmt.iter_tar(data[: len(data) // 2]))


def test_atomic_write_leaves_no_temp_and_replaces_whole(tmp_path):
    target = tmp_path / "shards" / sx.shard_name(0)
    storage.atomic_write(target, b"one")
    storage.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert sx.committed_shards(tmp_path) == {target.name: str(target)}
