"""bench/peers.py compares three loaders of one set: they must read the same rows, and its
uniform reference must be what uniform sampling gives. A tiny tar set of views (no Ray), read
through (a) the trainer's stream, (b) the webdataset recipe's per-sample path and (c) the MDS copy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from transfer_fixtures import log_softmax, write_set

from student.shards import decode_shard, open_transfer_sets

if importlib.util.find_spec("streaming") is None:
    pytest.skip("mosaicml-streaming is not installed (pip install -e '.[bench]')", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peer_loaders as peers  # noqa: E402

IMAGES, VIEWS, BATCH = 40, 3, 8  # 15 whole batches per epoch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A set of 40 images × 3 views in shards of 32, view-major like format 2, and its MDS copy."""
    root = tmp_path_factory.mktemp("peers")
    rng = np.random.default_rng(0)
    made_from = np.concatenate([rng.permutation(IMAGES) for _ in range(VIEWS)])
    images = rng.integers(0, 256, (len(made_from), 8, 8, 3), dtype=np.uint8)
    logp = log_softmax(rng.normal(size=(len(made_from), 10)))
    write_set(root / "set", images, logp, [int(y) for y in rng.integers(0, 10, len(made_from))], 32,
              made_from=made_from)
    (opened,) = open_transfer_sets([(str(root / "set"), 1.0)])
    counts = peers.write_mds(opened, root / "set.mds")
    return opened, root / "set.mds", counts, made_from


def stored(opened):
    """Every sample of the set as the trainer decodes it, by sample number."""
    arrays = [decode_shard(url, n, opened.width) for url, n in zip(opened.urls, opened.samples, strict=True)]
    return {"image": np.concatenate([a.images for a in arrays]).transpose(0, 3, 1, 2),
            "target": np.concatenate([a.target for a in arrays]), "label": np.concatenate([a.labels for a in arrays]),
            "source": np.concatenate([a.sources[:, 0] for a in arrays])}


def check_epoch(batches, want, samples):
    """One epoch of a loader: every sample once, each row exactly the stored sample."""
    rows = {name: np.concatenate([b[name].numpy() for b in batches]) for name in ("sample", *want)}
    assert sorted(rows["sample"].tolist()) == list(range(samples))
    for name, values in want.items():
        assert np.array_equal(rows[name], values[rows["sample"]]), name


def test_the_three_loaders_read_the_same_rows(tiny):
    opened, mds_dir, counts, made_from = tiny
    assert np.array_equal(counts, np.bincount(made_from))
    want = stored(opened)
    assert np.array_equal(want["source"], made_from)
    samples = len(made_from)
    source = SimpleNamespace(shape=(8, 8, 3), num_classes=10)
    loaders = {"stream": peers.stream_loader(opened, source, BATCH, 0, 0),
               "webdataset": peers.wds_loader(opened, BATCH, 0, 0),
               "mosaic": peers.mds_loader(mds_dir, (8, 8, 3), BATCH, 0, 0)}
    for loader in loaders.values():
        check_epoch([next(loader) for _ in range(samples // BATCH)], want, samples)


def test_the_uniform_reference_is_what_uniform_sampling_gives():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 6, 60)
    owner = np.repeat(np.arange(60), counts)
    draws = [len(np.unique(owner[rng.choice(len(owner), 32, replace=False)])) for _ in range(20000)]
    assert abs(np.mean(draws) - peers.uniform_distinct(counts, 32)) < 4 * np.std(draws) / np.sqrt(len(draws))
    assert peers.uniform_distinct(np.array([1] * 50), 32) == pytest.approx(32.0)  # one sample per image
    assert peers.uniform_distinct(np.array([40, 2]), 41) == pytest.approx(2.0)  # image 0 always, 1 surely too
