"""bench/views.py builds what docs/RESULTS.md says it measures: a KD student on a replay views set
of K × images samples for each K, an XCL-Mix student on K/2 views + K/2 × images mixes (the same
stored samples), every student on the same recipe, steps, architecture and the trainer's default
reader (no stream option set), and an online ceiling; the table carries every student's accuracy
and what its reader gave (result.json's seen rows, averaged over seeds)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from core.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from views import reader_figures, set_samples, stored_per_image, study_config, table  # noqa: E402

IMAGES = 1000


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "examples" / "cifar10.yaml").read_text())


def test_each_point_stores_k_samples_per_image_as_replay_records(raw) -> None:
    before = copy.deepcopy(raw)
    study = study_config(raw, [2, 16, 128], [16], IMAGES, steps=780, seeds=[0, 1], width=8, online=True)
    assert raw == before, "the example is not written into"
    cfg = parse_config(study, origin="views study")
    assert all(s.store.kind == "replay" for s in cfg.sets.values())
    sizes = {name: set_samples(s.model_dump(), IMAGES) for name, s in cfg.sets.items()}
    assert list(sizes.values()) == sorted(sizes.values()), "small sets are made first"
    assert set(sizes) == {"views_2", "views_8", "views_16", "views_128", "mix_8"}
    for k in (2, 16, 128):
        kd = cfg.students[f"kd_{k}"]
        assert dict(kd.sets) == {f"views_{k}": 1.0} and sizes[f"views_{k}"] == k * IMAGES
        assert cfg.sets[f"views_{k}"].sampler.kind == "views"
        assert stored_per_image(study["students"][f"kd_{k}"], study["sets"], IMAGES) == k
    xcl = cfg.students["xcl_16"]
    assert dict(xcl.sets) == {"views_8": 0.5, "mix_8": 0.5}
    assert sizes["views_8"] + sizes["mix_8"] == 16 * IMAGES, "the same stored samples as kd_16"
    assert cfg.sets["mix_8"].sampler.kind == "mix" and cfg.sets["mix_8"].samples == 8 * IMAGES
    assert stored_per_image(study["students"]["kd_online"], study["sets"], IMAGES) is None
    assert set(cfg.students) == {"kd_online", "kd_2", "kd_16", "kd_128", "xcl_16"}


def test_every_student_shares_recipe_architecture_and_the_default_reader(raw) -> None:
    study = study_config(raw, [2, 32], [4], IMAGES, steps=390, seeds=[0], width=8, online=True)
    cfg = parse_config(study, origin="views study")
    example = parse_config(raw, origin="example").students["kd"]
    recipe = example.train.model_dump(exclude={"steps"})
    for name, student in cfg.students.items():
        assert student.train.model_dump(exclude={"steps"}) == recipe, name
        assert study["students"][name]["train"] == {**raw["students"]["kd"]["train"], "steps": 390}, name
        assert student.train.steps == 390 and student.seeds == [0], name
        assert student.model.arch_kwargs == {"depth": 8, "width": 8}, name
        assert (student.kd.temperature, student.kd.alpha) == (example.kd.temperature, example.kd.alpha), name
    assert not any(key in study["students"]["kd_32"]["train"] for key in ("shuffle_window", "cache_mb"))
    assert cfg.students["kd_online"].objective == "kd_online" and not cfg.students["kd_online"].sets
    assert cfg.teachers == parse_config(raw, origin="example").teachers


def test_the_reader_figures_are_the_seeds_mean_of_result_json() -> None:
    def result(per_batch: float, images: int) -> dict:
        return {"images_per_batch": per_batch, "seen": [
            {"set": "views_128", "stored": True, "samples": 128000, "seen": 0.78, "distinct_samples": 99000,
             "distinct_images": images, "images_per_batch": per_batch}]}
    reader = reader_figures({0: result(120.0, 1000), 1: result(122.0, 998)})
    assert reader["images_per_batch"] == 121.0
    assert reader["sets"]["views_128"] == {"seen": 0.78, "distinct_samples": 99000, "distinct_images": 999,
                                           "images_per_batch": 121.0}


def test_the_table_shows_each_students_accuracy_bytes_and_reader() -> None:
    reader = {"images_per_batch": 121.5, "sets": {"views_2": {"seen": 49.92, "distinct_samples": 2000,
                                                              "distinct_images": 1000, "images_per_batch": 121.5}}}
    point = {"accuracy": 0.5, "std": 0.01, "by_seed": [0.49, 0.51], "seeds": [0, 1], "agreement": 0.61, "kl": 0.9,
             "stored": 2, "bytes": 61.3, "reader": reader}
    online = {**point, "std": None, "by_seed": [0.52], "stored": None, "bytes": None,
              "reader": {"images_per_batch": 128.0, "sets": {"source": {"seen": 99.84, "distinct_samples": 1000,
                                                                        "distinct_images": 1000,
                                                                        "images_per_batch": 128.0}}}}
    figures = {"members": 2, "teacher_accuracy": 0.55, "steps": 780, "batch_size": 128, "seeds": [0, 1],
               "students": {"kd_2": point, "kd_online": online}}
    text = table(figures)
    assert "0.5000 ± 0.0100 (2 seeds)" in text and "0.5000 (1 seed)" in text
    assert "views_2 49.92× 2000/1000 121.5" in text and "source 99.84× 1000/1000 128.0" in text
    assert "61.3" in text and "0.610" in text and "default reader" in text


def test_some_students_get_other_seeds_and_a_stranger_is_refused(raw) -> None:
    study = study_config(raw, [2, 16], [16], IMAGES, steps=780, seeds=[0, 1, 2], width=8, online=True,
                         seeds_of={"xcl_16": [0]})
    assert {name: s["seeds"] for name, s in study["students"].items()} == {
        "kd_online": [0, 1, 2], "kd_2": [0, 1, 2], "kd_16": [0, 1, 2], "xcl_16": [0]}
    with pytest.raises(SystemExit, match="--seeds-of kd_3: not a student"):
        study_config(raw, [2], [], IMAGES, steps=780, seeds=[0], width=8, online=False, seeds_of={"kd_3": [1]})
