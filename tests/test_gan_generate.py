"""XCL-GAN sets end to end on Ray: a tiny BigGAN loaded from a local directory through the
user's code path, the generator as its own actor stage and fused into the teacher actors (the
same bytes), every stored sample replayed from its parameters, and a set mixing real views
with generated samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import generate_set_in, snapshot
from gan_fixtures import tiny_config

from core.config import GeneratorStageConfig, SetConfig, SourceConfig
from core.records import format as fmt
from core.samplers import apply_params
from core.sets import index as sx
from core.sources import load_source
from core.tasks import decode_fields
from pipeline.inspect.verify import verify_set
from stages.generators import fresh_biggan, save_biggan
from stages.samplers.generating import generate_images
from stages.teachers import Ensemble

DIGITS = SourceConfig(kind="digits")


def generate(out: Path, set_cfg: SetConfig, teachers: list[Path], fuse: bool) -> dict[str, Any]:
    return generate_set_in(out, set_cfg, teachers, name="gan", generator_stage=GeneratorStageConfig(fuse=fuse))


def records(set_dir: Path) -> list[dict[str, Any]]:
    index = sx.read_index(set_dir)
    return [decode_fields(fields) for url in sx.shard_urls(set_dir, index) for _, fields in fmt.iter_tar(url)]


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gan-sets")
    weights = save_biggan(fresh_biggan(tiny_config(), seed=0), root / "biggan")
    biggan = SetConfig.model_validate({
        "sampler": {"kind": "gan", "generator": {"kind": "biggan", "weights": str(weights), "batch_size": 32}},
        "samples": 150, "samples_per_shard": 64})
    mixed = SetConfig.model_validate({
        "samplers": [{"kind": "views", "share": 0.5},
                     {"kind": "gan", "share": 0.5, "generator": {"kind": "pca", "rank": 8, "batch_size": 16}}],
        "samples": 150, "samples_per_shard": 64})
    results = {"unfused": generate(root / "unfused", biggan, teachers, fuse=False),
               "fused": generate(root / "fused", biggan, teachers, fuse=True),
               "mixed": generate(root / "mixed", mixed, teachers, fuse=False)}
    return {"root": root, "results": results, "teachers": teachers}


def test_fused_and_unfused_give_the_same_bytes(made) -> None:
    root = made["root"]
    assert made["results"]["unfused"]["shards_made"] == made["results"]["fused"]["shards_made"] == 3
    assert snapshot(root / "unfused") == snapshot(root / "fused")
    assert verify_set(root / "unfused") == []


def test_every_stored_sample_replays_from_its_parameters(made) -> None:
    set_dir = made["root"] / "unfused"
    index = sx.read_index(set_dir)
    stored = records(set_dir)
    assert len(stored) == 150 and all(r["meta"]["sampler"] == "gan" for r in stored)
    generator = index.set_config().sampler.generator
    for record in stored[::7]:  # one pass of its own per sample
        replayed = generate_images(generator, [record["meta"]["params"]], DIGITS)[0]
        assert np.array_equal(replayed, record["image"]), record["meta"]["key"]
    params = stored[0]["meta"]["params"]
    assert set(params) == {"z_seed", "truncation", "i", "j", "lam", "class_i", "class_j"}
    assert params["truncation"] == 0.4 and 0.0 <= params["lam"] <= 1.0


def test_generated_samples_carry_teacher_targets_and_no_label(made) -> None:
    set_dir = made["root"] / "unfused"
    stored = records(set_dir)
    assert all(r["label"] == r["meta"]["label"] == -1 for r in stored)  # no .cls member
    ensemble = Ensemble(made["teachers"], 10, device="cpu")
    images = np.stack([r["image"] for r in stored])
    expected = ensemble.predict(images)  # the teachers on the stored pixels
    logp = np.stack([r["logp"] for r in stored]).astype(np.float32)
    np.testing.assert_allclose(np.exp(logp).sum(1), 1.0, atol=5e-3)
    np.testing.assert_allclose(logp, expected.logp, atol=2e-3)
    manifest = sx.read_manifest(set_dir)
    lam = np.array([r["meta"]["params"]["lam"] for r in stored])
    np.testing.assert_allclose(np.sort(manifest.column("lam").to_numpy()), np.sort(lam))


def test_a_set_mixing_views_and_generated_samples(made) -> None:
    set_dir = made["root"] / "mixed"
    stored = records(set_dir)
    kinds = [r["meta"]["sampler"] for r in stored]
    assert kinds.count("views") == kinds.count("gan") == 75  # exact quotas by share
    source = load_source(DIGITS, "train")
    generator = sx.read_index(set_dir).set_config().samplers[1].generator
    for record in stored[:40]:
        meta = record["meta"]
        if meta["sampler"] == "views":
            assert np.array_equal(apply_params("views", meta["params"], source), record["image"])
            assert record["label"] == meta["label"] == int(source.labels[meta["params"]["image"]])
        else:
            assert np.array_equal(generate_images(generator, [meta["params"]], DIGITS)[0], record["image"])
            assert record["label"] == -1
