"""The student stream: epochs without replacement per reader, disjoint readers per rank and
worker that together cover a set, mixing by fixed quotas, a stream started at any step,
damaged shards skipped and counted, the real split mixed in, class-balanced draws."""

import itertools

import numpy as np
import pytest
import torch
from transfer_fixtures import log_softmax, write_set

from core.config import SourceConfig
from core.errors import UserError
from core.sources import load_source
from student.shards import DecodedCache, decode_shard, open_transfer_sets
from student.stream import RealPart, StreamPlan, TransferLoader, transfer_loader
from student.stream.mixing import Quotas
from student.stream.order import PartOrder, Piece, reader_part


def make_set(set_dir, n=256, per_shard=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # make every image distinct
    images[:, 0, 1, 0] = np.arange(n) // 256
    logp = log_softmax(rng.normal(size=(n, classes)))
    paths = write_set(set_dir, images, logp, [i % classes if i % 2 else None for i in range(n)], per_shard,
                      made_from=np.arange(n) // 2)  # two samples per "source image"
    return paths, images


def keys(batch):
    return [bytes(img.numpy().tobytes()) for img in batch["image"]]


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def samples_of(batches):
    return np.concatenate([b["sample"].numpy() for b in batches])


def test_reader_parts_are_disjoint_and_cover_the_set():
    assert reader_part((10, 10, 10), 1, 4) == [Piece(0, 1, 4, 3), Piece(1, 1, 4, 3), Piece(2, 1, 4, 3)]
    assert reader_part((10,) * 8, 1, 4) == [Piece(1, 0, 1, 10), Piece(5, 0, 1, 10)]
    for samples, readers in (((7, 7, 3), 5), ((32,) * 9 + (5,), 4)):
        rows = [(p.shard, r) for reader in range(readers) for p in reader_part(samples, reader, readers)
                for r in p.row_numbers().tolist()]
        assert sorted(rows) == [(s, r) for s, n in enumerate(samples) for r in range(n)]


def test_each_epoch_reads_every_row_of_a_part_once_in_a_new_order():
    part = reader_part((32,) * 6 + (20,), 0, 1)
    order = PartOrder(part, window=70, seed=(1, 2))
    epochs = []
    for epoch in range(3):
        rows = []
        for number, pieces in enumerate(order.windows(epoch)):
            assert sum(part[i].rows for i in pieces) >= 70 or number == len(order.windows(epoch)) - 1
            spot = order.locate(epoch * order.length + sum(len(r) for r in rows))
            which, row = order.rows(spot)
            rows.append([(part[p].shard, r) for p, r in zip(which.tolist(), row.tolist(), strict=True)])
        flat = [x for window in rows for x in window]
        assert sorted(flat) == sorted((p.shard, r) for p in part for r in p.row_numbers().tolist())
        epochs.append(flat)
    assert epochs[0] != epochs[1] != epochs[2]
    assert PartOrder(part, 70, (1, 2)).locate(order.length + 5).epoch == 1


def test_quotas_fill_every_batch_and_follow_the_weights_in_closed_form():
    quotas = Quotas([0.3, 0.7, 0.05], 128)
    counts = np.stack([quotas.counts(k) for k in range(400)])
    assert (counts.sum(axis=1) == 128).all() and (counts >= 0).all()
    assert np.array_equal(counts.sum(axis=0), quotas.given(400))
    assert np.abs(quotas.given(400) / (400 * 128) - np.array([0.3, 0.7, 0.05]) / 1.05).max() < 1e-4
    with pytest.raises(UserError, match="cannot hold a row of each"):
        Quotas([1.0] * 6, 4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_stored_sample_is_read_once_per_epoch(tmp_path, num_workers):
    make_set(tmp_path / "a", n=256, per_shard=32)
    loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 16, seed=3, num_workers=num_workers,
                             shuffle_window=64, batches_per_item=4)
    batches = take(loader, 48)  # three passes over the 256 samples
    ids = samples_of(batches)
    for epoch in range(3):
        assert sorted(ids[256 * epoch:256 * (epoch + 1)].tolist()) == list(range(256))
    assert not np.array_equal(ids[:256], ids[256:512])
    sources = np.concatenate([b["sources"].numpy() for b in batches])
    assert np.array_equal(sources[:, 0], ids // 2) and (sources[:, 1] == -1).all()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_started_at_any_step_continues_the_uninterrupted_one(tmp_path, num_workers):
    make_set(tmp_path / "a")
    common = dict(batch_size=16, seed=3, num_workers=num_workers, shuffle_window=40, batches_per_item=4)
    whole = take(transfer_loader([(str(tmp_path / "a"), 1.0)], **common), 30)
    for start in (5, 13):  # mid-item, mid-epoch
        resumed = take(transfer_loader([(str(tmp_path / "a"), 1.0)], start_step=start, **common), 30 - start)
        for a, b in zip(whole[start:], resumed, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
            assert torch.equal(a["label"], b["label"]) and torch.equal(a["sample"], b["sample"])


def test_ranks_and_workers_read_disjoint_parts_that_cover_the_set(tmp_path):
    make_set(tmp_path / "a", n=512, per_shard=32)  # 16 shards for 2 ranks × 2 workers
    seen, visited = {}, {}
    for rank in (0, 1):
        loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 16, seed=0, num_workers=2, world_size=2, rank=rank,
                                 shuffle_window=32, batches_per_item=2)
        batches = take(loader, 16)  # each reader: one epoch of its 128 samples
        seen[rank] = samples_of(batches)
        visited[rank] = set(loader.visited)
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist()) and visited[0].isdisjoint(visited[1])
    assert sorted(np.concatenate([seen[0], seen[1]]).tolist()) == list(range(512))
    for rank in (0, 1):  # rank r's two workers are readers 2r and 2r + 1 of 4: shards i with i mod 4 in those
        shard_ids = {int(url[-10:-4]) for url in visited[rank]}
        assert {i % 4 for i in shard_ids} == {2 * rank, 2 * rank + 1} and len(shard_ids) == 8


def test_mixed_sets_each_run_through_their_own_epochs(tmp_path):
    make_set(tmp_path / "a", n=96, per_shard=32)
    make_set(tmp_path / "b", n=64, per_shard=32, seed=1)
    loader = transfer_loader([(str(tmp_path / "a"), 3.0), (str(tmp_path / "b"), 1.0)], 16, seed=0,
                             shuffle_window=32)
    batches = take(loader, 24)  # 384 rows: 288 of a (3 epochs), 96 of b (1.5 epochs)
    origin = np.concatenate([b["origin"].numpy() for b in batches])
    ids = samples_of(batches)
    assert [int(c) for c in np.bincount(origin)] == [288, 96]
    assert all(int(c) == 12 for c in [(b["origin"] == 0).sum() for b in batches])  # 16 × 3/4 each batch
    a, b = ids[origin == 0], ids[origin == 1]
    assert all(sorted(a[96 * e:96 * (e + 1)].tolist()) == list(range(96)) for e in range(3))
    assert sorted(b[:64].tolist()) == list(range(64)) and len(set(b[64:].tolist())) == 32


def test_a_damaged_shard_is_skipped_and_counted_when_asked(tmp_path):
    paths, images = make_set(tmp_path / "a", n=128, per_shard=32)
    paths[2].write_bytes(paths[2].read_bytes()[:3000])  # truncated
    sets = [(str(tmp_path / "a"), 1.0)]
    with pytest.raises(UserError, match=rf"transfer shard {paths[2]} is damaged"):
        transfer_loader(sets, 16, seed=0)  # checked before training: size differs from the index
    loader = transfer_loader(sets, 16, seed=0, on_bad_shard="skip", shuffle_window=64)
    batches = take(loader, 30)
    good = {images[i].tobytes() for i in range(128) if not 64 <= i < 96}
    assert all(k in good for b in batches for k in keys(b))
    assert set(loader.skipped) == {str(paths[2])}
    resumed = take(transfer_loader(sets, 16, seed=0, on_bad_shard="skip", shuffle_window=64, start_step=20), 10)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches[20:], resumed, strict=True))


