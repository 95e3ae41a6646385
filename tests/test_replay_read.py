"""Replay shards decoded column-wise and several at once (``student.replay_read``): the column
decoders give the per-record decoders' rows bit for bit on dense, top-k and sampled targets;
``decode_shards`` gives what the per-record path gives, images included, over an in-memory and
a file-backed source, decoding each source image once for all the shards it is given; the cache
decodes only what it lacks, in one call; a bad record is named by its own key."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import CIFAR10_MINI
from replay_fixtures import write_replay_shards

from core.config import SourceConfig
from core.errors import RecordError
from core.records.sampled_target import (
    dense_weights,
    dense_weights_rows,
    reconstruct_sampled,
    reconstruct_sampled_rows,
    sample_target,
)
from core.records.target_codec import compress_topk, reconstruct_logp, reconstruct_logp_rows
from core.sources import Source, load_source
from student.shards import DecodedCache, ShardArrays, ShardDamage, decode_per_record, decode_shards

ARRAYS = ("images", "target", "labels", "weights", "sources")
EVERY_KIND = [
    {"kind": "views"}, {"kind": "noise", "sigma": 0.1}, {"kind": "gaussian_image", "mean": [0.5], "std": [0.2]},
    {"kind": "autoaugment", "policy": "cifar10"}, {"kind": "cutout", "size": 0.5},
    {"kind": "mix"}, {"kind": "mixup", "alpha": 1.0}, {"kind": "cutmix"},
]
CONTRACT = {"size": 16, "views": "random_resized_crop", "scale": [0.3, 1.0]}


def random_logp(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    logits = rng.normal(size=(rows, classes)) * rng.uniform(0.5, 30, size=(rows, 1))  # some far below the floor
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def column(records: list[np.ndarray]) -> np.ndarray:
    """The records as a replay shard's column holds them: without the constant ``classes``."""
    stacked = np.stack(records)
    names = [name for name in stacked.dtype.names if name != "classes"]
    out = np.zeros(len(stacked), dtype=[(name, stacked.dtype.fields[name][0]) for name in names])
    for name in names:
        out[name] = stacked[name]
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- the column decoders


@pytest.mark.parametrize(("classes", "k"), [(10, 3), (10, 10), (100, 10), (1000, 5)])
def test_topk_rows_are_the_per_record_rows_bit_for_bit(classes, k) -> None:
    logp = random_logp(np.random.default_rng(classes + k), 64, classes)
    records = [compress_topk(row, k) for row in logp]
    rows = reconstruct_logp_rows(column(records), classes)
    assert same(rows, np.stack([reconstruct_logp(r) for r in records]))
    assert not np.array_equal(rows[0], rows[1])  # the rows differ: not one row broadcast


@pytest.mark.parametrize(("classes", "k", "uniform"), [(10, 4, 0.0), (10, 30, 0.1), (100, 10, 0.0), (1000, 10, 0.2)])
def test_sampled_rows_and_weights_are_the_per_record_rows_bit_for_bit(classes, k, uniform) -> None:
    rng = np.random.default_rng(classes + k)
    records = [sample_target(row, k, 4.0, uniform, rng) for row in random_logp(rng, 64, classes)]
    counts = {int(r["count"]) for r in records}
    assert len(counts) > 1  # rows use different numbers of slots
    col = column(records)
    assert same(reconstruct_sampled_rows(col, classes), np.stack([reconstruct_sampled(r) for r in records]))
    assert same(dense_weights_rows(col, classes), np.stack([dense_weights(r) for r in records]))


def test_a_bad_row_is_named_by_its_position() -> None:
    rng = np.random.default_rng(0)
    topk = column([compress_topk(row, 3) for row in random_logp(rng, 8, 10)])
    topk["index"][5, 1] = topk["index"][5, 0]  # a class twice
    with pytest.raises(RecordError, match="top-k record has invalid class indices for 10 classes") as err:
        reconstruct_logp_rows(topk, 10)
    assert err.value.row == 5
    sampled = column([sample_target(row, 4, 4.0, 0.0, rng) for row in random_logp(rng, 8, 10)])
    sampled["count"][6] = 9  # more slots than the record has
    with pytest.raises(RecordError, match="uses 9 of 4 slots") as err:
        reconstruct_sampled_rows(sampled, 10)
    assert err.value.row == 6


