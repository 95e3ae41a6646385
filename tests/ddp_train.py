"""Run under torchrun by tests/test_ddp.py: one KD student on digits from the set given."""

import sys
from pathlib import Path

from core.config import KDConfig, ModelConfig, SourceConfig, TrainConfig
from core.sources import load_source
from student.train import TrainRequest, train_model

out_dir, set_dir = Path(sys.argv[1]), sys.argv[2]
source = SourceConfig(kind="digits")
request = TrainRequest(
    name="ddp", model=ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 6}),
    train=TrainConfig(steps=30, batch_size=32, num_workers=1, shuffle_window=64),
    objective="kd", kd=KDConfig(temperature=4.0, alpha=1.0), sets=[(set_dir, 1.0)], out_dir=out_dir, seed=0,
)
train_model(request, load_source(source, "train"), load_source(source, "test"))
