"""Run under torchrun by tests/test_ddp.py: one KD student on digits from the set given."""

import sys
from pathlib import Path

from core.config import KDConfig, ModelConfig, SourceConfig, TrainConfig
from core.sources import load_source
from student.train import train_model

out_dir, set_dir = Path(sys.argv[1]), sys.argv[2]
source = SourceConfig(kind="digits")
train_model(
    name="ddp", model_cfg=ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 6}),
    train_cfg=TrainConfig(steps=30, batch_size=32, num_workers=1, shuffle_window=64),
    objective="kd", kd_cfg=KDConfig(temperature=4.0, alpha=1.0), sets=[(set_dir, 1.0)],
    train_source=load_source(source, "train"), test_source=load_source(source, "test"), out_dir=out_dir, seed=0,
)