# ---------------------------------------------------------------- whole shards


def counting(source: Source) -> Counter:
    """Count the source's ``raw`` calls by image (the instance's method patched)."""
    calls: Counter = Counter()
    raw = source.raw

    def counted(index: int) -> np.ndarray:
        calls[int(index)] += 1
        return raw(index)

    source.raw = counted  # type: ignore[method-assign]
    return calls


def assert_equal_arrays(new: list[ShardArrays], old: list[ShardArrays]) -> None:
    assert [a.url for a in new] == [a.url for a in old]
    for a, b in zip(new, old, strict=True):
        for name in ARRAYS:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            assert x is None or same(x, y), (a.url, name)


SETS = {  # name: (set, source, classes)
    "every_kind_dense": ({"samplers": EVERY_KIND, "samples": 160, "samples_per_shard": 80}, {"kind": "digits"}, 10),
    "views_topk": ({"sampler": {"kind": "views", "views": 3}, "samples": 150, "samples_per_shard": 75,
                    "targets": {"kind": "topk", "k": 3}}, {"kind": "digits", "pad": 2}, 10),
    "contract_sampled": ({"samplers": [{"kind": "views"}, {"kind": "mix"}, {"kind": "cutmix"}], "samples": 120,
                          "samples_per_shard": 60, "targets": {"kind": "sampled", "k": 4}},
                         {"kind": "digits", "image": {"size": 8, "views": "random_resized_crop"}}, 10),
    "mix_topk_100": ({"sampler": {"kind": "mix"}, "samples": 120, "samples_per_shard": 60,
                      "targets": {"kind": "topk", "k": 10}}, {"kind": "digits"}, 100),
}


@pytest.mark.parametrize("name", list(SETS))
def test_decode_shards_gives_the_per_record_arrays(name, tmp_path) -> None:
    set_cfg, source_cfg, classes = SETS[name]
    source = load_source(SourceConfig.model_validate(source_cfg), "train")
    shards, replay = write_replay_shards(tmp_path, set_cfg, source, classes, shards=2)
    old = [decode_per_record(url, count, classes, replay) for url, count in shards]
    new = decode_shards(shards, classes, replay)
    assert_equal_arrays(new, old)
    assert (new[0].weights is None) == (set_cfg.get("targets", {}).get("kind") != "sampled")
    assert (new[0].labels >= 0).any() == (name != "mix_topk_100")


@pytest.mark.skipif(not CIFAR10_MINI.is_dir(), reason="cifar10-mini not present")
@pytest.mark.parametrize("sampler", [{"kind": "views", "views": 3}, {"kind": "mix"}])
def test_a_file_backed_source_decodes_each_image_once_for_all_shards(sampler, tmp_path) -> None:
    cfg = SourceConfig(kind="imagefolder", path=str(CIFAR10_MINI), fraction=0.01, image=CONTRACT)
    source = load_source(cfg, "train")
    assert source._images is None and len(source) == 50  # a file per raw(i)
    shards, replay = write_replay_shards(tmp_path, {"sampler": sampler, "samples": 180, "samples_per_shard": 60},
                                         source, 10, shards=3)
    calls = counting(source)
    old = [decode_per_record(url, count, 10, replay) for url, count in shards]
    per_record = sum(calls.values())
    calls.clear()
    new = decode_shards(shards, 10, replay)
    assert_equal_arrays(new, old)
    read = np.concatenate([a.sources for a in new]).ravel()
    assert set(calls) == set(read[read >= 0].tolist()) and max(calls.values()) == 1
    assert per_record > 2 * len(calls)  # the per-record path decoded the same images again and again


def test_the_cache_decodes_what_it_lacks_in_one_call(tmp_path) -> None:
    source = load_source(SourceConfig(kind="digits"), "train")
    set_cfg = {"sampler": {"kind": "mix"}, "samples": 1200, "samples_per_shard": 300}
    shards, replay = write_replay_shards(tmp_path, set_cfg, source, 10, shards=4)
    cache = DecodedCache(1 << 30)
    first = cache.get(*shards[1], 10, replay)
    calls = counting(source)
    got = cache.get_many([shards[2], shards[1], shards[0]], 10, replay)
    assert got[1] is first and cache.decoded == 3  # shard 1 was cached; 0 and 2 decoded together
    assert [a.url for a in got] == [shards[i][0] for i in (2, 1, 0)]
    assert max(calls.values()) == 1  # images shared by shards 0 and 2 decoded once
    both = {int(i) for a in (got[0], got[2]) for i in a.sources.ravel()}
    assert sum(calls.values()) == len(both - {-1})
    assert_equal_arrays(got, [decode_per_record(url, count, 10, replay) for url, count in
                              (shards[2], shards[1], shards[0])])
    assert cache.get_many(shards, 10, replay)[2] is got[0] and cache.decoded == 4


