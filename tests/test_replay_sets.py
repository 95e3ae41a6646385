"""Replay sets (``store: replay``): the same config made as pixels and as replay records gives the
student the same images, bit for bit, and the same targets, for every replayable sampler, with
pad-and-crop views and with random-resized-crop views of an image contract; the records are
deterministic, tens of bytes each, readable with numpy alone; a trainer with another source and
a replay set of generated samples are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bad_input import STUDENT, assert_one_error_line, transferset, tree, write_config
from cli_runner import transferset_in_process
from conftest import generate_set_in, snapshot
from replay_fixtures import mix_job

from core.config import SetConfig, SourceConfig
from core.errors import UserError
from core.sets import index as sx
from core.sources import load_source
from student.shards import decode_shard, open_transfer_sets

EVERY_KIND = [
    {"kind": "views"}, {"kind": "noise", "sigma": 0.1}, {"kind": "gaussian_image"},
    {"kind": "autoaugment", "policy": "cifar10"}, {"kind": "autoaugment", "policy": "randaugment", "num_ops": 3},
    {"kind": "cutout", "size": 0.5}, {"kind": "mix"}, {"kind": "mixup", "alpha": 1.0}, {"kind": "cutmix"},
]
CONTRACT = {"kind": "digits", "image": {"size": 8, "views": "random_resized_crop", "scale": [0.3, 1.0]}}
CASES = {
    # every kind in one set (dense targets), pad-and-crop views
    "every_kind": ({"samplers": EVERY_KIND, "samples": 540, "samples_per_shard": 270}, {"kind": "digits"}),
    # an enumerated views set (view numbers, identity view 0), top-k targets
    "views_topk": ({"sampler": {"kind": "views", "views": 3}, "samples_per_shard": 1000,
                    "targets": {"kind": "topk", "k": 3}}, {"kind": "digits", "pad": 2}),
    # random-resized-crop boxes and eval views of an image contract, sampled-class targets
    "contract_sampled": ({"samplers": [{"kind": "views"}, {"kind": "mix"}, {"kind": "cutmix"}, {"kind": "cutout"}],
                          "samples": 300, "samples_per_shard": 150, "targets": {"kind": "sampled", "k": 4}},
                         CONTRACT),
}


def make(root: Path, teachers: list[Path], case: str, store: str) -> Path:
    set_cfg, source = CASES[case]
    out = root / f"{case}-{store}"
    generate_set_in(out, SetConfig.model_validate({**set_cfg, "store": store}), teachers, name=case,
                    source=source)
    return out


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("replay")
    return {case: {store: make(root, teachers, case, store) for store in ("pixels", "replay")} for case in CASES}


def shard_arrays(set_dir: Path, source_cfg: dict) -> list:
    source = load_source(SourceConfig.model_validate(source_cfg), "train")
    (opened,) = open_transfer_sets([(str(set_dir), 1.0)], source=source)
    return [decode_shard(url, n, opened.width, opened.shard_format)
            for url, n in zip(opened.urls, opened.samples, strict=True)]


@pytest.mark.parametrize("case", list(CASES))
def test_the_trainer_rebuilds_the_pixel_sets_images_and_targets_exactly(made, case) -> None:
    pixels, replay = (shard_arrays(made[case][store], CASES[case][1]) for store in ("pixels", "replay"))
    assert len(pixels) == len(replay) >= 1
    for a, b in zip(pixels, replay, strict=True):
        assert b.url.endswith(".npy") and a.url.endswith(".tar")
        assert a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
        assert np.array_equal(a.target, b.target) and np.array_equal(a.labels, b.labels)
        assert (a.weights is None) == (b.weights is None)
        if a.weights is not None:
            assert np.array_equal(a.weights, b.weights)
    import pyarrow.parquet as pq

    manifests = [pq.read_table(made[case][store] / sx.MANIFEST_NAME).to_pydict() for store in ("pixels", "replay")]
    for column in ("key", "sampler", "params", "label", "teacher_argmax"):
        assert manifests[0][column] == manifests[1][column], column
    assert np.array_equal(manifests[0]["lam"], manifests[1]["lam"], equal_nan=True)
    # the statistics are kept at 1/255 resolution in a record
    assert np.allclose(manifests[0]["entropy"], manifests[1]["entropy"], atol=0.5 / 255 + 1e-6)
    kinds = set(manifests[1]["sampler"])
    expected = {s["kind"] for s in CASES[case][0].get("samplers", [CASES[case][0].get("sampler")])}
    assert kinds == expected  # every kind of the case was drawn and compared


def test_replay_records_are_small_plain_numpy_and_listed(made) -> None:
    set_dir = made["every_kind"]["replay"]
    index = json.loads((set_dir / "index.json").read_text())
    assert index["image"]["encoding"] == "replay" and index["replay"]["images"] == 1437
    names = [entry["name"] for entry in index["shards"]]
    assert names == ["shard-000000.npy", "shard-000001.npy"]
    records = np.load(set_dir / "shards" / names[0])  # numpy alone, no pickle
    assert records.dtype.names[0] == "index" and len(records) == index["shards"][0]["samples"]
    assert records.dtype.itemsize == index["replay"]["record_bytes"]
    views = made["views_topk"]
    samples = json.loads((views["replay"] / "index.json").read_text())["totals"]["samples"]
    per_view, pixel_per_view = (sum(p.stat().st_size for p in (views[store] / "shards").iterdir()) / samples
                                for store in ("replay", "pixels"))
    assert per_view < 40, per_view  # 10 classes, top-3 targets, at most a header's share more
    assert pixel_per_view > 50 * per_view


def test_replay_shards_are_deterministic(made, teachers, tmp_path) -> None:
    again = make(tmp_path, teachers, "contract_sampled", "replay")
    assert snapshot(again) == snapshot(made["contract_sampled"]["replay"])


def test_a_trainer_with_another_source_is_refused(made) -> None:
    other = load_source(SourceConfig(kind="digits", split_seed=7), "train")
    with pytest.raises(UserError, match="rebuilds its images from the source it was made from") as err:
        open_transfer_sets([(str(made["every_kind"]["replay"]), 1.0)], source=other)
    assert "\n" not in str(err.value)
    repadded = load_source(SourceConfig(kind="digits", pad=3), "train")  # the views' offsets would shift
    with pytest.raises(UserError, match="rebuilds its images"):
        open_transfer_sets([(str(made["every_kind"]["replay"]), 1.0)], source=repadded)


# ---------------------------------------------------------------- through the installed command

JOB = mix_job("replay", "replay", {"kind": "topk", "k": 3}, STUDENT)


def run_job(root: Path, store: str) -> Path:
    raw = json.loads(json.dumps(JOB))
    raw["sets"]["mix"]["store"] = store
    result = transferset("run", write_config(root / "job.yaml", raw), "--out", root / "out", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    return run_job(tmp_path_factory.mktemp("replay-job"), "replay")


@pytest.mark.e2e
def test_run_trains_a_student_on_a_replay_set_and_verify_and_inspect_read_it(job, tmp_path) -> None:
    """The student of the replay set is the student of the same set stored as pixels, weight for
    weight (the same batches, rebuilt in a DataLoader worker, mixed with the real split)."""
    pixels = run_job(tmp_path, "pixels")
    results = [json.loads((out / "students" / "kd" / "seed-0" / "result.json").read_text()) for out in (job, pixels)]
    assert results[0]["steps"] == 20 and results[0]["checkpoint_sha256"] == results[1]["checkpoint_sha256"]
    assert results[0]["accuracy"] == results[1]["accuracy"] and results[0]["seen"] == results[1]["seen"]
    set_dir = job / "sets" / "mix"
    checked = transferset("verify", set_dir, cwd=job)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    shown = transferset("inspect", set_dir, cwd=job)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "replay records: " in shown.stdout and "no pixels" in shown.stdout


@pytest.mark.e2e
def test_verify_finds_a_record_that_indexes_past_the_source(job, tmp_path) -> None:
    import shutil

    copy = tmp_path / "mix"
    shutil.copytree(job / "sets" / "mix", copy)
    path = copy / "shards" / "shard-000001.npy"
    records = np.load(path)
    records["i"][5] = 5000  # digits has 1437 training images
    np.save(path, records)
    result = transferset("verify", copy, cwd=tmp_path)
    assert result.returncode != 0
    assert "real image 5000 outside the source's 1437" in result.stdout + result.stderr
    assert "sha256 differs" in result.stdout + result.stderr


@pytest.mark.parametrize("change, needles", [
    ({"sampler": {"kind": "gan", "generator": {"kind": "pca", "rank": 4}}},
     ["gan samples are made by a generator", "store: replay"]),
    ({"store": {"kind": "replay", "image": "jpeg"}}, ["replay set stores no images"]),
])
def test_bad_replay_configs_stop_with_one_line(tmp_path, change, needles) -> None:
    raw = json.loads(json.dumps(JOB))
    raw["sets"]["mix"].update(change)
    before = tree(tmp_path)
    result = transferset_in_process("generate", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out",
                                    cwd=tmp_path)
    assert_one_error_line(result, needles)
    assert tree(tmp_path) == {**before, "job.yaml": (tmp_path / "job.yaml").read_bytes()}


def test_a_resumed_replay_set_rebuilds_its_manifest_from_the_records(made, teachers, tmp_path) -> None:
    """A killed run left shard 0 committed and nothing else: the next run keeps it, makes shard 1,
    and rebuilds shard 0's manifest rows from its records — the same bytes as an unbroken run."""
    import shutil

    whole = made["every_kind"]["replay"]
    broken = tmp_path / "every_kind-replay"
    shutil.copytree(whole, broken)
    for name in ("index.json", sx.MANIFEST_NAME, "shards/shard-000001.npy"):
        (broken / name).unlink()
    kept = (broken / "shards" / "shard-000000.npy").stat().st_mtime_ns
    set_cfg, source = CASES["every_kind"]
    generate_set_in(broken, SetConfig.model_validate({**set_cfg, "store": "replay"}), teachers, name="every_kind",
                    source=source)
    assert (broken / "shards" / "shard-000000.npy").stat().st_mtime_ns == kept  # reused, not remade
    assert snapshot(broken) == snapshot(whole)
