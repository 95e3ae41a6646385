"""Student data: real batches with augmentation, normalisation, and streamed transfer sets."""

import itertools
import json

import numpy as np
import pytest
import torch
from transfer_fixtures import log_softmax, member_offsets, write_set

from core.errors import UserError
from core.options.image_contract import pad_crop
from core.records import format as fmt
from core.sources import Source
from student.data import normalize, source_input_spec
from student.stream import RealPart, StreamPlan, TransferLoader, transfer_loader


def toy_source(n=24, size=6, channels=1, pad=1, flip=True, seed=0):
    """Random images, label = index (so a batch row names its source image)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    return Source(name="toy", classes=[str(i) for i in range(n)], labels=np.arange(n), identity={"toy": seed},
                  pad=pad, flip=flip, _images=images, shape=(size, size, channels))


def hwc(image_chw):
    return image_chw.permute(1, 2, 0).numpy()


def is_aug_of(image_chw, source, label, dx, dy, flip):
    aug = {"dx": dx, "dy": dy, "flip": flip}
    return np.array_equal(hwc(image_chw), pad_crop(source.image(int(label)), aug, source.pad))


# ---------------------------------------------------------------- the real split in the stream


def real_batches(source, batch_size, seed, workers=0, start_step=0):
    """``(images, labels)`` of the stream's real member alone, as ERM reads it."""
    loader = TransferLoader([], StreamPlan(batch_size=batch_size, seed=seed, num_workers=workers,
                                           start_step=start_step, batches_per_item=2), RealPart(source))
    return ((b["image"], b["label"]) for b in loader)


def test_real_batches_visit_every_image_once_per_epoch():
    source = toy_source(pad=0, flip=False)
    batches = real_batches(source, batch_size=8, seed=3)
    for _ in range(2):  # two epochs of 3 batches
        seen = []
        for images, labels in itertools.islice(batches, 3):
            assert images.dtype == torch.uint8 and images.shape == (8, 1, 6, 6)
            assert labels.dtype == torch.int64
            for image, label in zip(images, labels, strict=True):
                assert np.array_equal(hwc(image), source.image(int(label)))
            seen += labels.tolist()
        assert sorted(seen) == list(range(24))


def test_real_batches_augment_with_crops_and_flips_of_the_right_image():
    source = toy_source(pad=1, flip=True)
    offsets, flips = set(), set()
    for images, labels in itertools.islice(real_batches(source, batch_size=16, seed=0, workers=2), 6):
        for image, label in zip(images, labels, strict=True):
            candidates = [
                (dx, dy, flip) for dx in range(3) for dy in range(3) for flip in (0, 1)
                if is_aug_of(image, source, label, dx, dy, flip)
            ]
            assert len(candidates) == 1
            offsets.add(candidates[0][:2])
            flips.add(candidates[0][2])
    assert len(offsets) == 9 and flips == {0, 1}


def test_real_batches_never_flip_when_the_source_says_so():
    source = toy_source(pad=2, flip=False)
    for images, labels in itertools.islice(real_batches(source, batch_size=24, seed=1), 2):
        for image, label in zip(images, labels, strict=True):
            assert any(
                is_aug_of(image, source, label, dx, dy, 0) for dx in range(5) for dy in range(5)
            )


def test_real_batches_are_reproducible_per_seed_and_start_anywhere():
    source = toy_source()

    def first(seed, start=0):
        return list(itertools.islice(real_batches(source, 10, seed, start_step=start), 4 - start))

    a, b, c, d = first(5), first(5), first(6), first(5, start=1)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a[1:], d, strict=True))


# ---------------------------------------------------------------- normalisation


def test_source_input_spec_and_normalize_give_zero_mean_unit_std():
    source = toy_source(n=40, size=5, channels=3)
    spec = source_input_spec(source)
    pixels = source.images().reshape(-1, 3) / 255.0
    assert spec["size"] == [5, 5] and spec["channels"] == 3
    np.testing.assert_allclose(spec["mean"], pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(spec["std"], pixels.std(axis=0), rtol=1e-8)
    x = normalize(torch.from_numpy(source.images()).permute(0, 3, 1, 2), spec)
    assert x.dtype == torch.float32 and x.shape == (40, 3, 5, 5)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)
    by_hand = (source.image(0)[2, 3, 1] / 255 - spec["mean"][1]) / spec["std"][1]
    assert x[0, 1, 2, 3].item() == pytest.approx(by_hand, abs=1e-6)


# ---------------------------------------------------------------- transfer sets


