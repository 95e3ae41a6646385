"""The gan sampler without Ray: parameters by definition, class lists and maps, batched
generation that replays sample by sample, the fingerprint, and factories the config names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import draw_spec
from gan_fixtures import tiny_config

from core.config import SetConfig, SourceConfig
from core.errors import UserError
from core.samplers import SAMPLERS, apply_params, sample_rng
from core.sets.fingerprint import set_fingerprint
from core.sources import load_source
from stages.generators import BIGGAN_WEIGHTS_NAME, fresh_biggan, save_biggan
from stages.samplers import sample_label
from stages.samplers.generating import GeneratorRunner, generate_images, resolve_gan_samplers
from stages.writer import make_shard

DIGITS = SourceConfig(kind="digits")


@pytest.fixture(scope="module")
def digits():
    return load_source(DIGITS, "train")


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory) -> Path:
    return save_biggan(fresh_biggan(tiny_config(), seed=0), tmp_path_factory.mktemp("biggan"))


def gan_set(generator: dict[str, Any], samples: int = 200, per_shard: int = 100, **sampler: Any) -> SetConfig:
    return SetConfig.model_validate({"sampler": {"kind": "gan", "generator": generator, **sampler},
                                     "samples": samples, "samples_per_shard": per_shard})


def resolved(digits, generator: dict[str, Any], **kw: Any) -> SetConfig:
    return resolve_gan_samplers(gan_set(generator, **kw), digits)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- drawing


def test_draw_gives_pairs_from_the_class_list_and_uniform_lambda(digits) -> None:
    sampler = resolved(digits, {"kind": "pca", "rank": 4}, classes=[1, 3, 7]).sampler
    params = [SAMPLERS["gan"].draw(sampler, digits, sample_rng(0, 0, i)) for i in range(3000)]
    assert {p["i"] for p in params} == {p["j"] for p in params} == {1, 3, 7}
    counts = np.bincount([p["i"] for p in params], minlength=8)[[1, 3, 7]]
    assert counts.min() > 900  # uniform over 3 classes: 1000 each
    lam = np.array([p["lam"] for p in params])
    assert lam.min() >= 0 and lam.max() <= 1 and abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / 12) < 0.01
    assert all(p["class_i"] == p["i"] and p["class_j"] == p["j"] for p in params)  # 10 = 10 classes: identity
    assert all(p["truncation"] == 1.0 for p in params)  # pca's default
    assert params[5] == SAMPLERS["gan"].draw(sampler, digits, sample_rng(0, 0, 5))  # a pure function of the RNG
    assert len({p["z_seed"] for p in params}) == len(params)
    assert sample_label("gan", params[0], digits) == -1  # the teachers label generated samples


def test_one_hot_ablation_draws_lambda_one(digits) -> None:
    sampler = resolved(digits, {"kind": "pca", "rank": 4}, mix_classes=False).sampler
    params = [SAMPLERS["gan"].draw(sampler, digits, sample_rng(1, 2, i)) for i in range(200)]
    assert all(p["j"] == p["i"] and p["lam"] == 1.0 for p in params)
    assert len({p["i"] for p in params}) == 10


def test_class_map_names_classes_and_restricts_the_draw(digits, biggan_dir) -> None:
    wide = save_biggan(fresh_biggan(tiny_config(num_classes=20), seed=1), biggan_dir.parent / "wide")
    cfg = resolved(digits, {"kind": "biggan", "weights": str(wide)}, class_map={12: "3", 15: 8})
    sampler = cfg.sampler
    assert sampler.classes == [12, 15] and sampler.class_map == {12: 3, 15: 8}
    assert sampler.generator.truncation == 0.4  # biggan's default
    params = [SAMPLERS["gan"].draw(sampler, digits, sample_rng(0, 0, i)) for i in range(100)]
    assert all((p["i"], p["class_i"]) in {(12, 3), (15, 8)} for p in params)
    unmapped = resolved(digits, {"kind": "biggan", "weights": str(wide)}, classes=[0, 19]).sampler
    assert unmapped.class_map == {} and SAMPLERS["gan"].draw(unmapped, digits, sample_rng(0, 0, 0))["class_i"] == -1
    for bad, needle in [({"class_map": {25: 1}}, "generator classes [25]"),
                        ({"class_map": {1: "eleven"}}, "'eleven' is not a teacher class"),
                        ({"class_map": {1: 10}}, "teacher class 10"),
                        ({"classes": [3, 20]}, "classes [20]")]:
        with pytest.raises(UserError) as err:
            resolved(digits, {"kind": "biggan", "weights": str(wide)}, **bad)
        assert needle in one_line(err)


def test_gan_samples_are_not_applied_one_by_one(digits) -> None:
    params = SAMPLERS["gan"].draw(resolved(digits, {"kind": "pca"}).sampler, digits, sample_rng(0, 0, 0))
    with pytest.raises(ValueError, match="generate_images"):
        apply_params("gan", params, digits)


# ---------------------------------------------------------------- generating


def make(cfg: SetConfig, shard: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    images, drawn, labels = make_shard(draw_spec(cfg, DIGITS), shard)
    assert (labels == -1).all()
    return images, [params for _, params in drawn]


GENERATORS = {
    "biggan": lambda d: {"kind": "biggan", "weights": str(d), "batch_size": 32},
    "pca": lambda d: {"kind": "pca", "rank": 8, "batch_size": 32},
    "factory": lambda d: {"kind": "factory", "factory": "gan_fixtures:linear_generator", "batch_size": 32},
}


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_batched_images_replay_one_by_one_and_repeat(digits, biggan_dir, kind) -> None:
    """100 samples in 4 passes of 32 (the last padded) equal each sample replayed in a pass of its
    own, and a second make of the same spec."""
    cfg = resolved(digits, GENERATORS[kind](biggan_dir))
    images, params = make(cfg, shard=1)
    assert images.shape == (100, 8, 8, 1) and images.dtype == np.uint8  # resized/grey for the digits teachers
    assert images.std() > 5  # pictures, not a constant
    alone = np.concatenate([generate_images(cfg.sampler.generator, [p], DIGITS) for p in params])
    assert np.array_equal(alone, images)
    assert np.array_equal(make(cfg, shard=1)[0], images)
    assert not np.array_equal(make(cfg, shard=0)[0], images)


def test_lambda_one_is_the_one_hot_image(digits, biggan_dir) -> None:
    cfg = resolved(digits, {"kind": "biggan", "weights": str(biggan_dir), "batch_size": 16})
    runner = GeneratorRunner(cfg.sampler.generator, digits)
    base = {"z_seed": 11, "truncation": 0.4, "class_i": -1, "class_j": -1}
    mixed = [{**base, "i": i, "j": (i + 3) % 10, "lam": 1.0} for i in range(10)]
    one_hot = [{**base, "i": i, "j": i, "lam": 1.0} for i in range(10)]
    halfway = [{**base, "i": i, "j": (i + 3) % 10, "lam": 0.5} for i in range(10)]
    assert torch.equal(runner.generate(mixed), runner.generate(one_hot))
    assert not torch.equal(runner.generate(halfway), runner.generate(one_hot))
    z, y = runner.inputs(halfway[:1])
    assert np.abs(z).max() <= 0.8 + 1e-6 and y[0, 0] == y[0, 3] == 0.5 and y.sum() == 1.0


def test_a_row_does_not_depend_on_its_neighbours_in_a_pass(digits) -> None:
    """What replay relies on: at one pass shape, the same rows in another order (other
    neighbours, other positions, other padding) give the same pixels."""
    cfg = resolved(digits, {"kind": "pca", "rank": 8, "batch_size": 8}).sampler.generator
    runner = GeneratorRunner(cfg, digits)
    params = [{"z_seed": s, "truncation": 1.0, "i": s % 10, "j": (s * 7) % 10, "lam": s / 40} for s in range(40)]
    batched = runner.generate(params)
    shuffled = runner.generate(params[::-1]).flip(0)
    assert torch.equal(batched, shuffled)
    with pytest.raises(ValueError, match="truncation"):
        runner.generate([{**params[0], "truncation": 0.5}])


# ---------------------------------------------------------------- identity


def fingerprint(cfg: SetConfig, digits) -> str:
    return set_fingerprint(cfg, digits, ["teacher"], seed=0)


def test_fingerprint_covers_the_generator_and_not_where_its_weights_lie(digits, biggan_dir, tmp_path) -> None:
    base = fingerprint(resolved(digits, {"kind": "biggan", "weights": str(biggan_dir)}), digits)
    moved = shutil.copytree(biggan_dir, tmp_path / "elsewhere")
    assert fingerprint(resolved(digits, {"kind": "biggan", "weights": str(moved)}), digits) == base
    state = torch.load(moved / BIGGAN_WEIGHTS_NAME, weights_only=True)
    state["embeddings.weight"] = state["embeddings.weight"] + 1e-3
    torch.save(state, moved / BIGGAN_WEIGHTS_NAME)
    assert fingerprint(resolved(digits, {"kind": "biggan", "weights": str(moved)}), digits) != base
    for change in [{"truncation": 0.5}, {"batch_size": 16}, {"autocast": "bf16"}]:
        cfg = resolved(digits, {"kind": "biggan", "weights": str(biggan_dir), **change})
        assert fingerprint(cfg, digits) != base, change
    cfg = resolved(digits, {"kind": "biggan", "weights": str(biggan_dir)}, mix_classes=False)
    assert fingerprint(cfg, digits) != base
    pca = fingerprint(resolved(digits, {"kind": "pca", "rank": 8}), digits)
    assert pca != fingerprint(resolved(digits, {"kind": "pca", "rank": 9}), digits)
    assert pca == fingerprint(resolved(digits, {"kind": "pca", "rank": 8}), digits)


def test_pinned_weights_digest_is_checked(digits, biggan_dir) -> None:
    digest = resolved(digits, {"kind": "biggan", "weights": str(biggan_dir)}).sampler.generator.sha256
    assert digest and len(digest) == 64
    resolved(digits, {"kind": "biggan", "weights": str(biggan_dir), "sha256": digest})
    with pytest.raises(UserError) as err:
        resolved(digits, {"kind": "biggan", "weights": str(biggan_dir), "sha256": "0" * 64})
    assert "pins" in one_line(err)


def test_factory_runs_only_what_the_config_names(digits) -> None:
    cfg = resolved(digits, {"kind": "factory", "factory": "gan_fixtures:linear_generator",
                            "kwargs": {"seed": 3}})
    other = resolved(digits, {"kind": "factory", "factory": "gan_fixtures:linear_generator",
                              "kwargs": {"seed": 4}})
    assert cfg.sampler.generator.sha256 != other.sampler.generator.sha256  # the weights are in the identity
    for factory, needle in [("gan_fixtures:nowhere", "cannot import"), ("no_such_module:build", "cannot import"),
                            ("gan_fixtures:not_a_generator", "must return a torch module")]:
        with pytest.raises(UserError) as err:
            resolved(digits, {"kind": "factory", "factory": factory})
        assert needle in one_line(err)
    with pytest.raises(UserError) as err:
        resolved(digits, {"kind": "factory", "factory": "gan_fixtures:linear_generator", "kwargs": {"bogus": 1}})
    assert "bad kwargs" in one_line(err)


@pytest.mark.parametrize(("sampler", "needle"), [
    ({"kind": "gan"}, "needs generator"),
    ({"kind": "gan", "generator": {"kind": "biggan"}}, "needs weights"),
    ({"kind": "gan", "generator": {"kind": "pca", "weights": "x"}}, "does not take ['weights']"),
    ({"kind": "gan", "generator": {"kind": "factory", "factory": "not a factory"}}, "should match pattern"),
    ({"kind": "gan", "generator": {"kind": "pca", "truncation": 1.5}}, "less than or equal to 1"),
    ({"kind": "gan", "generator": {"kind": "pca"}, "classes": [1, 1]}, "each once"),
    ({"kind": "mix", "mix_classes": False}, "does not take ['mix_classes']"),
])
def test_bad_gan_configs_name_the_problem(sampler, needle) -> None:
    from core.config import parse_config

    raw = {"name": "x", "source": {"kind": "digits"}, "sets": {"g": {"sampler": sampler, "samples": 10}},
           "teachers": {"model": {"arch": "tiny_cnn"}, "train": {"steps": 1}}}
    with pytest.raises(UserError) as err:
        parse_config(raw)
    assert needle in one_line(err) and "sets.g.sampler" in str(err.value)


def test_one_generator_per_set() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="share one generator"):
        SetConfig.model_validate({"samplers": [{"kind": "gan", "generator": {"kind": "pca", "rank": 4}},
                                               {"kind": "gan", "generator": {"kind": "pca", "rank": 8}}],
                                  "samples": 10})


def test_generator_stage_on_cuda_needs_a_gpu_share() -> None:
    from pydantic import ValidationError

    from core.config import GeneratorStageConfig

    with pytest.raises(ValidationError, match="num_gpus is 0"):
        GeneratorStageConfig(device="cuda")
    assert GeneratorStageConfig(device="cuda", num_gpus=0.5).num_gpus == 0.5
    assert GeneratorStageConfig(device="cuda", fuse=True).fuse  # fused: the teacher stage's GPUs apply
    assert GeneratorStageConfig(num_cpus=2.5).torch_threads() == 2 and GeneratorStageConfig().torch_threads() == 1
