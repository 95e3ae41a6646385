"""Regression targets of a teacher ensemble: the moment-matched Gaussian of the members' mixture.

Members give (μ_m, s_m = log σ_m²). The mixture ½Σ N(μ_m, σ_m²) has mean μ = mean_m μ_m and
variance σ² = mean_m(σ_m² + μ_m²) − μ² = mean_m σ_m² + var_m μ_m: the aleatoric part (what each
member expects as noise) plus the epistemic part (how much the members disagree). We add the two
parts instead of subtracting μ², which loses every digit when the means are large. We store μ and
log σ² per output dimension (isotropic members give per-dimension variances once their means
disagree) and keep the two parts, averaged over dimensions, for the manifest. No Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GaussianOutput:
    """Per-sample Gaussian targets. Rows where ``valid`` is False must never be written."""

    mu: np.ndarray  # float32 (N, D)
    logvar: np.ndarray  # float32 (N, D): log of the mixture variance
    aleatoric: np.ndarray  # float32 (N,): mean over dims of mean_m σ_m²
    epistemic: np.ndarray  # float32 (N,): mean over dims of var_m μ_m
    valid: np.ndarray  # bool (N,)

    def __len__(self) -> int:
        return len(self.valid)


def gaussian_ensemble_targets(member_mu: torch.Tensor, member_logvar: torch.Tensor) -> GaussianOutput:
    """Targets from member outputs ``μ [M, N, D]`` and ``log σ² [M, N, D or 1]``, in float64."""
    if member_mu.ndim != 3 or member_logvar.ndim != 3:
        raise ValueError(f"member outputs must be [M, N, D], got {tuple(member_mu.shape)}, "
                         f"{tuple(member_logvar.shape)}")
    if member_logvar.shape[:2] != member_mu.shape[:2] or member_logvar.shape[2] not in (1, member_mu.shape[2]):
        raise ValueError(f"log-variance {tuple(member_logvar.shape)} does not fit means {tuple(member_mu.shape)}")
    mu = member_mu.detach().to("cpu", torch.float64)
    logvar = member_logvar.detach().to("cpu", torch.float64).expand_as(mu)
    valid = torch.isfinite(mu).all(2).all(0) & torch.isfinite(logvar).all(2).all(0)
    mu = torch.where(valid[None, :, None], mu, torch.zeros((), dtype=mu.dtype))
    logvar = torch.where(valid[None, :, None], logvar, torch.zeros((), dtype=mu.dtype))
    mean = mu.mean(0)
    aleatoric = logvar.exp().mean(0)  # [N, D]
    epistemic = mu.var(0, unbiased=False)  # [N, D], 0 for one member
    variance = aleatoric + epistemic
    finite = valid & torch.isfinite(variance.log()).all(1)  # σ² overflow or underflow to 0
    return GaussianOutput(
        mu=mean.float().numpy(),
        logvar=variance.log().float().numpy(),
        aleatoric=aleatoric.mean(1).float().numpy(),
        epistemic=epistemic.mean(1).float().numpy(),
        valid=finite.numpy(),
    )
