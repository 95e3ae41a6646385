"""How often a student saw each stored view (counted, not estimated), and KD with the teachers in
the loop (``kd_online``): the reference that tells the stored views apart from the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transfer_fixtures import log_softmax, write_set

from core.config import KDConfig, ModelConfig, PickConfig, SourceConfig, StudentConfig, TrainConfig
from core.errors import UserError
from core.sources import load_source
from student.online import ensemble_log_probs, mix_rows
from student.train import TrainRequest, train_model

MODEL = ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4})


@pytest.fixture(scope="module")
def digits():
    cfg = SourceConfig(kind="digits")
    return load_source(cfg, "train"), load_source(cfg, "test")


@pytest.fixture(scope="module")
def two_sets(digits, tmp_path_factory):
    """``a``: 400 real images; ``b``: 300 other ones; both with random teacher targets."""
    train, _ = digits
    root = tmp_path_factory.mktemp("seen")
    rng = np.random.default_rng(0)
    for name, rows in (("a", np.arange(400)), ("b", np.arange(400, 700))):
        write_set(root / name, train.images(rows), log_softmax(rng.normal(size=(len(rows), 10))),
                  [int(y) for y in train.labels[rows]], samples_per_shard=100)
    return root


def train(digits, out, objective="kd", sets=(), steps=30, kd=None, teachers=None, progress=None, bound=100.0,
          **options):
    train_source, test_source = digits
    cfg = TrainConfig(steps=steps, batch_size=32, num_workers=0, **options)
    request = TrainRequest(name="m", model=MODEL, train=cfg, objective=objective, kd=kd or KDConfig(alpha=1.0),
                           sets=list(sets), out_dir=out, seed=0, teachers=teachers, views_seen_warning=bound)
    return train_model(request, train_source, test_source, progress)


def test_the_planned_sightings_are_reported_before_training_and_warned_past_the_bound(digits, two_sets, tmp_path):
    """steps × rows a step × the set's share ÷ its samples: 40 × 32 × ½ ÷ 400 = 1.6 for ``a``,
    40 × 32 × ¼ ÷ 300 ≈ 1.07 for ``b``; a bound of 1.5 warns about ``a`` only."""
    lines: list[str] = []
    sets = [(str(two_sets / "a"), 0.5), (str(two_sets / "b"), 0.25), ("source", 0.25)]
    result = train(digits, tmp_path, sets=sets, steps=40, kd=KDConfig(alpha=0.5), progress=lines.append, bound=1.5)
    planned = {row["set"]: row for row in result["planned_seen"]}
    assert planned["a"]["seen"] == pytest.approx(1.6) and planned["b"]["seen"] == pytest.approx(40 * 32 / 4 / 300)
    assert planned["a"]["share"] == pytest.approx(0.5) and planned["a"]["samples"] == 400
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "set a:" in warnings[0] and "views_seen_warning (1.5)" in warnings[0]
    assert any("set b: each of its 300 stored samples will be seen 1.1 times" in line for line in lines)
    counted = {row["set"]: row["seen"] for row in result["seen"]}
    assert abs(counted["a"] - 1.6) < 0.25  # what was drawn agrees with the plan (binomial draws)
    assert json.loads((tmp_path / "result.json").read_text())["planned_seen"] == result["planned_seen"]


def test_one_set_counts_every_trained_row(digits, two_sets, tmp_path):
    result = train(digits, tmp_path, sets=[(str(two_sets / "a"), 1.0)], steps=25)
    assert result["seen"] == [{"set": "a", "stored": True, "samples": 400, "drawn": 800, "trained": 800,
                               "seen": 2.0, "distinct_samples": 400, "distinct_images": 0,
                               "images_per_batch": 0.0}]  # 25 steps × 32 rows over 400 stored views: 2 epochs
    # (this set's samples name no real image: written without sampler parameters)


def test_weighted_sets_and_the_real_split_share_the_rows(digits, two_sets, tmp_path):
    sets = [(str(two_sets / "a"), 0.5), (str(two_sets / "b"), 0.25), ("source", 0.25)]
    result = train(digits, tmp_path, sets=sets, steps=40, kd=KDConfig(alpha=0.5))
    seen = {row["set"]: row for row in result["seen"]}
    assert list(seen) == ["a", "b", "source"] and not seen["source"]["stored"]
    assert sum(row["trained"] for row in seen.values()) == 40 * 32
    for name, share in (("a", 0.5), ("b", 0.25), ("source", 0.25)):
        assert seen[name]["trained"] == share * 40 * 32  # fixed quotas: 16, 8 and 8 rows of every batch
        assert seen[name]["seen"] == pytest.approx(seen[name]["trained"] / seen[name]["samples"])
    assert seen["source"]["samples"] == len(digits[0])
    assert seen["b"]["distinct_samples"] == 300 and seen["a"]["distinct_samples"] == 400  # 320 ≥ 300 rows of b
    assert seen["source"]["distinct_samples"] == seen["source"]["distinct_images"] == 320  # < one epoch
    assert seen["source"]["images_per_batch"] == 8.0  # its 8 rows of a batch: 8 different images
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if row["kind"] == "train"][-1]["read"]
    assert last == {"a": {"samples": 400, "images": 0}, "b": {"samples": 300, "images": 0},
                    "source": {"samples": 320, "images": 320}}


def test_pick_draws_ratio_times_the_rows_it_trains_on(digits, two_sets, tmp_path):
    result = train(digits, tmp_path, sets=[(str(two_sets / "a"), 1.0)], steps=10,
                   kd=KDConfig(alpha=1.0, pick=PickConfig(ratio=2.0)))
    (row,) = result["seen"]
    assert (row["drawn"], row["trained"], row["seen"]) == (640, 320, 0.8)


def test_pick_keeps_the_real_split_at_its_share(digits, two_sets, tmp_path):
    """The real split (x, no teacher target) keeps its weight's share of the trained rows; pick
    chooses among the stored x′ only. Before, the real rows always ranked last: 0 trained."""
    sets = [(str(two_sets / "a"), 0.5), ("source", 0.5)]
    result = train(digits, tmp_path, sets=sets, steps=20, kd=KDConfig(alpha=0.5, pick=PickConfig(ratio=2.0)))
    seen = {row["set"]: row for row in result["seen"]}
    assert seen["a"]["drawn"] + seen["source"]["drawn"] == 2 * 20 * 32
    assert seen["a"]["trained"] + seen["source"]["trained"] == 20 * 32
    assert seen["source"]["drawn"] == 0.5 * 2 * 20 * 32  # half of every candidate batch
    assert seen["source"]["trained"] == seen["source"]["drawn"] / 2  # all kept: picking never drops x


def test_pick_among_views_only_keeps_the_real_split_out_of_the_contest(digits, tmp_path):
    """A views-only set is x, but with no x′ to pick among its samples compete; the real split
    (no teacher target, nothing to score) still keeps its share."""
    train_source, _ = digits
    rng = np.random.default_rng(1)
    views = tmp_path / "views"
    write_set(views, train_source.images(np.arange(400)), log_softmax(rng.normal(size=(400, 10))),
              [int(y) for y in train_source.labels[:400]], samples_per_shard=100,
              set_config={"sampler": {"kind": "views", "views": 1}})
    result = train(digits, tmp_path / "run", sets=[(str(views), 0.5), ("source", 0.5)], steps=20,
                   kd=KDConfig(alpha=0.5, pick=PickConfig(ratio=2.0)))
    seen = {row["set"]: row for row in result["seen"]}
    assert seen["views"]["trained"] + seen["source"]["trained"] == 20 * 32
    assert seen["source"]["trained"] == pytest.approx(seen["source"]["drawn"] / 2, abs=20)
    assert seen["views"]["trained"] < seen["views"]["drawn"]  # picked: not every drawn view is trained


def test_erm_sees_fresh_views_of_the_real_split(digits, tmp_path):
    result = train(digits, tmp_path, objective="erm", steps=12)
    assert result["seen"] == [{"set": "source", "stored": False, "samples": len(digits[0]), "drawn": 384,
                               "trained": 384, "seen": 384 / len(digits[0]), "distinct_samples": 384,
                               "distinct_images": 384, "images_per_batch": 32.0}]  # part of one epoch
    assert result["images_per_batch"] == 32.0


def test_mix_rows_blends_the_first_rows_with_partners_and_rounds() -> None:
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2) * 4
    mixed = mix_rows(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(mixed[2:], images[2:])  # the other rows are untouched
    generator = torch.Generator().manual_seed(0)
    partners = images[torch.randperm(4, generator=generator)[:2]]
    lam = torch.rand(2, 1, 1, 1, generator=generator, dtype=torch.float64)
    expected = (lam * images[:2].double() + (1 - lam) * partners.double()).round().to(torch.uint8)
    assert torch.equal(mixed[:2], expected)


def test_online_kd_learns_from_the_teachers_on_fresh_views(digits, teachers, tmp_path):
    from core.models import load_model

    result = train(digits, tmp_path, objective="kd_online", steps=60, teachers=teachers,
                   kd=KDConfig(alpha=1.0, temperature=2.0, online_mix=0.25), lr=0.05)
    assert result["accuracy"] > 0.3 and result["objective"] == "kd_online"  # chance is 0.1
    assert result["seen"][0]["trained"] == 60 * 32 and not result["seen"][0]["stored"]
    loaded = [load_model(path, outputs=10) for path in teachers]
    images = torch.from_numpy(digits[0].images(np.arange(8))).permute(0, 3, 1, 2)
    logp = ensemble_log_probs([(m, p["input"]) for m, p in loaded], images)
    assert torch.allclose(logp.exp().sum(dim=1), torch.ones(8), atol=1e-5)


def test_online_kd_needs_teachers_and_refuses_sets(digits, tmp_path):
    with pytest.raises(UserError, match="needs the teachers"):
        train(digits, tmp_path, objective="kd_online", steps=2)
    with pytest.raises(ValueError, match="drop its sets"):
        StudentConfig(model=MODEL, objective="kd_online", sets={"real": 1.0}, train=TrainConfig(steps=1))
    with pytest.raises(ValueError, match="for objective 'kd_online'"):
        StudentConfig(model=MODEL, objective="kd", sets={"real": 1.0}, kd=KDConfig(online_mix=0.5),
                      train=TrainConfig(steps=1))