def test_every_shard_damaged_stops_with_one_line(tmp_path):
    paths, _ = make_set(tmp_path / "a", n=64, per_shard=32)
    for path in paths:
        path.write_bytes(path.read_bytes()[:1000])
    loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 8, seed=0, on_bad_shard="skip")
    with pytest.raises(UserError, match="every shard this reader was given is damaged") as err:
        take(loader, 5)
    assert "\n" not in str(err.value)


def _real_source(images, labels):
    source = load_source(SourceConfig(kind="digits"), "train")
    source._images, source.labels, source.shape = images, labels, images.shape[1:]
    source.pad, source.flip = 0, False
    return source


def test_real_split_is_mixed_in_by_weight_with_labels_and_no_target(tmp_path):
    make_set(tmp_path / "a", n=128)
    rng = np.random.default_rng(1)
    real_images = rng.integers(0, 256, size=(50, 4, 4, 1), dtype=np.uint8)
    real = RealPart(_real_source(real_images, np.arange(50) % 4), weight=1.0)
    opened = open_transfer_sets([(str(tmp_path / "a"), 3.0)])
    loader = TransferLoader(opened, StreamPlan(batch_size=40, seed=0), real)
    batches = take(loader, 25)
    assert all(int((~b["has_target"]).sum()) == 10 for b in batches)  # a quarter of every batch
    real_keys = {real_images[i].tobytes(): i for i in range(50)}
    real_rows = []
    for batch in batches:
        for image, label, has_target, sample in zip(batch["image"], batch["label"], batch["has_target"],
                                                    batch["sample"], strict=True):
            key = image.permute(1, 2, 0).numpy().tobytes()
            assert (key in real_keys) == (not has_target)
            if not has_target:
                assert label.item() == real_keys[key] % 4 and sample.item() == real_keys[key]
                real_rows.append(sample.item())
    assert all(sorted(real_rows[50 * e:50 * (e + 1)]) == list(range(50)) for e in range(5))  # epochs of the split


