"""Regression objectives (XCL §4.1): ERM with the Gaussian NLL (eq 5) or MSE, and distillation
from stored Gaussian targets with the KL between Gaussians (eq 6) or MSE to the teacher's μ.

A regression model outputs μ (D values) then s = log σ² (1 or D values); the transfer sets'
targets reach the trainer as one row ``[μᵗ, log σᵗ²]`` of 2·D values per sample (see
:mod:`student.shards`). With MixUp or CutMix, ERM's target is the λ-weighted mean of the two
targets — MixUp's linear label, as XCL's teachers are trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.config import SOURCE_SET, KDConfig, ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.models import split_gaussian
from stages.sources import Source
from student.losses import gaussian_kl, gaussian_nll, mse_loss
from student.objectives import ERMObjective, KDObjective


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

    def __init__(self, out_dim: int, *args: Any) -> None:
        super().__init__(*args)
        self.out_dim = out_dim

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        x, target, partner, lam = self.next_batch()
        if lam is not None:
            target = lam * target + (1.0 - lam) * partner
        return self.loss(model, x, lambda z: erm_loss(z, target, self.out_dim, self.cfg.regression_loss)), {}


class RegressionKD(KDObjective):
    """Distillation from streamed regression sets with ``kd.regression_loss`` (eq 6 or MSE)."""

    def __init__(self, out_dim: int, *args: Any) -> None:
        super().__init__(*args)
        self.out_dim = out_dim

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.next_batch()
        x = self.to_input(batch["image"])
        teacher = batch["logp"].to(self.device, non_blocking=True)
        self.counts.add(batch["origin"], batch["origin"])
        return self.loss(model, x, lambda z: kd_loss(z, teacher, self.out_dim, self.kd.regression_loss)), {}


# ---------------------------------------------------------------- what train_model needs


def check_options(name: str, objective: str, train_cfg: TrainConfig, kd_cfg: KDConfig | None,
                  real_weight: float) -> None:
    """Refuse the options that are defined for classification only, before anything is written."""
    used = []
    if train_cfg.self_guidance is not None:
        used.append("train.self_guidance")
    if train_cfg.class_balanced:
        used.append("train.class_balanced")
    if train_cfg.label_smoothing:
        used.append("train.label_smoothing")
    if objective == "kd" and kd_cfg is not None:
        if kd_cfg.pick is not None:
            used.append("kd.pick")
        if kd_cfg.alpha != 1.0:
            used.append("kd.alpha (regression distillation has no real-label term: set kd.alpha: 1)")
        if real_weight > 0:
            used.append(f"the real split as set {SOURCE_SET!r} (it carries no teacher Gaussian)")
    if used:
        raise UserError(f"{name}: a regression model does not take {', '.join(used)}")


def head(model_cfg: ModelConfig, source: Source) -> dict[str, int]:
    """The checkpoint's regression head: μ of the target's D values, then 1 or D log-variances."""
    return {"out_dim": source.out_dim, "logvar_dim": 1 if model_cfg.logvar == "isotropic" else source.out_dim}


def headline(final: dict[str, Any]) -> dict[str, Any]:
    """What result.json keeps of the last evaluation."""
    return {k: final[k] for k in ("error", "error_median", "metric", "rmse", "nll", "calibration_error",
                                  "z2_ratio", "sigma_mean") if k in final}
