"""Integration on real CIFAR-10 images (skipped where cifar10-mini is absent):
KD from a transfer set of 32×32 RGB shards mixed with the real split, one loader worker."""


import numpy as np
import pytest
from conftest import CIFAR10_MINI
from transfer_fixtures import write_set

from core.config import KDConfig, ModelConfig, SourceConfig, TrainConfig
from core.sources import load_in_memory, load_source
from student.train import TrainRequest, train_model

CIFAR = CIFAR10_MINI

pytestmark = pytest.mark.skipif(not CIFAR.is_dir(), reason="cifar10-mini not present")


def test_kd_on_cifar_shards_mixed_with_the_real_split_learns(tmp_path):
    cfg = SourceConfig(kind="imagefolder", path=str(CIFAR))
    train, test = load_in_memory(load_source(cfg, "train")), load_source(cfg, "test")
    assert train.shape == (32, 32, 3) and len(train) == 5000 and train.flip and train.pad == 4
    probs = np.full((len(train), 10), 0.2 / 9)
    probs[np.arange(len(train)), train.labels] = 0.8  # a smoothed stand-in for a teacher
    write_set(tmp_path / "set", train.images(), np.log(probs), [None] * len(train), samples_per_shard=1000)
    request = TrainRequest(
        name="cifar", model=ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 16}),
        train=TrainConfig(steps=120, batch_size=64, lr=0.05, num_workers=1), objective="kd",
        kd=KDConfig(temperature=2.0, alpha=0.7), sets=[(str(tmp_path / "set"), 3.0), ("source", 1.0)],
        out_dir=tmp_path / "out", seed=0,
    )
    result = train_model(request, train, test)
    assert result["accuracy"] > 0.2  # chance is 0.1
    assert result["accuracy"] <= result["top5"] <= 1.0