def test_class_balanced_draws_follow_inverse_class_population():
    labels = np.array([0] * 90 + [1] * 10)
    images = np.zeros((100, 2, 2, 1), dtype=np.uint8)
    real = RealPart(_real_source(images, labels), class_balanced=True)
    loader = TransferLoader([], StreamPlan(batch_size=200, seed=0), real)
    drawn = samples_of(take(loader, 100))
    assert abs(np.mean(labels[drawn] == 1) - 0.5) < 0.02
    plain = samples_of(take(TransferLoader([], StreamPlan(batch_size=100, seed=0), RealPart(real.source)), 1))
    assert sorted(plain.tolist()) == list(range(100))  # one epoch: every image once


def test_decoded_cache_decodes_each_shard_once_and_respects_its_budget(tmp_path):
    paths, images = make_set(tmp_path / "a", n=96, per_shard=32)
    arrays = decode_shard(str(paths[1]), 32, 4)
    assert np.array_equal(arrays.images, images[32:64]) and arrays.target.dtype == np.float32
    assert np.array_equal(arrays.sources[:, 0], np.arange(32, 64) // 2)
    cache = DecodedCache(max_bytes=10 * arrays.nbytes)
    for _ in range(3):
        for path in paths:
            cache.get(str(path), 32, 4)
    assert cache.decoded == 3
    small = DecodedCache(max_bytes=arrays.nbytes)
    for path in paths * 2:
        small.get(str(path), 32, 4)
    assert small.decoded == 6 and small.bytes <= arrays.nbytes
