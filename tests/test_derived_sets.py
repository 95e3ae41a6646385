"""Derived packed sets (``store: {kind: packed, params: derived}``): records without parameter or
label bits, the parameters drawn again by the reader from ``(seed, shard, index)``. Such a set
gives the trainer the arrays of the same set packed with its parameters, bit for bit, in fewer
bytes (with ``select`` too); it resumes and repeats byte for byte; ``verify`` reads it; a reader
whose samplers draw otherwise, and a writer whose records would not re-derive, stop with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import transferset_in_process
from conftest import generate_set_in, plan_in, snapshot
from pydantic import ValidationError
from replay_fixtures import opened_set, trainer_arrays

import core.sets.packed_shards as packed_shards
from core.config import SetConfig
from core.errors import FormatError, UserError
from core.sets import index as sx

TOPK = {"kind": "topk", "k": 3, "bits": 8}
CONTRACT = {"kind": "digits", "image": {"size": 8, "views": "random_resized_crop", "scale": [0.3, 1.0]}}
CASES = {  # name → (set config, source)
    "views": ({"sampler": {"kind": "views", "views": 2}, "samples": 300, "samples_per_shard": 128, "targets": TOPK},
              CONTRACT),
    "mix": ({"samplers": [{"kind": "mix", "share": 0.5}, {"kind": "views", "share": 0.5}], "samples": 300,
             "samples_per_shard": 128, "targets": TOPK}, {"kind": "digits"}),
    "select": ({"sampler": {"kind": "mix"}, "samples": 200, "samples_per_shard": 100, "targets": TOPK,
                "select": {"by": "entropy", "keep": 0.5}}, {"kind": "digits"}),
}
STORES = {"stored": {"kind": "packed"}, "derived": {"kind": "packed", "params": "derived"}}


def set_config(case: str, store: str) -> SetConfig:
    return SetConfig.model_validate({**CASES[case][0], "store": STORES[store]})


def make(root: Path, teachers: list[Path], case: str, store: str) -> Path:
    out = root / f"{case}-{store}"
    generate_set_in(out, set_config(case, store), teachers, name=case, source=CASES[case][1])
    return out


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("derived")
    return {(case, store): make(root, teachers, case, store) for case in CASES for store in STORES}


def opened(set_dir: Path, case: str):
    return opened_set(set_dir, CASES[case][1])


def arrays(set_dir: Path, case: str) -> list:
    return trainer_arrays(set_dir, CASES[case][1])


def names_of_params(names: list[str]) -> set[str]:
    """The parameter and label fields of a stored packed row: those between its index (and
    candidate) and its target's first field."""
    start = names.index("candidate") + 1 if "candidate" in names else 1
    end = next(i for i, name in enumerate(names) if name == "classes")
    return set(names[start:end])


