"""Every sampler against its definition, and replay through real shards (no Ray: the sampler,
teacher and writer stages are plain functions)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import plan_in
from set_files import local_shard

from core.config import SetConfig, SourceConfig, sampler_config
from core.errors import UserError
from core.options.image_contract import pad_crop
from core.records import format as fmt
from core.samplers import SAMPLERS, SamplerOptions, apply_params, sample_rng
from core.samplers.autoaugment import _policy
from core.sources import load_source
from core.tasks import decode_fields
from stages.samplers import draw_shard
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

DIGITS = SourceConfig(kind="digits")
ALL = [sampler_config(kind=k) for k in ("views", "mix", "mixup", "cutmix", "noise", "autoaugment", "cutout")] + [
    sampler_config(kind="autoaugment", policy="randaugment", num_ops=3),
    sampler_config(kind="gaussian_image", mean=[0.5], std=[0.25]),
]


@pytest.fixture(scope="module")
def source():
    return load_source(DIGITS, "train")


def draws(source, cfg: SamplerOptions, n: int = 300):
    return [SAMPLERS[cfg.kind].draw(cfg, source, sample_rng(3, 0, i)) for i in range(n)]


def partner_images(source, p):
    return (pad_crop(source.image(p["i"]), p["aug_i"], source.pad).astype(np.float64),
            pad_crop(source.image(p["j"]), p["aug_j"], source.pad).astype(np.float64))


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_pixels_are_the_convex_combination(source, alpha) -> None:
    params = draws(source, sampler_config(kind="mixup", alpha=alpha))
    lams = np.array([p["lam"] for p in params])
    assert ((lams >= 0) & (lams <= 1)).all()
    extreme = np.mean((lams < 0.1) | (lams > 0.9))  # Beta(0.2, 0.2) piles up at 0 and 1; Beta(1, 1) is flat
    assert extreme > 0.5 if alpha == 0.2 else 0.1 < extreme < 0.3
    for p in params[:100]:
        a, b = partner_images(source, p)
        stored = apply_params("mixup", p, source).astype(np.float64)
        assert np.abs(stored - (p["lam"] * a + (1 - p["lam"]) * b)).max() <= 1.0


def test_cutmix_box_area_matches_lambda(source) -> None:
    params = draws(source, sampler_config(kind="cutmix"))
    height, width = source.shape[:2]
    clipped = 0
    for p in params:
        y0, y1, x0, x1 = p["box"]
        assert 0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width
        assert (y1 - y0) * (x1 - x0) / (height * width) == pytest.approx(1 - p["lam"], abs=1e-12)
        side = round(height * np.sqrt(1 - p["lam_drawn"]))
        clipped += (y1 - y0) < side
        a, b = partner_images(source, p)
        stored = apply_params("cutmix", p, source)
        inside = np.zeros((height, width), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(stored[inside], b[inside])
        np.testing.assert_array_equal(stored[~inside], a[~inside])
    assert clipped > 0  # some boxes hit the border, so λ was recomputed


def test_noise_adds_gaussian_noise_of_sigma(source) -> None:
    params = draws(source, sampler_config(kind="noise", sigma=0.05), n=100)
    residuals = []
    for p in params:
        clean = pad_crop(source.image(p["image"]), p["aug"], source.pad).astype(np.float64)
        noisy = apply_params("noise", p, source).astype(np.float64)
        inside = (clean > 40) & (clean < 215)  # away from clipping at 0 and 255
        residuals.append((noisy - clean)[inside])
    residual = np.concatenate(residuals) / 255.0
    assert abs(residual.mean()) < 0.01 and residual.std() == pytest.approx(0.05, rel=0.1)


def test_gaussian_image_is_standard_normal_in_teacher_space(source) -> None:
    cfg = sampler_config(kind="gaussian_image", mean=[0.5], std=[0.1])
    z = np.concatenate([(apply_params("gaussian_image", p, source) / 255.0 - 0.5) / 0.1
                        for p in draws(source, cfg, n=100)]).ravel()
    assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, rel=0.05)


def test_autoaugment_ops_come_from_the_policy(source) -> None:
    policies, space = _policy("cifar10", 10, 8, 8)
    named = {name for policy in policies for name, _, _ in policy}
    for p in draws(source, sampler_config(kind="autoaugment"), n=200):
        assert len(p["ops"]) <= 2 and all(name in named for name, _ in p["ops"])
        for name, magnitude in p["ops"]:
            assert abs(magnitude) in [abs(m) for m in space[name][0]] or magnitude == 0.0
        if not p["ops"]:  # no op fired: the stored image is the augmented real image
            np.testing.assert_array_equal(apply_params("autoaugment", p, source),
                                          pad_crop(source.image(p["image"]), p["aug"], source.pad))
    rand = draws(source, sampler_config(kind="autoaugment", policy="randaugment", num_ops=3), n=50)
    assert all(len(p["ops"]) == 3 for p in rand)


def test_cutout_blanks_a_clipped_square(source) -> None:
    for p in draws(source, sampler_config(kind="cutout", size=0.5), n=100):
        y0, y1, x0, x1 = p["box"]
        assert y1 - y0 <= 4 and x1 - x0 <= 4 and (y1 - y0) * (x1 - x0) > 0
        stored = apply_params("cutout", p, source)
        clean = pad_crop(source.image(p["image"]), p["aug"], source.pad)
        assert (stored[y0:y1, x0:x1] == 0).all()
        outside = np.ones(stored.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(stored[outside], clean[outside])


def test_shards_hold_samplers_in_proportion(source) -> None:
    set_cfg = SetConfig(samplers=[sampler_config(kind="mix", share=3), sampler_config(kind="cutmix", share=1)],
                        samples=200, samples_per_shard=100)
    for shard in (0, 1):
        kinds = [kind for kind, _ in draw_shard(set_cfg, source, 0, shard, 200)]
        assert kinds.count("mix") == 75 and kinds.count("cutmix") == 25
    assert draw_shard(set_cfg, source, 0, 1, 200) == draw_shard(set_cfg, source, 0, 1, 200)
    assert draw_shard(set_cfg, source, 0, 0, 200) != draw_shard(set_cfg, source, 0, 1, 200)


def test_stray_sampler_options_are_refused() -> None:
    with pytest.raises(ValueError, match="does not take"):
        sampler_config(kind="mix", sigma=0.3)
    with pytest.raises(ValueError, match="exactly one of sampler or samplers"):
        SetConfig(samples=10)


def test_every_sampler_replays_from_stored_shards(source, teachers, tmp_path) -> None:
    """Write one shard holding every sampler; each decoded record replays to its stored pixels
    and carries the target of exactly those pixels (what is stored is what was labelled)."""
    set_cfg = SetConfig(samplers=ALL, samples=90, samples_per_shard=90)
    spec = plan_in(tmp_path, set_cfg, teachers, seed=5).spec
    images, drawn, labels = make_shard(spec, 0)
    ensemble = Ensemble(teachers, 10, device="cpu")
    write_shard(spec, 0, images, drawn, labels, ensemble.predict(images))
    records = [decode_fields(fields) for _, fields in fmt.iter_tar(local_shard(tmp_path, 0))]
    assert {r["meta"]["sampler"] for r in records} == {c.kind for c in ALL}
    for record in records:
        meta = record["meta"]
        np.testing.assert_array_equal(apply_params(meta["sampler"], meta["params"], source), record["image"])
        keeps = meta["sampler"] in ("views", "noise", "autoaugment", "cutout")
        assert record["label"] == (int(source.labels[meta["params"]["image"]]) if keeps else -1)
    again = ensemble.predict(np.stack([r["image"] for r in records]))
    np.testing.assert_allclose(fmt.quantize_logp(again.logp).astype(np.float32),
                               np.stack([r["logp"] for r in records]).astype(np.float32), atol=2e-3)


def test_gaussian_image_defaults_to_the_first_teachers_normalisation(teachers, tmp_path) -> None:
    plan = plan_in(tmp_path / "g", SetConfig(sampler=sampler_config(kind="gaussian_image"), samples=8), teachers)
    assert (plan.spec.set_cfg.sampler.mean, plan.spec.set_cfg.sampler.std) == ([0.5], [0.25])
    with pytest.raises(UserError, match="3 values"):
        plan_in(tmp_path / "g", SetConfig(sampler=sampler_config(kind="gaussian_image", mean=[0.5] * 3,
                                                                std=[0.2] * 3), samples=8), teachers)


def test_generation_example_config_is_valid() -> None:
    from pathlib import Path

    from core.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "generation.yaml")
    kinds = {s.kind for set_cfg in cfg.sets.values() for s in set_cfg.sampler_list()}
    assert kinds == {"mixup", "cutmix", "noise", "gaussian_image", "mix", "autoaugment", "cutout", "gan"}
    assert cfg.sets["tl_mix"].targets.kind == "topk" and cfg.sets["uncertain_mix"].select.keep == 0.5
