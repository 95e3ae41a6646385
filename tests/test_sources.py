"""Sources: .npz files, torchvision data sets by name (built locally, no download), and the
class subset / fraction / imbalance options."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR10_MINI

from core.config import SetConfig, SourceConfig, sampler_config
from core.errors import UserError
from core.records.replay import source_fingerprint
from core.sets.fingerprint import set_fingerprint
from core.sources import load_source

CIFAR_MINI = CIFAR10_MINI


def digits(**options):
    return load_source(SourceConfig(kind="digits", **options), "train")


def write_mnist(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    """The raw idx files torchvision's MNIST reads (big-endian header, then bytes)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.astype(np.uint8).tobytes())


def test_torchvision_by_name_reads_local_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = np.arange(60) % 10
    write_mnist(tmp_path, train, labels, "train")
    write_mnist(tmp_path, train[:20], labels[:20], "t10k")
    cfg = SourceConfig(kind="torchvision", name="MNIST", path=str(tmp_path))
    source = load_source(cfg, "train")
    assert len(source) == 60 and source.shape == (28, 28, 1) and source.num_classes == 10
    np.testing.assert_array_equal(source.images()[:, :, :, 0], train)
    np.testing.assert_array_equal(source.labels, labels)
    assert len(load_source(cfg, "test")) == 20 and not source.flip
    with pytest.raises(UserError, match="not found under .*download: true"):
        load_source(SourceConfig(kind="torchvision", name="MNIST", path=str(tmp_path / "none")), "train")
    with pytest.raises(UserError, match="no such data set"):
        load_source(SourceConfig(kind="torchvision", name="NoSuchSet", path=str(tmp_path)), "train")


def test_npz_source_with_and_without_test_arrays(tmp_path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(50) % 5
    np.savez(tmp_path / "split.npz", images=images, labels=labels, classes=np.array(list("abcde")))
    train = load_source(SourceConfig(kind="npz", path=str(tmp_path / "split.npz"), test_fraction=0.2), "train")
    test = load_source(SourceConfig(kind="npz", path=str(tmp_path / "split.npz"), test_fraction=0.2), "test")
    assert (len(train), len(test)) == (40, 10) and train.classes == list("abcde")
    assert np.bincount(test.labels).tolist() == [2] * 5  # stratified
    together = np.concatenate([train.images(), test.images()]).reshape(50, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, images.reshape(50, -1)))  # a partition
    np.savez(tmp_path / "both.npz", images=images, labels=labels, test_images=images[:7], test_labels=labels[:7])
    both = SourceConfig(kind="npz", path=str(tmp_path / "both.npz"))
    assert len(load_source(both, "train")) == 50 and len(load_source(both, "test")) == 7
    np.savez(tmp_path / "bad.npz", images=images.astype(np.float32), labels=labels)
    with pytest.raises(UserError, match="uint8 NHWC"):
        load_source(SourceConfig(kind="npz", path=str(tmp_path / "bad.npz")), "train")
    with pytest.raises(UserError, match="no \\['labels'\\]"):
        np.savez(tmp_path / "nolabels.npz", images=images)
        load_source(SourceConfig(kind="npz", path=str(tmp_path / "nolabels.npz")), "train")


