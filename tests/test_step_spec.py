"""A finished step's spec.json is compared as the JSON it was written as: a job whose config holds
tuples (an image contract's scale, ratio and size) reuses its trained teachers on a rerun instead
of training them again (it did not before: the recorded lists never equalled the tuples)."""

from __future__ import annotations

from pathlib import Path

from core.config import parse_config
from pipeline.train.members import member_seed, member_spec
from pipeline.train.step_spec import mark_done, reusable

CONTRACT_JOB = {
    "name": "contract", "seed": 0,
    "source": {"kind": "digits", "image": {"size": [8, 8], "views": "random_resized_crop", "scale": [0.5, 1.0]}},
    "teachers": {"model": {"arch": "tiny_cnn"}, "members": 1, "train": {"steps": 5}},
    "sets": {}, "students": {},
}


def test_a_step_made_from_a_spec_with_tuples_is_reused_and_a_changed_one_is_not(tmp_path: Path) -> None:
    cfg = parse_config(CONTRACT_JOB)
    spec = member_spec(cfg, member_seed(cfg, 0))
    assert isinstance(spec["source"]["image"]["scale"], tuple)  # what made the comparison fail
    (tmp_path / "model.pt").write_bytes(b"weights")
    mark_done(tmp_path, spec)
    assert reusable(tmp_path, spec, "model.pt")
    image = {**CONTRACT_JOB["source"]["image"], "scale": [0.6, 1.0]}
    other = parse_config({**CONTRACT_JOB, "source": {**CONTRACT_JOB["source"], "image": image}})
    assert not reusable(tmp_path, member_spec(other, member_seed(other, 0)), "model.pt")
    assert not reusable(tmp_path, spec, "missing.pt")