def first_mix(records: np.ndarray) -> int:
    return int(np.flatnonzero(records["sampler"] == 1)[0])  # kinds: views 0, mix 1


def duplicate_class(records: np.ndarray) -> int:
    records["topk"]["index"][7, 1] = records["topk"]["index"][7, 0]
    return 7


def image_past_the_source(records: np.ndarray) -> int:
    row = first_mix(records)
    records["j"][row] = 5000
    return row


def unknown_sampler(records: np.ndarray) -> int:
    records["sampler"][7] = 9
    return 7


def lam_past_one(records: np.ndarray) -> int:
    row = first_mix(records)
    records["lam"][row] = 7.5
    return row


def offset_past_the_padding(records: np.ndarray) -> int:
    row = int(np.flatnonzero(records["sampler"] == 0)[0])  # a views record
    records["aug_dx"][row], records["aug_dy"][row] = 9, 9
    return row


@pytest.mark.parametrize(("change", "message"), [
    (duplicate_class, "top-k record has invalid class indices for 10 classes"),
    (image_past_the_source, "real image 5000 outside the source's 1437 images"),
    (unknown_sampler, "sampler 9 is not one of the set's 2 kinds"),
    (lam_past_one, "lam 7.5 outside [0, 1]"),  # issue 24: numpy clipped it, the student trained on it
    (offset_past_the_padding, "view offset (9, 9) outside [0, 2]"),
])
def test_a_damaged_record_is_named_by_its_own_key(tmp_path, change, message) -> None:
    source = load_source(SourceConfig(kind="digits"), "train")
    set_cfg = {"samplers": [{"kind": "views"}, {"kind": "mix"}], "samples": 80, "samples_per_shard": 40,
               "targets": {"kind": "topk", "k": 3}}
    shards, replay = write_replay_shards(tmp_path, set_cfg, source, 10, shards=2)
    records = np.load(shards[1][0])
    row = change(records)
    np.save(shards[1][0], records)
    with pytest.raises(ShardDamage) as err:
        decode_shards(shards, 10, replay)
    assert err.value.url == shards[1][0]
    assert err.value.reason == f"sample 000001-{row:06d}: RecordError: {message}"
    with pytest.raises(ShardDamage) as err:  # the cache's path too, and the per-record path names the same sample
        DecodedCache(1 << 30).get_many(shards, 10, replay)
    assert err.value.reason.startswith(f"sample 000001-{row:06d}: ")


def test_a_view_box_outside_its_image_is_named_as_the_image_is_rebuilt(tmp_path) -> None:
    """Issue 24: a random-resized-crop box past its image was rebuilt padded with black. Only the
    decoded image knows its size: the column checks pass, the rebuild names the sample."""
    set_cfg, source_cfg, classes = SETS["contract_sampled"]
    source = load_source(SourceConfig.model_validate(source_cfg), "train")
    shards, replay = write_replay_shards(tmp_path, set_cfg, source, classes, shards=2)
    records = np.load(shards[1][0])
    row = int(np.flatnonzero((records["sampler"] == 0) & (records["aug_box"][:, 2] > 0))[0])  # a boxed view
    records["aug_box"][row] = [4, 4, 8, 8]  # an 8×8 box at (4, 4) of an 8×8 digit
    np.save(shards[1][0], records)
    message = f"view box [4, 4, 8, 8] outside image {int(records['image'][row])} (8×8)"
    with pytest.raises(ShardDamage) as err:
        decode_shards(shards, classes, replay)
    assert err.value.url == shards[1][0] and err.value.reason == f"sample 000001-{row:06d}: RecordError: {message}"
    with pytest.raises(ShardDamage, match=r"sample 000001-\d+: FormatError: view box \[4, 4, 8, 8\] outside"):
        decode_per_record(*shards[1], classes, replay)
