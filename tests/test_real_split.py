"""The real split as the stream reads it: image by image from files, torchvision's
RandomResizedCrop under a ``random_resized_crop`` contract, optional RandAugment, nothing held in
memory for a split read from files."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from core.config import ImageConfig, SourceConfig
from core.options.image_contract import draw_random_resized_crop
from core.options.train import RandAugmentConfig
from core.sources import Source, in_memory_if_small, load_source
from student.build import training_split
from student.stream import RealPart, StreamPlan, TransferLoader
from student.stream.real import rand_augment, real_views


def gradient_source(n=12, height=40, width=50, contract=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    return Source(name="toy", classes=["a", "b"], labels=np.arange(n) % 2, identity={"toy": 1}, pad=0, flip=True,
                  _images=images, shape=(height, width, 3) if contract is None else (*contract.hw, 3),
                  contract=contract)


def test_random_resized_crop_views_are_torchvisions_crop_of_the_drawn_box():
    contract = ImageConfig(size=16, views="random_resized_crop", scale=(0.2, 1.0), interpolation="bilinear")
    source = gradient_source(contract=contract)
    indices = np.array([3, 0, 7, 7, 11])
    views = real_views(source, indices, np.random.default_rng(5))
    assert views.shape == (5, 16, 16, 3) and views.dtype == np.uint8
    rng = np.random.default_rng(5)  # the same draws, made by torchvision's functional on PIL images
    for view, index in zip(views, indices.tolist(), strict=True):
        top, left, h, w = draw_random_resized_crop(rng, 40, 50, contract.scale, contract.ratio)
        pil = Image.fromarray(source._images[index])
        expected = np.asarray(tvf.resized_crop(pil, top, left, h, w, [16, 16], InterpolationMode.BILINEAR))
        if rng.random() < 0.5:
            expected = expected[:, ::-1]
        assert np.array_equal(view, expected)
    assert not np.array_equal(views[2], views[3])  # the same image, two different views


def test_rand_augment_is_seeded_changes_images_and_leaves_the_global_rng_alone():
    images = gradient_source()._images[:6]
    cfg = RandAugmentConfig(num_ops=2, magnitude=9)
    state = torch.get_rng_state()
    a, b, c = rand_augment(images, cfg, 1), rand_augment(images, cfg, 1), rand_augment(images, cfg, 2)
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, images)
    assert a.shape == images.shape and a.dtype == np.uint8


def test_a_split_read_from_files_is_never_loaded_whole(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.jpg", quality=90)
    cfg = SourceConfig(kind="imagefolder", path=str(root), image={"size": 24, "views": "random_resized_crop"})
    train = load_source(cfg, "train")
    kept = training_split(train)
    assert kept._images is None and len(kept._files) == 12  # a contract split trains from its files
    assert in_memory_if_small(train, limit=10)._images is None  # too big for the limit: stays on disk
    assert in_memory_if_small(train)._images is not None  # small: decoded once (eval images)
    loader = TransferLoader([], StreamPlan(batch_size=6, seed=0, num_workers=1, batches_per_item=1),
                            RealPart(kept, randaugment=RandAugmentConfig()))
    batches = [b for _, b in zip(range(4), loader, strict=False)]
    assert all(b["image"].shape == (6, 3, 24, 24) for b in batches)
    ids = torch.cat([b["sample"] for b in batches[:2]])
    assert sorted(ids.tolist()) == list(range(12))  # an epoch of the folder's 12 images
    labels = torch.cat([b["label"] for b in batches[:2]])
    assert torch.equal(labels, torch.from_numpy(train.labels)[ids])