def test_the_stratified_split_is_scikit_learns_index_for_index() -> None:
    """core.sources.split reproduces train_test_split(stratify=...) without importing scikit-learn
    (2 s a process): the same indices for digits and for random label arrays, fractions and seeds."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    from core.sources.split import load_digits, stratified_split

    images, labels = load_digits()
    reference = sklearn_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    rng = np.random.default_rng(5)
    for seed in range(12):
        for fraction in (0.2, 0.07, 0.33, 0.5):
            y = labels if seed % 3 == 0 else rng.integers(0, 7, size=int(rng.integers(80, 400)))
            expected = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
            got = stratified_split(y, fraction, seed, "labels")
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), (seed, fraction)


def test_a_class_of_one_image_is_one_error_line_for_a_stratified_split(tmp_path) -> None:
    images = np.zeros((21, 4, 4, 1), np.uint8)
    labels = np.array([0] * 10 + [1] * 10 + [2])
    np.savez(tmp_path / "one.npz", images=images, labels=labels)
    with pytest.raises(UserError, match=r"one\.npz: classes \[2\] have one image each"):
        load_source(SourceConfig(kind="npz", path=str(tmp_path / "one.npz")), "train")


def test_class_subset_relabels_both_splits() -> None:
    source = digits(classes=["7", "2"])
    full = digits()
    assert source.classes == ["7", "2"] and set(source.labels) == {0, 1}
    assert len(source) == int(np.sum((full.labels == 7) | (full.labels == 2)))
    test = load_source(SourceConfig(kind="digits", classes=["7", "2"]), "test")
    assert set(test.labels) == {0, 1}
    with pytest.raises(UserError, match="not among"):
        digits(classes=["7", "x"])


@pytest.mark.parametrize("fraction", [0.5, 1 / 8, 1 / 64])
def test_fraction_is_class_balanced(fraction) -> None:
    full = digits()
    counts = np.bincount(digits(fraction=fraction).labels, minlength=10)
    expected = max(1, round(np.bincount(full.labels).min() * fraction))
    assert counts.tolist() == [expected] * 10
    assert len(load_source(SourceConfig(kind="digits", fraction=fraction), "test")) == 360  # test split untouched


def test_imbalance_reduces_chosen_classes_to_keep() -> None:
    full = np.bincount(digits().labels)
    source = digits(imbalance={"classes": 8, "keep": 0.1}, subset_seed=3)
    counts = np.bincount(source.labels, minlength=10)
    reduced = source.identity["imbalance"]["classes"]
    assert len(reduced) == 8
    for label in range(10):
        assert counts[label] == (max(1, round(full[label] * 0.1)) if label in reduced else full[label])
    named = digits(imbalance={"classes": ["0", "1"], "keep": 0.5})
    assert named.identity["imbalance"]["classes"] == [0, 1]


def test_subsets_change_the_fingerprint() -> None:
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=10)
    prints = {set_fingerprint(set_cfg, source, ["t"], 0) for source in (
        digits(), digits(fraction=0.5), digits(fraction=0.5, subset_seed=1), digits(classes=["1", "2"]),
        digits(imbalance={"classes": 2, "keep": 0.1}))}
    assert len(prints) == 5


def test_pad_and_flip_other_than_the_readers_default_change_the_fingerprint_and_nothing_else() -> None:
    """Issue 24: ``pad: 3`` reused a ``pad: 1`` set's cache entry. A value other than the
    reader's default joins the identity; omitted or spelled-out defaults keep the identity (so
    every existing set's fingerprint), and a replay set's recorded source fingerprint holds."""
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=10)
    default, spelled = digits(), digits(pad=1, flip=False)  # digits: pad 1, no flips
    assert default.identity == spelled.identity == {"kind": "digits", "split": "train", "test_fraction": 0.2,
                                                    "split_seed": 0}
    prints = [set_fingerprint(set_cfg, source, ["t"], 0) for source in (
        default, spelled, digits(pad=3), digits(flip=True), digits(pad=3, flip=True))]
    assert prints[0] == prints[1] and len(set(prints)) == 4
    padded = digits(pad=3)
    assert padded.identity == {**default.identity, "pad": 3} and padded.pad == 3
    old_rule = json.dumps({**default.identity, "pad": 3, "flip": False}, sort_keys=True)  # before issue 24
    assert source_fingerprint(padded) == hashlib.sha256(old_rule.encode()).hexdigest()


@pytest.mark.skipif(not CIFAR_MINI.is_dir(), reason="cifar10-mini not present")
def test_imagefolder_subsets_on_cifar10_mini() -> None:
    source = load_source(SourceConfig(kind="imagefolder", path=str(CIFAR_MINI), fraction=1 / 64,
                                      classes=["cat", "dog"]), "train")
    assert source.classes == ["cat", "dog"] and np.bincount(source.labels).tolist() == [8, 8]
    assert source.image(0).shape == (32, 32, 3) and source.image(0).dtype == np.uint8
