"""Optimizers and learning-rate schedules of the papers' supplements.

SGD with (Nesterov) momentum and a multistep schedule (XCL A.2–A.3, Self-Guidance, seed 004),
cosine with linear warm-up (XCL A.5), Adam (XCL A.1, A.4). The schedule is a pure function of
the step, so a resumed run needs nothing but the step to continue it.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from core.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for 0-based ``step``: linear warm-up, then cosine to 0,
    constant, or ×gamma at each milestone (fractions of ``cfg.steps``, scaled with the run as
    seed 004 scales its epochs)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        passed = bisect.bisect_right([round(m * cfg.steps) for m in cfg.milestones], step)
        return cfg.gamma**passed
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999),
                                weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
