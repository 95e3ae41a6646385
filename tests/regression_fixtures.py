"""Tiny regression teachers and a tiny gaze source, for the regression tests."""

from __future__ import annotations

from pathlib import Path

import torch

from core.config import SourceConfig
from core.models import TinyCNN, save_checkpoint
from core.sources import load_source
from student.data import source_input_spec
from student.losses import gaussian_nll


def gaze_config(cache: Path, samples: int = 96, test_samples: int = 32) -> SourceConfig:
    return SourceConfig(kind="gaze", samples=samples, test_samples=test_samples, path=str(cache), pad=2)


def build_regression_teachers(directory: Path, source_cfg: SourceConfig, members: int = 2, steps: int = 20,
                              logvar_dims: tuple[int, ...] = (1, 2)) -> list[Path]:
    """TinyCNN Gaussian heads trained a few Adam steps with the NLL on the gaze source (seeded).
    Members alternate isotropic and per-dimension log-variances, so both kinds form one ensemble."""
    source = load_source(source_cfg, "train")
    spec = source_input_spec(source)
    mean, std = spec["mean"][0], spec["std"][0]
    x = (torch.from_numpy(source.images()).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    y = torch.from_numpy(source.targets)
    paths = []
    for member in range(members):
        torch.manual_seed(member)
        logvar_dim = logvar_dims[member % len(logvar_dims)]
        model = TinyCNN(1, 2 + logvar_dim, width=4)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            batch = torch.randint(0, len(y), (32,))
            out = model(x[batch])
            loss = gaussian_nll(out[:, :2], out[:, 2:], y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        path = directory / f"gaze-{member}.pt"
        save_checkpoint(path, model.eval(), arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=0, input=spec,
                        task="regress", head={"out_dim": 2, "logvar_dim": logvar_dim})
        paths.append(path)
    return paths
