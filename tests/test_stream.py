"""The student stream: resumable epochs, disjoint readers per rank and worker, damaged shards
skipped and counted, the real split mixed in, class-balanced draws."""

import itertools

import numpy as np
import pytest
import torch
from transfer_fixtures import log_softmax, write_set

from core.errors import UserError
from student.data import SplitSampler
from student.shards import DecodedCache, decode_shard, open_transfer_sets
from student.stream import RealPart, StreamPlan, TransferLoader, consumer_part, transfer_loader


def make_set(set_dir, n=256, per_shard=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # make every image distinct
    images[:, 0, 1, 0] = np.arange(n) // 256
    logp = log_softmax(rng.normal(size=(n, classes)))
    paths = write_set(set_dir, images, logp, [i % classes if i % 2 else None for i in range(n)], per_shard)
    return paths, images


def keys(batch):
    return [bytes(img.numpy().tobytes()) for img in batch["image"]]


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_started_at_an_epoch_boundary_continues_the_uninterrupted_one(tmp_path, num_workers):
    make_set(tmp_path / "a")
    common = dict(batch_size=16, seed=3, num_workers=num_workers, shuffle_buffer=40, epoch_steps=6,
                  batches_per_item=4)
    whole = take(transfer_loader([(str(tmp_path / "a"), 1.0)], **common), 18)
    resumed = take(transfer_loader([(str(tmp_path / "a"), 1.0)], start_step=6, **common), 12)
    for a, b in zip(whole[6:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
        assert torch.equal(a["label"], b["label"])
    assert not torch.equal(whole[0]["image"], whole[6]["image"])


def test_ranks_and_workers_read_disjoint_shards(tmp_path):
    make_set(tmp_path / "a", n=512, per_shard=32)  # 16 shards for 2 ranks × 2 workers
    seen = {}
    for rank in (0, 1):
        loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 16, seed=0, num_workers=2, epoch_steps=50,
                                 world_size=2, rank=rank, shuffle_buffer=32)
        batches = take(loader, 40)
        seen[rank] = ({k for b in batches for k in keys(b)}, set(loader.visited))
    assert seen[0][0].isdisjoint(seen[1][0]) and seen[0][1].isdisjoint(seen[1][1])
    for rank in (0, 1):  # rank r's two workers are readers 2r and 2r + 1 of 4: shards i with i mod 4 in those
        shard_ids = {int(url[-10:-4]) for url in seen[rank][1]}
        assert {i % 4 for i in shard_ids} <= {2 * rank, 2 * rank + 1} and len(shard_ids) >= 6


def test_a_set_with_fewer_shards_than_readers_is_split_by_sample():
    assert consumer_part(3, (10, 10, 10), consumer=1, consumers=4) == [(0, 1, 4), (1, 1, 4), (2, 1, 4)]
    assert consumer_part(8, (10,) * 8, consumer=1, consumers=4) == [(1, 0, 1), (5, 0, 1)]


def test_a_damaged_shard_is_skipped_and_counted_when_asked(tmp_path):
    paths, images = make_set(tmp_path / "a", n=128, per_shard=32)
    paths[2].write_bytes(paths[2].read_bytes()[:3000])  # truncated
    sets = [(str(tmp_path / "a"), 1.0)]
    with pytest.raises(UserError, match=rf"transfer shard {paths[2]} is damaged"):
        transfer_loader(sets, 16, seed=0)  # checked before training: size differs from the index
    loader = transfer_loader(sets, 16, seed=0, on_bad_shard="skip", shuffle_buffer=16)
    batches = take(loader, 30)
    good = {images[i].tobytes() for i in range(128) if not 64 <= i < 96}
    assert all(k in good for b in batches for k in keys(b))
    assert set(loader.skipped) == {str(paths[2])}


def test_every_shard_damaged_stops_with_one_line(tmp_path):
    paths, _ = make_set(tmp_path / "a", n=64, per_shard=32)
    for path in paths:
        path.write_bytes(path.read_bytes()[:1000])
    loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 8, seed=0, on_bad_shard="skip")
    with pytest.raises(UserError, match="every shard this reader was given is damaged") as err:
        take(loader, 5)
    assert "\n" not in str(err.value)


def test_real_split_is_mixed_in_by_weight_with_labels_and_no_target(tmp_path):
    make_set(tmp_path / "a", n=128)
    rng = np.random.default_rng(1)
    real_images = rng.integers(0, 256, size=(50, 4, 4, 1), dtype=np.uint8)
    real = RealPart(real_images, np.arange(50) % 4, pad=0, flip=False, weight=1.0)
    opened = open_transfer_sets([(str(tmp_path / "a"), 3.0)])
    loader = TransferLoader(opened, StreamPlan(batch_size=40, seed=0, epoch_steps=100), real)
    batches = take(loader, 25)
    has_target = torch.cat([b["has_target"] for b in batches])
    assert abs((~has_target).float().mean().item() - 0.25) < 0.04
    real_keys = {real_images[i].tobytes(): i % 4 for i in range(50)}
    for batch in batches:
        for image, label, has_target in zip(batch["image"], batch["label"], batch["has_target"], strict=True):
            key = image.permute(1, 2, 0).numpy().tobytes()
            assert (key in real_keys) == (not has_target)
            if not has_target:
                assert label.item() == real_keys[key]


def test_class_balanced_draws_follow_inverse_class_population():
    labels = np.array([0] * 90 + [1] * 10)
    draws = SplitSampler(labels, seed=0, class_balanced=True).draw(20000).numpy()
    share_minority = np.mean(labels[draws] == 1)
    assert abs(share_minority - 0.5) < 0.02
    plain = SplitSampler(labels, seed=0).draw(100).numpy()
    assert sorted(plain.tolist()) == list(range(100))  # one epoch: every image once


def test_decoded_cache_decodes_each_shard_once_and_respects_its_budget(tmp_path):
    paths, images = make_set(tmp_path / "a", n=96, per_shard=32)
    arrays = decode_shard(str(paths[1]), 32, 4)
    assert np.array_equal(arrays.images, images[32:64]) and arrays.target.dtype == np.float32
    cache = DecodedCache(max_bytes=10 * arrays.nbytes)
    for _ in range(3):
        for path in paths:
            cache.get(str(path), 32, 4)
    assert cache.decoded == 3
    small = DecodedCache(max_bytes=arrays.nbytes)
    for path in paths * 2:
        small.get(str(path), 32, 4)
    assert small.decoded == 6 and small.bytes <= arrays.nbytes
