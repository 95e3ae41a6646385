"""bench/views.py builds what docs/RESULTS.md says it measures: for each K, a KD student on a replay
views set of K × images samples and an XCL-Mix student on K/2 views + K/2 × images mixes (the same
stored samples), every student on the same recipe, steps, architecture and reader, and an online
ceiling; the table carries every point's accuracy and views-seen figure."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from core.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from views import set_samples, study_config, table  # noqa: E402

IMAGES = 1000


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "examples" / "cifar10.yaml").read_text())


def test_each_point_stores_k_samples_per_image_as_replay_records(raw) -> None:
    before = copy.deepcopy(raw)
    study = study_config(raw, [2, 8, 128], IMAGES, steps=780, seeds=[0, 1], width=8, online=True,
                         default_buffer=True)
    assert raw == before, "the example is not written into"
    cfg = parse_config(study, origin="views study")
    assert all(s.store.replay for s in cfg.sets.values())
    sizes = {name: set_samples(s.model_dump(), IMAGES) for name, s in cfg.sets.items()}
    assert list(sizes.values()) == sorted(sizes.values()), "small sets are made first"
    for k in (2, 8, 128):
        kd, xcl = cfg.students[f"kd_{k}"], cfg.students[f"xcl_{k}"]
        assert dict(kd.sets) == {f"views_{k}": 1.0} and sizes[f"views_{k}"] == k * IMAGES
        assert dict(xcl.sets) == {f"views_{k // 2}": 0.5, f"mix_{k // 2}": 0.5}
        assert sizes[f"views_{k // 2}"] + sizes[f"mix_{k // 2}"] == k * IMAGES, "the same stored samples"
        assert cfg.sets[f"views_{k}"].sampler.kind == "views" and cfg.sets[f"mix_{k // 2}"].sampler.kind == "mix"
    assert cfg.sets["views_1"].sampler.views == 1 and cfg.sets["mix_64"].samples == 64 * IMAGES


def test_every_student_shares_recipe_architecture_and_reader(raw) -> None:
    cfg = parse_config(study_config(raw, [2, 32], IMAGES, steps=390, seeds=[0], width=8, online=True,
                                    default_buffer=True), origin="views study")
    example = parse_config(raw, origin="example").students["kd"]
    recipe = example.train.model_dump(exclude={"steps", "shuffle_buffer", "epoch_steps"})
    for name, student in cfg.students.items():
        assert student.train.model_dump(exclude={"steps", "shuffle_buffer", "epoch_steps"}) == recipe, name
        assert student.train.steps == 390 and student.seeds == [0], name
        assert student.model.arch_kwargs == {"depth": 8, "width": 8}, name
        assert (student.kd.temperature, student.kd.alpha) == (example.kd.temperature, example.kd.alpha), name
        if name != "kd_32_buffer2000":
            assert (student.train.shuffle_buffer, student.train.epoch_steps) == (32 * IMAGES, 390), name
    assert cfg.students["kd_online"].objective == "kd_online" and not cfg.students["kd_online"].sets
    default = cfg.students["kd_32_buffer2000"].train
    assert (default.shuffle_buffer, default.epoch_steps) == (example.train.shuffle_buffer, None)
    assert dict(cfg.students["kd_32_buffer2000"].sets) == {"views_32": 1.0}
    assert cfg.teachers == parse_config(raw, origin="example").teachers


def test_the_table_shows_each_points_accuracy_seen_and_bytes() -> None:
    point = {"accuracy": 0.5, "std": 0.01, "by_seed": [0.49, 0.51], "seeds": [0, 1], "seen": {"views_2": 49.92}}
    figures = {"members": 2, "teacher_accuracy": 0.55, "steps": 780, "batch_size": 128, "seeds": [0, 1],
               "buffer": 128000,
               "views": {2: {"kd": point, "xcl": {**point, "std": None, "seen": {"views_1": 49.9, "mix_1": 50.0}},
                             "bytes_kd": 35.5, "bytes_xcl": 36.25,
                             "reader": {"128000": {"per_batch": 112.79, "images_read": 878},
                                        "2000": {"per_batch": 52.1, "images_read": 475}}}},
               "extra": {"kd_online": {**point, "seen": {"source": 99.84}}}}
    text = table(figures)
    assert "0.5000 ± 0.0100 (2 seeds)" in text and "views_2 49.92×" in text and "0.5000 (1 seed)" in text
    assert "views_1 49.90×, mix_1 50.00×" in text and "35.5, 36.2" in text and "source 99.84×" in text
    assert "112.8, 878; 52.1, 475" in text and "shuffle buffer 128000" in text


def test_some_points_get_more_seeds_and_a_stranger_is_refused(raw) -> None:
    study = study_config(raw, [2, 8], IMAGES, steps=780, seeds=[0], width=8, online=True, default_buffer=False,
                         seeds_of={"kd_2": [0, 1, 2], "kd_online": [0, 1]})
    assert {name: s["seeds"] for name, s in study["students"].items()} == {
        "kd_online": [0, 1], "kd_2": [0, 1, 2], "xcl_2": [0], "kd_8": [0], "xcl_8": [0]}
    with pytest.raises(SystemExit, match="--seeds-of kd_3: not a student"):
        study_config(raw, [2], IMAGES, steps=780, seeds=[0], width=8, online=False, default_buffer=False,
                     seeds_of={"kd_3": [1]})
