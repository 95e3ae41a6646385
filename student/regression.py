"""Regression objectives (XCL §4.1): ERM with the Gaussian NLL (eq 5) or MSE, and distillation
from stored Gaussian targets with the KL between Gaussians (eq 6) or MSE to the teacher's μ.

A regression model outputs μ (D values) then s = log σ² (1 or D values); the transfer sets'
targets reach the trainer as one row ``[μᵗ, log σᵗ²]`` of 2·D values per sample in the stream's
``target`` slot (see :mod:`student.shards`). The options a regression student refuses are the
task's (:meth:`core.tasks.regression.RegressionTask.check_student`). With MixUp or CutMix,
ERM's target is the λ-weighted mean of the two targets — MixUp's linear label, as XCL's teachers
are trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.tasks.regression import split_gaussian
from student.losses import gaussian_kl, gaussian_nll, mse_loss
from student.objectives import ERMObjective, KDObjective
from student.shards import SetShards
from student.stream import RealPart


def erm_loss(outputs: torch.Tensor, target: torch.Tensor, out_dim: int, loss: str) -> torch.Tensor:
    mu, log_var = split_gaussian(outputs, out_dim)
    return gaussian_nll(mu, log_var, target) if loss == "nll" else mse_loss(mu, target)


def kd_loss(outputs: torch.Tensor, teacher: torch.Tensor, out_dim: int, loss: str) -> torch.Tensor:
    """Distillation from a teacher row ``[μᵗ, log σᵗ²]``: eq 6, or MSE of μ (plain KD)."""
    mu, log_var = split_gaussian(outputs, out_dim)
    mu_t, log_var_t = split_gaussian(teacher, out_dim)
    return gaussian_kl(mu_t, log_var_t, mu, log_var) if loss == "gaussian_kl" else mse_loss(mu, mu_t)


class RegressionERM(ERMObjective):
    """ERM on the real split's float targets with ``train.regression_loss`` (NLL or MSE)."""

    def __init__(self, real: RealPart, *args: Any) -> None:
        super().__init__(real, *args)
        self.out_dim = real.source.out_dim

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        x, target, partner, lam = self.next_batch()
        if lam is not None:
            target = lam * target + (1.0 - lam) * partner
        return self.loss(model, x, lambda z: erm_loss(z, target, self.out_dim, self.cfg.regression_loss)), {}


class RegressionKD(KDObjective):
    """Distillation from streamed regression sets with ``kd.regression_loss`` (eq 6 or MSE); the
    stream's target rows are ``[μᵗ, log σᵗ²]``."""

    def __init__(self, sets: list[SetShards], *args: Any) -> None:
        super().__init__(sets, *args)
        self.out_dim = sets[0].outputs

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.next_batch()
        x = self.to_input(batch["image"])
        teacher = batch["target"].to(self.device, non_blocking=True)
        self.counts.add(batch["origin"], batch["origin"])
        return self.loss(model, x, lambda z: kd_loss(z, teacher, self.out_dim, self.kd.regression_loss)), {}
