"""Packed sets (``store: packed``): the replay records in bits. A packed set gives the trainer the
arrays of the same set stored as replay records with the same quantised targets, bit for bit, in
fewer bytes, with no manifest.parquet beside them (the records are the manifest); its images are
the ones its teachers labelled (λ drawn on the grid the bits hold);
the same config gives the same bytes; ``verify`` and ``inspect`` read it through the installed
command and a damaged record is found; what cannot be packed stops with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bad_input import STUDENT, assert_one_error_line, transferset, tree, write_config
from cli_runner import transferset_in_process
from conftest import generate_set_in, plan_in, snapshot
from replay_fixtures import mix_job, opened_set, trainer_arrays

from core.config import SetConfig
from core.records.packed_params import LAM_STEPS
from core.sets import index as sx
from core.sets.formats import format_of
from stages.writer import make_shard

TOPK = {"kind": "topk", "k": 3, "bits": 8}
CONTRACT = {"kind": "digits", "image": {"size": 8, "views": "random_resized_crop", "scale": [0.3, 1.0]}}
CASES = {  # name → (set config, source)
    "views": ({"sampler": {"kind": "views"}, "samples": 400, "samples_per_shard": 200, "targets": TOPK}, CONTRACT),
    "mix": ({"sampler": {"kind": "mix"}, "samples": 300, "samples_per_shard": 150, "targets": TOPK},
            {"kind": "digits"}),
}


def set_config(case: str, store: str) -> SetConfig:
    return SetConfig.model_validate({**CASES[case][0], "store": store})


def make(root: Path, teachers: list[Path], case: str, store: str) -> Path:
    out = root / f"{case}-{store}"
    generate_set_in(out, set_config(case, store), teachers, name=case, source=CASES[case][1])
    return out


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("packed")
    return {(case, store): make(root, teachers, case, store) for case in CASES for store in ("replay", "packed")}


def opened(set_dir: Path, case: str):
    return opened_set(set_dir, CASES[case][1])


def arrays(set_dir: Path, case: str) -> list:
    return trainer_arrays(set_dir, CASES[case][1])


def test_a_packed_set_gives_the_trainer_the_replay_sets_arrays_in_fewer_bytes(made) -> None:
    """Random-resized-crop views of an image contract (boxes in the raw images' pixel grid):
    images, quantised targets and labels equal to the replay set's, each record a third the size."""
    replay, packed = (arrays(made["views", store], "views") for store in ("replay", "packed"))
    for a, b in zip(replay, packed, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert sum(len(a.images) for a in packed) == 400 and np.isfinite(packed[0].target).all()
    indexes = {store: json.loads((made["views", store] / sx.INDEX_NAME).read_text()) for store in ("replay", "packed")}
    packing = indexes["packed"]["replay"]["packing"]
    assert indexes["packed"]["format"] == 3 and indexes["replay"]["format"] == 2  # format 3 added packed sets
    assert indexes["packed"]["image"]["encoding"] == "packed" and packing["side"] == 8 and packing["value_bits"] == 8
    assert indexes["packed"]["replay"]["record_bytes"] == packing["row_bytes"]
    assert packing["row_bytes"] * 2 < indexes["replay"]["replay"]["record_bytes"]
    sizes = {store: sum(p.stat().st_size for p in (made["views", store] / sx.SHARDS_DIR).iterdir())
             for store in ("replay", "packed")}
    assert sizes["packed"] == 2 * (128 + 200 * packing["row_bytes"])  # two .npy files: header and rows only
    # no manifest.parquet: the records are the manifest, and they give the replay set's, column for column
    assert not (made["views", "packed"] / sx.MANIFEST_NAME).exists()
    assert sorted(p.name for p in made["views", "packed"].iterdir()) == ["_fingerprint", "index.json", "shards"]
    replay_manifest = sx.read_manifest(made["views", "replay"]).to_pydict()
    rebuilt = opened(made["views", "packed"], "views").shard_format.manifest(str(made["views", "packed"]),
                                                                             sx.read_index(made["views", "packed"]))
    assert list(rebuilt) == list(replay_manifest) and len(rebuilt["key"]) == 400
    for name, column in replay_manifest.items():
        if name != "target_kl":  # NaN λ compare equal here
            np.testing.assert_array_equal(np.asarray(rebuilt[name]), np.asarray(column), err_msg=name)
    kl, packed_kl = np.asarray(replay_manifest["target_kl"]), np.asarray(rebuilt["target_kl"])
    assert np.all(np.abs(packed_kl - kl) <= 0.04 * kl + 1e-6)  # on its 8-bit log grid


def test_a_packed_mix_sets_rebuilt_images_are_the_ones_its_teachers_labelled(made, teachers, tmp_path) -> None:
    """λ is drawn on the 1/255 grid the bits hold, before the image is made: the trainer's rebuilt
    images are, bit for bit, the images make_shard gave the teachers."""
    set_dir = made["mix", "packed"]
    spec = plan_in(tmp_path / "plan", set_config("mix", "packed"), teachers, name="mix").spec
    decoded = arrays(set_dir, "mix")
    for shard, shard_arrays in enumerate(decoded):
        labelled, drawn, _ = make_shard(spec, shard)
        np.testing.assert_array_equal(shard_arrays.images, labelled)
        steps = np.array([params["lam"] for _, params in drawn]) * LAM_STEPS
        np.testing.assert_array_equal(steps, np.rint(steps))
    # the unpacked replay set draws λ anywhere in [0, 1]: its images are other blends
    assert not np.array_equal(arrays(made["mix", "replay"], "mix")[0].images, decoded[0].images)


def test_packed_shards_are_deterministic(made, teachers, tmp_path) -> None:
    again = make(tmp_path, teachers, "mix", "packed")
    assert snapshot(again) == snapshot(made["mix", "packed"])


def test_a_resumed_packed_set_keeps_its_committed_shard_and_ends_in_the_same_bytes(made, teachers, tmp_path) -> None:
    """A killed run left shard 0 and nothing else: the next run reads its records back (the
    index's statistics come from them), keeps it, makes shard 1 — the bytes of an unbroken run."""
    import shutil

    whole = made["mix", "packed"]
    broken = tmp_path / "mix-packed"
    shutil.copytree(whole, broken)
    for name in (sx.INDEX_NAME, "shards/shard-000001.npy"):
        (broken / name).unlink()
    kept = (broken / "shards" / "shard-000000.npy").stat().st_mtime_ns
    generate_set_in(broken, set_config("mix", "packed"), teachers, name="mix", source=CASES["mix"][1])
    assert (broken / "shards" / "shard-000000.npy").stat().st_mtime_ns == kept  # reused, not remade
    assert snapshot(broken) == snapshot(whole)


def test_verify_and_inspect_read_a_packed_set_and_verify_finds_a_damaged_record(made, tmp_path) -> None:
    import shutil

    set_dir = made["mix", "packed"]
    checked = transferset("verify", set_dir, cwd=tmp_path)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    shown = transferset("inspect", set_dir, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    row_bytes = json.loads((set_dir / sx.INDEX_NAME).read_text())["replay"]["packing"]["row_bytes"]
    assert f"replay records: {row_bytes} B a sample" in shown.stdout

    copy = tmp_path / "mix"
    shutil.copytree(set_dir, copy)
    shard_format = opened(copy, "mix").shard_format
    path = copy / sx.SHARDS_DIR / "shard-000001.npy"
    records = shard_format.read_records(str(path))
    records["i"][5] = 2000  # 11 bits hold it; digits has 1437 training images
    np.save(path, shard_format.packer.pack(records))
    result = transferset("verify", copy, cwd=tmp_path)
    assert result.returncode == 1
    assert "sample 000001-000005: real image 2000 outside the source's 1437" in result.stdout + result.stderr


def test_a_packed_index_whose_bits_this_code_lays_out_otherwise_is_refused(made, tmp_path) -> None:
    import shutil

    copy = tmp_path / "views"
    shutil.copytree(made["views", "packed"], copy)
    index = json.loads((copy / sx.INDEX_NAME).read_text())
    index["replay"]["packing"]["bits"][0][1] += 1  # the first field one bit wider than this code packs it
    (copy / sx.INDEX_NAME).write_text(json.dumps(index))
    found = format_of(sx.read_index(copy)).checked(sx.read_index(copy))
    assert isinstance(found, str) and "other bits than this version reads" in found


JOB = mix_job("packed", "packed", TOPK, STUDENT)


@pytest.mark.e2e
def test_run_trains_a_student_on_a_packed_set(tmp_path) -> None:
    result = transferset("run", write_config(tmp_path / "job.yaml", JOB), "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    student = json.loads((tmp_path / "out" / "students" / "kd" / "seed-0" / "result.json").read_text())
    mix = student["seen"][0]
    assert student["steps"] == 20 and mix["set"] == "mix" and mix["samples"] == 512
    assert mix["distinct_samples"] == 512  # every packed record read and trained on
    assert json.loads((tmp_path / "out" / "sets" / "mix" / sx.INDEX_NAME).read_text())["image"]["encoding"] == "packed"


@pytest.mark.parametrize("change, needles", [
    ({"targets": {"kind": "topk", "k": 3}}, ["store: packed holds quantised top-k targets", "bits: 8"]),
    ({"targets": {"kind": "dense"}}, ["store: packed holds quantised top-k targets"]),
    ({"sampler": {"kind": "noise", "sigma": 0.1}},
     ["sets.mix: store: packed", "cannot be packed", "store: {kind: replay}"]),
    ({"store": {"kind": "packed", "image": "jpeg"}}, ["packed set stores no images"]),
])
def test_what_cannot_be_packed_stops_with_one_line(teachers, tmp_path, change, needles) -> None:
    raw = json.loads(json.dumps(JOB))
    raw["sets"]["mix"].update(change)
    raw["teachers"]["checkpoints"] = [str(teachers[0])]  # so the set is planned (the column check needs its source)
    before = tree(tmp_path)
    result = transferset_in_process("generate", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out",
                                    cwd=tmp_path)
    assert_one_error_line(result, needles)
    assert tree(tmp_path) == {**before, "job.yaml": (tmp_path / "job.yaml").read_bytes()}
