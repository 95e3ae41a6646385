"""Generators without the internet: a tiny BigGAN built from a BigGANConfig goes through the
same loading code as a user's local directory (and, with the download served from that
directory, as a pretrained name); the PCA generator is fitted on digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gan_fixtures import tiny_config

from core.config import SourceConfig
from core.errors import UserError
from core.options.generator import GENERATOR_KINDS, GeneratorConfig
from core.sources import load_source
from stages.generators import (
    BIGGAN_WEIGHTS_NAME,
    class_vector,
    fit_pca_generator,
    fresh_biggan,
    load_biggan,
    save_biggan,
    to_uint8_images,
    truncated_normal,
)
from stages.samplers.generating import LOADERS


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory) -> Path:
    return save_biggan(fresh_biggan(tiny_config(), seed=0), tmp_path_factory.mktemp("biggan"))


def generate(generator, seeds: list[int], pairs: list[tuple[int, int, float]]) -> torch.Tensor:
    z = torch.from_numpy(np.stack([truncated_normal(s, generator.z_dim, 0.5) for s in seeds]))
    y = torch.from_numpy(np.stack([class_vector(generator.num_classes, i, j, lam) for i, j, lam in pairs]))
    with torch.no_grad():
        return generator(z, y)


def test_local_directory_loads_every_weight_safely(biggan_dir) -> None:
    generator = load_biggan(str(biggan_dir), truncation=0.5)
    saved = torch.load(biggan_dir / BIGGAN_WEIGHTS_NAME, weights_only=True)
    loaded = generator.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    images = generate(generator, [1, 2, 3], [(0, 1, 0.3), (2, 5, 0.9), (7, 7, 1.0)])
    assert images.shape == (3, 3, 8, 8) and torch.isfinite(images).all()
    assert images.abs().max() <= 1.0 and images.std() > 0.01  # tanh output, not a constant


def test_lambda_one_is_the_one_hot_class_and_specs_repeat(biggan_dir) -> None:
    first, second = load_biggan(str(biggan_dir), 0.5), load_biggan(str(biggan_dir), 0.5)
    mixed = generate(first, [11, 12], [(3, 8, 1.0), (4, 2, 1.0)])
    one_hot = generate(first, [11, 12], [(3, 3, 1.0), (4, 4, 1.0)])
    assert torch.equal(mixed, one_hot)
    again = generate(second, [11, 12], [(3, 8, 1.0), (4, 2, 1.0)])
    assert torch.equal(mixed, again)  # same spec, a fresh load: identical images
    other = generate(first, [11, 12], [(3, 8, 0.4), (4, 2, 0.4)])
    assert not torch.equal(mixed, other)


def test_pretrained_names_resolve_through_the_download_cache(biggan_dir, monkeypatch) -> None:
    """The name path with its download step served from the locally built files."""
    import pytorch_pretrained_biggan.file_utils as file_utils
    from pytorch_pretrained_biggan.model import PRETRAINED_CONFIG_ARCHIVE_MAP, PRETRAINED_MODEL_ARCHIVE_MAP

    served = {PRETRAINED_CONFIG_ARCHIVE_MAP["biggan-deep-128"]: biggan_dir / "config.json",
              PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-128"]: biggan_dir / BIGGAN_WEIGHTS_NAME}
    asked: list[str] = []

    def cached_path(url: str, cache_dir=None) -> str:
        asked.append(url)
        return str(served[url])

    monkeypatch.setattr(file_utils, "cached_path", cached_path)
    generator = load_biggan("biggan-deep-128", truncation=0.5)
    assert sorted(asked) == sorted(served)
    assert torch.equal(generate(generator, [5], [(1, 2, 0.5)]),
                       generate(load_biggan(str(biggan_dir), 0.5), [5], [(1, 2, 0.5)]))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_damaged_or_mismatched_directories_give_one_line_errors(biggan_dir, tmp_path) -> None:
    cut = shutil.copytree(biggan_dir, tmp_path / "cut")
    weights = cut / BIGGAN_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        load_biggan(str(cut))
    assert "cannot be loaded safely" in one_line_error(err)

    wider = save_biggan(fresh_biggan(tiny_config(channel_width=8)), tmp_path / "wider")
    shutil.copy(biggan_dir / "config.json", wider / "config.json")  # config of width 4, weights of width 8
    with pytest.raises(UserError) as err:
        load_biggan(str(wider))
    assert "do not fit" in one_line_error(err)

    missing = shutil.copytree(biggan_dir, tmp_path / "missing")
    (missing / BIGGAN_WEIGHTS_NAME).unlink()
    with pytest.raises(UserError) as err:
        load_biggan(str(missing))
    assert "is missing" in one_line_error(err)
    with pytest.raises(UserError) as err:
        load_biggan(str(tmp_path / "nowhere"))
    assert "neither a pretrained name" in one_line_error(err)


class NotATensor:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_in_weights_is_refused(biggan_dir, tmp_path) -> None:
    hostile = shutil.copytree(biggan_dir, tmp_path / "hostile")
    torch.save({"payload": NotATensor()}, hostile / BIGGAN_WEIGHTS_NAME)
    with pytest.raises(UserError) as err:
        load_biggan(str(hostile))
    assert "cannot be loaded safely" in one_line_error(err)


def test_truncated_normal_is_bounded_replayable_and_standard() -> None:
    z = truncated_normal(7, 20000, 0.5)
    assert np.array_equal(z, truncated_normal(7, 20000, 0.5)) and not np.array_equal(z, truncated_normal(8, 20000, 0.5))
    assert np.abs(z).max() <= 1.0  # 2 · truncation
    # N(0,1) cut at ±2 has std sqrt(1 − 4φ(2)/(Φ(2)−Φ(−2))) ≈ 0.8796
    assert abs(z.mean()) < 0.01 and z.std() / 0.5 == pytest.approx(0.8796, abs=0.01)


@pytest.fixture(scope="module")
def digits():
    return load_source(SourceConfig(kind="digits"), "train")


def test_pca_generator_draws_its_classes_and_mixes_them(digits) -> None:
    generator = fit_pca_generator(digits.images(), digits.labels, 10, rank=8)
    assert (generator.z_dim, generator.num_classes, generator.image_shape) == (8, 10, (1, 8, 8))
    zero = torch.zeros(10, 8)
    means = generator(zero, torch.eye(10)).reshape(10, -1)
    flat = digits.images().reshape(len(digits), -1) / 127.5 - 1.0
    for c in range(10):  # z = 0 gives the class mean exactly
        np.testing.assert_allclose(means[c].numpy(), flat[digits.labels == c].mean(0), atol=1e-5)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    z = torch.from_numpy(rng.standard_normal((500, 8)).astype(np.float32))
    samples = generator(z, torch.eye(10)[labels]).reshape(500, -1)
    nearest = torch.cdist(samples, means).argmin(1).numpy()
    assert (nearest == labels).mean() > 0.8  # a sample of class c looks like class c
    half = generator(zero[:1], torch.from_numpy(class_vector(10, 2, 7, 0.5))[None]).reshape(-1)
    np.testing.assert_allclose(half.numpy(), ((means[2] + means[7]) / 2).clamp(-1, 1).numpy(), atol=1e-5)
    refit = fit_pca_generator(digits.images(), digits.labels, 10, rank=8)
    assert torch.equal(refit.bases, generator.bases)  # the fit is deterministic


def test_output_is_resized_and_quantized_for_the_teacher() -> None:
    ramp = torch.linspace(-1, 1, 16).repeat(2, 3, 16, 1)  # [2, 3, 16, 16], a horizontal ramp
    grey = to_uint8_images(ramp, (8, 8), channels=1)
    assert grey.shape == (2, 8, 8, 1) and grey.dtype == np.uint8
    assert (np.diff(grey[0, 0, :, 0].astype(int)) > 0).all()  # still a ramp, left to right
    assert grey[0, 0, 0, 0] < 20 and grey[0, 0, -1, 0] > 235
    rgb = to_uint8_images(torch.zeros(1, 3, 8, 8), (8, 8), channels=3)
    assert rgb.shape == (1, 8, 8, 3) and (rgb == 128).all()  # 0 → 127.5 → rounds to 128


def test_every_generator_kind_has_a_loader() -> None:
    assert set(LOADERS) == set(GENERATOR_KINDS) == set(GeneratorConfig.model_fields["kind"].annotation.__args__)
