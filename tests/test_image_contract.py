"""The image contract (``image:``): sources of any size become images of one size — views by
random-resized crop (torchvision's semantics, stored as box + flip) or resize-and-crop, evaluation
by resize + centre crop (timm's), and sets stored as PNG or JPEG, labelled on what is stored."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from bad_input import last_line, write_config
from cli_runner import transferset_in_process
from conftest import draw_spec
from PIL import Image

from core.config import ImageConfig, SetConfig, SourceConfig, StoreConfig, parse_config, sampler_config
from core.errors import UserError
from core.models import TinyCNN, input_spec, save_checkpoint
from core.options.image_contract import draw_random_resized_crop, eval_image, resized_box
from core.records import format as fmt
from core.samplers import SAMPLERS, apply_params, sample_rng
from core.samplers.mixing import mix_pixels
from core.sets.fingerprint import set_fingerprint
from core.sources import load_in_memory, load_source
from core.tasks import decode_fields
from stages.samplers import draw_shard
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

SIZES = [(30, 45), (64, 48), (96, 96), (150, 120), (211, 260), (57, 300)]
MODES = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def jpeg_folder(root: Path, per_class: int = 6, sizes: list[tuple[int, int]] = SIZES) -> Path:
    """``root/{train,test}/{a,b,c}/*.jpg``: noisy images tinted by class, in every size of ``sizes``."""
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for label, name in enumerate("abc"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in range(per_class):
                height, width = sizes[(n + label) % len(sizes)]
                image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
                image[..., label] += 140
                Image.fromarray(image).save(folder / f"{n}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def source_cfg(folder: Path, **image) -> SourceConfig:
    return SourceConfig(kind="imagefolder", path=str(folder), image=ImageConfig(**{"size": 32, **image}))


# ---------------------------------------------------------------- the transforms themselves


@pytest.mark.parametrize("interpolation", sorted(MODES))
@pytest.mark.parametrize("crop_pct", [1.0, 0.875, 0.95])
def test_eval_image_is_torchvisions_resize_and_centre_crop(interpolation, crop_pct) -> None:
    rng = np.random.default_rng(1)
    for height, width in SIZES + [(32, 32)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pil = Image.fromarray(image)
        expected = T.CenterCrop(32)(T.Resize(math.floor(32 / crop_pct), interpolation=MODES[interpolation])(pil))
        got = eval_image(image, ImageConfig(size=32, crop_pct=crop_pct, interpolation=interpolation))
        np.testing.assert_array_equal(got, np.asarray(expected))
    same = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    assert np.array_equal(eval_image(same, ImageConfig(size=32)), same)  # crop_pct 1 at the size: untouched


def test_a_box_resizes_as_torchvisions_resized_crop() -> None:
    rng = np.random.default_rng(2)
    for height, width in SIZES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        box = draw_random_resized_crop(rng, height, width, (0.08, 1.0), (3 / 4, 4 / 3))
        expected = TF.resized_crop(Image.fromarray(image), *box, [24, 28], interpolation=MODES["bicubic"])
        np.testing.assert_array_equal(resized_box(image, box, (24, 28), "bicubic"), np.asarray(expected))


def test_random_resized_crop_boxes_follow_scale_and_ratio() -> None:
    rng = np.random.default_rng(3)
    for _ in range(400):
        top, left, h, w = draw_random_resized_crop(rng, 120, 200, (0.2, 0.6), (0.5, 2.0))
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 200
        assert 0.2 * 24000 * 0.9 <= h * w <= 0.6 * 24000 * 1.1  # rounding of the sides
        assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
    # no box of the asked ratio fits: torchvision's fallback, the central crop with the ratio clamped
    assert draw_random_resized_crop(rng, 100, 100, (1.0, 1.0), (2.0, 3.0)) == (25, 0, 50, 100)
    assert draw_random_resized_crop(rng, 100, 100, (1.0, 1.0), (0.25, 0.5)) == (0, 25, 100, 50)


# ---------------------------------------------------------------- sources and samplers


def test_a_source_of_any_size_has_the_contracts_size(folder) -> None:
    with pytest.raises(UserError, match=r"image: \{size: N\}"):
        load_source(SourceConfig(kind="imagefolder", path=str(folder)), "train").images()
    cfg = source_cfg(folder, views="random_resized_crop", crop_pct=0.875)
    source = load_source(cfg, "train")
    assert source.shape == (32, 32, 3) and len(source) == 18
    assert {source.raw(i).shape[:2] for i in range(len(source))} == set(SIZES)
    assert source.raw_size(4) == source.raw(4).shape[:2]
    for i in range(len(source)):
        np.testing.assert_array_equal(source.image(i), eval_image(source.raw(i), cfg.image))
    test = load_in_memory(load_source(cfg, "test"))  # what a trainer evaluates on
    assert test.contract is None and test.shape == (32, 32, 3)
    raw_test = load_source(cfg, "test")
    np.testing.assert_array_equal(test.images(), np.stack([eval_image(raw_test.raw(i), cfg.image)
                                                          for i in range(len(raw_test))]))
    plain = load_source(SourceConfig(kind="imagefolder", path=str(folder)), "train")
    assert source.fingerprint() != plain.fingerprint() != load_source(source_cfg(folder), "train").fingerprint()


KINDS = ["views", "mix", "mixup", "cutmix", "noise", "autoaugment", "cutout"]


@pytest.mark.parametrize("views", ["random_resized_crop", "resize_crop"])
def test_every_sampler_makes_contract_sized_images_that_replay(folder, views) -> None:
    cfg = source_cfg(folder, views=views, size=[28, 36])
    source = load_source(cfg, "train")
    for kind in KINDS + ["gaussian_image"]:
        sampler = sampler_config(kind=kind, mean=[0.5] * 3, std=[0.2] * 3) if kind == "gaussian_image" \
            else sampler_config(kind=kind)
        for i in range(12):
            params = SAMPLERS[kind].draw(sampler, source, sample_rng(5, 1, i))
            image = apply_params(kind, params, source)
            assert image.shape == (28, 36, 3) and image.dtype == np.uint8, kind
            np.testing.assert_array_equal(apply_params(kind, params, source), image)
    mix = SAMPLERS["mix"].draw(sampler_config(kind="mix"), source, sample_rng(5, 2, 0))
    a, b = (SAMPLERS["views"].apply({"image": mix[p], "aug": mix[f"aug_{p}"]}, source) for p in "ij")
    np.testing.assert_array_equal(apply_params("mix", mix, source), mix_pixels(a, b, mix["lam"]))


def test_a_views_set_stores_box_and_flip_and_replays_from_the_source_image(folder) -> None:
    cfg = source_cfg(folder, views="random_resized_crop", scale=[0.3, 1.0])
    source = load_source(cfg, "train")
    set_cfg = SetConfig(sampler=sampler_config(kind="views", views=4), samples_per_shard=40)
    drawn = draw_shard(set_cfg, source, 0, 0, 72)
    boxes = [params["aug"] for _, params in drawn if params["view"] > 0]
    assert boxes and all(set(aug) == {"box", "flip"} for aug in boxes)
    assert {aug["flip"] for aug in boxes} == {0, 1}
    assert all(params["aug"] == {"eval": 1, "flip": 0} for _, params in drawn if params["view"] == 0)
    for _, params in drawn:
        aug, raw = params["aug"], source.raw(params["image"])
        expected = eval_image(raw, cfg.image) if "eval" in aug else resized_box(raw, aug["box"], (32, 32), "bilinear")
        expected = expected[:, ::-1] if aug["flip"] else expected
        np.testing.assert_array_equal(apply_params("views", params, source), expected)


# ---------------------------------------------------------------- stored as PNG or JPEG


def rgb_teacher(path: Path, classes: int = 3) -> Path:
    torch.manual_seed(0)
    model = TinyCNN(3, classes, width=4).eval()
    save_checkpoint(path, model, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=classes,
                    input=input_spec(32, 32, 3, [0.5] * 3, [0.25] * 3))
    return path


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_stored_images_are_what_the_teachers_labelled(folder, tmp_path, encoding) -> None:
    cfg = source_cfg(folder, views="random_resized_crop")
    set_cfg = SetConfig(sampler=sampler_config(kind="mix"), samples=30, samples_per_shard=30,
                        store=StoreConfig(image=encoding, quality=80))
    spec = draw_spec(set_cfg, cfg, out_dir=tmp_path)
    ensemble = Ensemble([rgb_teacher(tmp_path / "t.pt")], 3, device="cpu")
    images, drawn, labels = make_shard(spec, 0)
    write_shard(spec, 0, images, drawn, labels, ensemble.predict(images))
    fields = [f for _, f in fmt.iter_tar(next((tmp_path / "shards").glob("*.tar")))]
    member = fmt.IMAGE_MEMBERS[encoding]
    assert all(member in f and {"png", "jpg"} - {member} - f.keys() for f in fields)
    records = [decode_fields(f) for f in fields]
    stored = np.stack([r["image"] for r in records])
    assert stored.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(stored, images)  # decoded stored bytes = the labelled pixels
    made = np.stack([apply_params("mix", params, load_source(cfg, "train")) for _, params in drawn])
    if encoding == "png":
        np.testing.assert_array_equal(stored, made)
    else:
        difference = np.abs(stored.astype(int) - made.astype(int))
        assert 0 < difference.mean() < 12  # lossy, but the same pictures
    np.testing.assert_allclose(np.stack([r["logp"] for r in records]),
                               fmt.stored_logp(ensemble.predict(stored).logp, 0), atol=0)


def test_jpeg_storage_changes_the_fingerprint_png_keeps_it(folder) -> None:
    source = load_source(source_cfg(folder), "train")
    base = SetConfig(sampler=sampler_config(kind="mix"), samples=10)
    prints = {set_fingerprint(base.model_copy(update={"store": store}), source, ["t"], 0)
              for store in (StoreConfig(), StoreConfig(image="jpeg"), StoreConfig(image="jpeg", quality=70))}
    assert len(prints) == 3
    assert set_fingerprint(base, source, ["t"], 0) == set_fingerprint(
        base.model_copy(update={"store": StoreConfig(image="png")}), source, ["t"], 0)


# ---------------------------------------------------------------- the config and the command line


def test_the_top_level_image_section_is_the_sources_contract() -> None:
    raw = {"name": "j", "source": {"kind": "digits"}, "image": {"size": 16, "views": "random_resized_crop"},
           "teachers": {"model": {"arch": "tiny_cnn"}, "train": {"steps": 1}}}
    cfg = parse_config(raw)
    assert cfg.source.image == cfg.image and cfg.image.hw == (16, 16) and cfg.image.eval_crop_pct == 0.875
    assert parse_config({**raw, "image": {"size": [12, 20]}}).image.hw == (12, 20)


@pytest.mark.parametrize(("image", "needle"), [
    ({"size": 0}, "image.size"),
    ({"size": 32, "scale": [0.5, 0.2]}, "image.scale"),
    ({"size": 32, "crop_pct": 1.5}, "crop_pct"),
    ({"size": 32, "views": "zoom"}, "views"),
    ({"size": 32, "interpolation": "lanczos9"}, "interpolation"),
    ({"size": 32, "sise": 3}, "sise"),
])
def test_a_bad_image_contract_is_one_error_line(tmp_path, image, needle) -> None:
    raw = {"name": "j", "source": {"kind": "digits"}, "image": image,
           "teachers": {"model": {"arch": "tiny_cnn"}, "train": {"steps": 1}}}
    done = transferset_in_process("run", str(write_config(tmp_path / "job.yaml", raw)), "--out",
                                  str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert last_line(done.stderr).startswith("error:") and needle in last_line(done.stderr)
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_input_statistics_of_a_large_file_backed_split_read_a_bounded_sample(folder) -> None:
    from student.data import stats_indices

    files = load_source(source_cfg(folder), "train")
    assert stats_indices(files, limit=5).tolist() == [0, 4, 8, 13, 17]
    assert stats_indices(files).tolist() == list(range(18))
    assert stats_indices(load_in_memory(files), limit=5).tolist() == list(range(18))  # decoded already: all