def make_set(set_dir, n, favourite, seed, labelled_every=2, per_shard=64, classes=4):
    """Random images; every target's argmax is ``favourite``; every other sample has a label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 5, 5, 3), dtype=np.uint8)
    logits = rng.normal(size=(n, classes))
    logits[:, favourite] += 10.0
    logp = log_softmax(logits)
    labels = [int(rng.integers(classes)) if i % labelled_every == 0 else None for i in range(n)]
    paths = write_set(set_dir, images, logp, labels, per_shard)
    stored = fmt.quantize_logp(logp).astype(np.float32)
    truth = {images[i].tobytes(): (stored[i], labels[i]) for i in range(n)}
    return paths, truth


def collect(loader, batches):
    return list(itertools.islice(iter(loader), batches))


def test_transfer_loader_mixes_sets_by_weight_and_decodes_exactly(tmp_path):
    _, truth_a = make_set(tmp_path / "a", 300, favourite=0, seed=1)
    _, truth_b = make_set(tmp_path / "b", 200, favourite=1, seed=2)
    loader = transfer_loader([(str(tmp_path / "a"), 0.8), (str(tmp_path / "b"), 0.2)], batch_size=100, seed=0,
                             num_workers=0, shuffle_window=100)
    assert loader.width == 4
    batches = collect(loader, 20)
    from_a = 0
    for batch in batches:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (100, 3, 5, 5)
        assert batch["target"].dtype == torch.float32 and batch["target"].shape == (100, 4)
        assert batch["label"].dtype == torch.int64
        for image, logp, label in zip(batch["image"], batch["target"], batch["label"], strict=True):
            key = hwc(image).tobytes()
            stored_logp, stored_label = truth_a[key] if key in truth_a else truth_b[key]
            assert np.array_equal(logp.numpy(), stored_logp)
            assert label.item() == (-1 if stored_label is None else stored_label)
            from_a += key in truth_a
        in_a = torch.tensor([hwc(image).tobytes() in truth_a for image in batch["image"]])
        assert torch.equal(batch["target"].argmax(1) == 0, in_a)
    assert abs(from_a / 2000 - 0.8) < 0.05
    labels = torch.cat([b["label"] for b in batches])
    assert 0.35 < (labels == -1).float().mean().item() < 0.65


def test_transfer_loader_is_reproducible_and_ignores_zero_weights(tmp_path):
    make_set(tmp_path / "a", 200, favourite=0, seed=1)
    make_set(tmp_path / "b", 200, favourite=1, seed=2)
    sets = [(str(tmp_path / "a"), 0.5), (str(tmp_path / "b"), 0.5), (str(tmp_path / "missing"), 0.0)]

    def first(seed):
        return collect(transfer_loader(sets, 32, seed, 0, 64), 5)

    a, b, c = first(7), first(7), first(8)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])
               for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def test_transfer_loader_workers_read_different_streams(tmp_path):
    make_set(tmp_path / "a", 256, favourite=0, seed=1, per_shard=32)
    loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 32, seed=0, num_workers=2, shuffle_window=32)
    first, second = collect(loader, 2)  # the DataLoader takes batches from the workers in turn
    assert not torch.equal(first["image"], second["image"])
    again = collect(loader, 2)
    assert torch.equal(first["image"], again[0]["image"]) and torch.equal(second["image"], again[1]["image"])


def test_incomplete_or_mismatched_sets_are_refused_before_training(tmp_path):
    make_set(tmp_path / "a", 40, favourite=0, seed=1)
    make_set(tmp_path / "five", 40, favourite=0, seed=1, classes=5)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(UserError, match="no index.json"):
        transfer_loader([(str(tmp_path / "unfinished"), 1.0)], 8, 0)
    with pytest.raises(UserError, match="number of classes"):
        transfer_loader([(str(tmp_path / "a"), 1.0), (str(tmp_path / "five"), 1.0)], 8, 0)
    with pytest.raises(UserError, match="all 0"):
        transfer_loader([(str(tmp_path / "a"), 0.0)], 8, 0)


def test_truncated_shard_is_named(tmp_path):
    paths, _ = make_set(tmp_path / "a", 200, favourite=0, seed=1)
    paths[1].write_bytes(paths[1].read_bytes()[:5000])
    with pytest.raises(UserError, match=rf"transfer shard {paths[1]} is damaged .*transferset verify") as err:
        transfer_loader([(str(tmp_path / "a"), 1.0)], 16, 0)
    assert "\n" not in str(err.value)


def test_truncated_shard_listed_by_a_stale_index_stops_the_stream(tmp_path):
    """A cut at a member boundary looks like a clean end to tarfile: the sample count catches it."""
    set_dir = tmp_path / "a"
    paths, _ = make_set(set_dir, 128, favourite=0, seed=1)
    header, _ = member_offsets(paths[0])["000000-000030.cls"]
    paths[0].write_bytes(paths[0].read_bytes()[:header])
    index = json.loads((set_dir / "index.json").read_text())
    index["shards"][0]["bytes"] = paths[0].stat().st_size  # the index agrees with the cut file
    (set_dir / "index.json").write_text(json.dumps(index))
    loader = transfer_loader([(str(set_dir), 1.0)], 16, 0, num_workers=0, shuffle_window=16)
    with pytest.raises(UserError, match=rf"transfer shard {paths[0]} is damaged \(.*truncated"):
        collect(loader, 100)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_shard_of_the_right_size_fails_naming_it(tmp_path, num_workers):
    paths, _ = make_set(tmp_path / "a", 128, favourite=0, seed=1)
    data = bytearray(paths[1].read_bytes())
    _, start = member_offsets(paths[1])["000001-000010.png"]
    data[start:start + 40] = bytes(40)  # zero the PNG signature and header of one sample
    paths[1].write_bytes(bytes(data))
    loader = transfer_loader([(str(tmp_path / "a"), 1.0)], 16, 0, num_workers=num_workers, shuffle_window=16)
    named = rf"transfer shard {paths[1]} is damaged \(sample 000001-000010: "
    with pytest.raises(UserError, match=named) as err:
        collect(loader, 200)
    assert "\n" not in str(err.value) and "transferset verify" in str(err.value)