@pytest.mark.parametrize("case", list(CASES))
def test_a_derived_set_gives_the_trainer_the_stored_sets_arrays_in_fewer_bytes(made, case) -> None:
    stored, derived = (arrays(made[case, store], case) for store in STORES)
    assert len(stored) == len(derived) >= 2
    for a, b in zip(stored, derived, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert sum(len(a.images) for a in derived) == CASES[case][0]["samples"]
    if case == "views":
        assert (derived[0].labels >= 0).all()  # the real label, taken from the source
    packing = {store: json.loads((made[case, store] / sx.INDEX_NAME).read_text())["replay"]["packing"]
               for store in STORES}
    assert packing["derived"]["params"] == "derived" and len(packing["derived"]["check"]) == 16
    assert "params" not in packing["stored"] and "check" not in packing["stored"]
    names = [name for name, _, _ in packing["derived"]["bits"]]
    stored_names = [name for name, _, _ in packing["stored"]["bits"]]
    assert names == [name for name in stored_names if name in ("index", "candidate") or name not in names_of_params(
        stored_names)]
    assert "label" not in names and ("candidate" in names) == (case == "select")
    assert packing["derived"]["row_bytes"] < packing["stored"]["row_bytes"]
    sizes = {store: sum(p.stat().st_size for p in (made[case, store] / sx.SHARDS_DIR).iterdir()) for store in STORES}
    shards = len(derived)
    assert sizes["derived"] == shards * 128 + CASES[case][0]["samples"] * packing["derived"]["row_bytes"]


def test_a_derived_sets_manifest_is_the_stored_sets(made) -> None:
    """``inspect``'s table (rebuilt from the records) holds the same parameters, labels and statistics."""
    tables = {}
    for store in STORES:
        set_dir = made["mix", store]
        tables[store] = opened(set_dir, "mix").shard_format.manifest(str(set_dir), sx.read_index(set_dir))
    assert list(tables["derived"]) == list(tables["stored"]) and len(tables["derived"]["key"]) == 300
    for name, column in tables["stored"].items():
        found, expected = np.asarray(tables["derived"][name]), np.asarray(column)
        if expected.dtype.kind == "f":
            assert np.array_equal(found, expected, equal_nan=True), name
        else:
            assert found.tolist() == expected.tolist(), name


def test_derived_shards_repeat_and_resume_byte_for_byte(made, teachers, tmp_path) -> None:
    whole = made["views", "derived"]
    assert snapshot(make(tmp_path, teachers, "views", "derived")) == snapshot(whole)
    broken = tmp_path / "broken"
    shutil.copytree(whole, broken)
    for name in (sx.INDEX_NAME, "shards/shard-000002-000044.npy"):
        (broken / name).unlink()
    generate_set_in(broken, set_config("views", "derived"), teachers, name="views", source=CASES["views"][1])
    assert snapshot(broken) == snapshot(whole)


def test_verify_reads_a_derived_set_and_refuses_one_whose_check_another_version_wrote(made, tmp_path) -> None:
    set_dir = tmp_path / "set"
    shutil.copytree(made["mix", "derived"], set_dir)
    checked = transferset_in_process("verify", set_dir, cwd=tmp_path)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    index = json.loads((set_dir / sx.INDEX_NAME).read_text())
    index["replay"]["packing"]["check"] = "0" * 16
    (set_dir / sx.INDEX_NAME).write_text(json.dumps(index))
    refused = transferset_in_process("verify", set_dir, cwd=tmp_path)
    assert refused.returncode == 1 and "samplers draw other ones" in refused.stdout + refused.stderr, refused.stdout


def test_a_reader_whose_samplers_draw_otherwise_refuses_the_set(made, monkeypatch) -> None:
    drawn = packed_shards.draw_shard

    def other_flips(*args, **kwargs):
        return [(kind, {**params, "aug": {**params["aug"], "flip": 1 - params["aug"]["flip"]}})
                if "aug" in params else (kind, params) for kind, params in drawn(*args, **kwargs)]

    monkeypatch.setattr(packed_shards, "draw_shard", other_flips)
    with pytest.raises(UserError, match="samplers draw other ones"):
        opened(made["mix", "derived"], "mix")


def test_records_that_would_not_re_derive_are_never_written(made, teachers, tmp_path) -> None:
    plan = plan_in(tmp_path / "plan", set_config("mix", "derived"), teachers, name="mix")
    shard_format = plan.spec.shard_format
    records = opened(made["mix", "derived"], "mix").shard_format.read_records(
        str(made["mix", "derived"] / sx.SHARDS_DIR / "shard-000000.npy"))
    shard_format.check_records(0, records)  # what the writer stored re-derives
    for name in ("i", "label") if "label" in records.dtype.names else ("i",):
        damaged = records.copy()
        damaged[name][0] = (damaged[name][0] + 1) % 10
        with pytest.raises(FormatError, match=f"its {name} column does not re-derive"):
            shard_format.check_records(0, damaged)


def test_derived_parameters_are_a_packed_stores_option_only() -> None:
    for kind in ("replay", "pixels"):
        with pytest.raises(ValidationError, match="params: derived re-derives a packed set's parameters"):
            SetConfig.model_validate({**CASES["mix"][0], "store": {"kind": kind, "params": "derived"}})
    assert set_config("mix", "stored").store.unused_keys() >= {"params"}  # a stored set's fingerprint is unchanged
    assert "params" not in set_config("mix", "derived").store.unused_keys()
