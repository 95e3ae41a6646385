"""Inputs and outputs at fsspec URLs (``memory://`` stands in for ``s3://``): sources read from a
URL equal the same files read locally, a student trains from a set at a URL to the same weights,
``generate --out`` takes a URL, and ``run`` refuses one with a one-line error."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from cli_runner import transferset_in_process
from PIL import Image

from core.config import KDConfig, ModelConfig, SourceConfig, TrainConfig, parse_config
from core.errors import UserError
from core.models import read_checkpoint
from core.sources import load_source
from core.sources.readers import read_imagefolder, read_npz
from pipeline.chain import generate_sets
from pipeline.inspect.verify import verify_set
from student.train import TrainRequest, train_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/remote-test"):
        fs.rm("/remote-test", recursive=True)


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagefolder_and_npz_at_a_url_equal_the_local_files(tmp_path, memory_fs) -> None:
    _image_folder(tmp_path / "folder")
    memory_fs.put(str(tmp_path / "folder"), "/remote-test/folder", recursive=True)
    for split in ("train", "test"):
        local = read_imagefolder(SourceConfig(kind="imagefolder", path=str(tmp_path / "folder")), split)
        remote = read_imagefolder(SourceConfig(kind="imagefolder", path="memory://remote-test/folder"), split)
        assert remote.classes == local.classes == ["cat", "dog"]
        assert remote.identity == local.identity  # same listing: the same fingerprint as a local copy
        assert np.array_equal(remote.labels, local.labels) and np.array_equal(remote.images(), local.images())

    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(20) % 4)
    memory_fs.put(str(tmp_path / "data.npz"), "/remote-test/data.npz")
    local = read_npz(SourceConfig(kind="npz", path=str(tmp_path / "data.npz")), "train")
    remote = read_npz(SourceConfig(kind="npz", path="memory://remote-test/data.npz"), "train")
    assert remote.identity == local.identity and np.array_equal(remote.images(), local.images())


def test_bad_files_at_a_url_are_one_line_errors(tmp_path, memory_fs) -> None:
    _image_folder(tmp_path / "folder")
    memory_fs.put(str(tmp_path / "folder"), "/remote-test/folder", recursive=True)
    memory_fs.pipe_file("/remote-test/folder/train/cat/1.png", b"not a png")
    source = read_imagefolder(SourceConfig(kind="imagefolder", path="memory://remote-test/folder"), "train")
    with pytest.raises(UserError, match=r"^image memory://remote-test/folder/train/cat/1.png: unreadable \(not an "):
        source.image(1)
    with pytest.raises(UserError, match="memory://remote-test/none.npz is not a file"):
        read_npz(SourceConfig(kind="npz", path="memory://remote-test/none.npz"), "train")
    memory_fs.pipe_file("/remote-test/folder/train/empty/readme.txt", b"no images here")
    with pytest.raises(UserError, match="class folder memory://remote-test/folder/train/empty has no images"):
        read_imagefolder(SourceConfig(kind="imagefolder", path="memory://remote-test/folder"), "train")


def test_generate_into_a_url_and_train_a_student_from_it(ray_session, teachers, tmp_path, memory_fs) -> None:
    """``generate`` with a URL ``out``; the set copied to an object store trains a student to
    exactly the weights of the same set read from local disk."""
    cfg = parse_config({
        "name": "remote", "seed": 0, "source": {"kind": "digits"},
        "teachers": {"model": {"arch": "tiny_cnn"}, "members": len(teachers), "train": {"steps": 1},
                     "checkpoints": [str(p) for p in teachers]},
        "ray": {"num_cpus": 2}, "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": 96, "samples_per_shard": 48}},
        "students": {},
    })
    made = generate_sets(cfg, f"file://{tmp_path}/job", teachers, lambda _: None)["mix"]
    assert made["set_dir"] == str(tmp_path / "job" / "sets" / "mix") and made["samples"] == 96  # file:// is local
    assert verify_set(made["set_dir"]) == []
    memory_fs.put(str(tmp_path / "job" / "sets" / "mix"), "/remote-test/sets/mix", recursive=True)
    assert verify_set("memory://remote-test/sets/mix") == []

    source = SourceConfig(kind="digits")
    train, test = load_source(source, "train"), load_source(source, "test")

    def weights(set_dir: str, out: Path) -> dict[str, torch.Tensor]:
        train_model(TrainRequest(name="s", model=ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4}),
                                 train=TrainConfig(steps=12, batch_size=16, num_workers=0), objective="kd",
                                 kd=KDConfig(), sets=[(set_dir, 1.0)], out_dir=out, seed=3), train, test)
        return read_checkpoint(out / "model.pt")["state_dict"]

    local = weights(str(tmp_path / "job" / "sets" / "mix"), tmp_path / "local")
    remote = weights("memory://remote-test/sets/mix", tmp_path / "remote")
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)


def test_run_refuses_a_url_out_in_one_line(tmp_path) -> None:
    result = transferset_in_process("run", "examples/quickstart.yaml", "--out", "s3://bucket/job", cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: run --out s3://bucket/job: teachers and students are written to a local directory; "
        "only `transferset generate` writes to a URL (or give the set an `out:` URL)"]
