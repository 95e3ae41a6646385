"""Held-out evaluation of regression models: predicted Gaussians, the error the source names
(mean angular error in degrees for gaze, or euclidean distance), the Gaussian NLL, and the
calibration of σ.

Calibration: for a calibrated Gaussian N(μ, diag σ²) in D dimensions, z² = Σ_d (y_d − μ_d)²/σ_d²
follows χ²_D, so F_χ²_D(z²) is uniform on [0, 1]. ``calibration_error`` is the mean, over the
levels p = 0.05, 0.10, …, 0.95, of |fraction of samples with F(z²) ≤ p − p| (Kuleshov et al.
2018's calibration error for the central regions of a multivariate Gaussian); ``z2_ratio`` =
mean z² / D is above 1 when σ is too small (over-confident) and below 1 when it is too large.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from core.sources import Source
from core.sources.gaze import angular_error_degrees
from core.tasks.regression import gaussian_ensemble_targets, split_gaussian
from student.evaluate import eval_mode, forward, image_batches

LEVELS = np.linspace(0.05, 0.95, 19)


@torch.no_grad()
def predict_gaussians(models: list[nn.Module], input_specs: list[dict[str, Any]], images: Source | np.ndarray,
                      out_dim: int, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Members' predictions ``μ [M, N, D]`` and ``log σ² [M, N, D]`` (isotropic heads broadcast)
    on a split or a uint8 NHWC array, float64."""
    if not models or len(models) != len(input_specs):
        raise ValueError(f"need one input spec per model, got {len(models)} models, {len(input_specs)} specs")
    mus: list[list[torch.Tensor]] = [[] for _ in models]
    logvars: list[list[torch.Tensor]] = [[] for _ in models]
    with eval_mode(models):
        for batch in image_batches(images, batch_size):
            for m, (model, spec) in enumerate(zip(models, input_specs, strict=True)):
                mu, logvar = split_gaussian(forward(model, spec, batch), out_dim)
                mus[m].append(mu)
                logvars[m].append(logvar.expand_as(mu))
    if not len(images):
        empty = np.zeros((len(models), 0, out_dim))
        return empty, empty.copy()
    return (np.stack([torch.cat(chunks).numpy() for chunks in mus]),
            np.stack([torch.cat(chunks).numpy() for chunks in logvars]))


def ensemble_gaussian(mu: np.ndarray, logvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The moment-matched Gaussian of members ``[M, N, D]`` (one member: itself)."""
    out = gaussian_ensemble_targets(torch.from_numpy(mu), torch.from_numpy(logvar))
    return out.mu.astype(np.float64), out.logvar.astype(np.float64)


def errors(mu: np.ndarray, targets: np.ndarray, metric: str) -> np.ndarray:
    """Per-sample error: degrees between gaze directions (``angular``) or L2 distance."""
    if metric == "angular":
        return angular_error_degrees(mu, targets)
    return np.linalg.norm(np.asarray(mu, np.float64) - np.asarray(targets, np.float64), axis=1)


def sigma_of(logvar: np.ndarray) -> np.ndarray:
    """One σ per sample: √(mean over dimensions of σ_d²) (σ itself for an isotropic head)."""
    return np.sqrt(np.exp(np.asarray(logvar, np.float64)).mean(axis=-1))


def chi2_cdf(x: np.ndarray, dims: int) -> np.ndarray:
    from scipy.special import gammainc

    return gammainc(dims / 2.0, np.asarray(x, np.float64) / 2.0)


def regression_metrics(mu: np.ndarray, logvar: np.ndarray, targets: np.ndarray, metric: str) -> dict[str, Any]:
    """The eval row of a regression model: error (mean and median), RMSE, NLL, calibration."""
    mu, logvar, targets = (np.asarray(a, np.float64) for a in (mu, logvar, targets))
    if len(targets) == 0:
        return {"error": float("nan"), "metric": metric}
    dims = targets.shape[1]
    err = errors(mu, targets, metric)
    squared = (targets - mu) ** 2
    z2 = (squared * np.exp(-logvar)).sum(axis=1)
    nll = 0.5 * (dims * math.log(2 * math.pi) + logvar.sum(axis=1) + z2)
    uniform = chi2_cdf(z2, dims)
    calibration = float(np.mean([abs(float(np.mean(uniform <= p)) - p) for p in LEVELS]))
    return {
        "error": float(err.mean()), "error_median": float(np.median(err)), "metric": metric,
        "rmse": float(np.sqrt(squared.sum(axis=1).mean())), "nll": float(nll.mean()),
        "calibration_error": calibration, "z2_ratio": float(z2.mean() / dims),
        "sigma_mean": float(sigma_of(logvar).mean()),
    }


def evaluate_regression(models: list[nn.Module], input_specs: list[dict[str, Any]], source: Source,
                        out_dim: int) -> dict[str, Any]:
    """Metrics of one model or of an ensemble (its moment-matched Gaussian) on a split."""
    return evaluate_ensemble(models, input_specs, source, out_dim, members=False)[0]


def evaluate_ensemble(models: list[nn.Module], input_specs: list[dict[str, Any]], source: Source, out_dim: int,
                      members: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of the ensemble's moment-matched Gaussian and (``members``) of each member alone,
    from one pass of every model over the split."""
    if source.targets is None:
        raise ValueError(f"source {source.name} has no regression targets")
    mu, logvar = predict_gaussians(models, input_specs, source, out_dim)

    def score(mu: np.ndarray, logvar: np.ndarray) -> dict[str, Any]:
        return regression_metrics(*ensemble_gaussian(mu, logvar), source.targets, source.metric or "euclidean")

    alone = [score(mu[m:m + 1], logvar[m:m + 1]) for m in range(len(models))] if members else []
    return score(mu, logvar), alone
