"""Moment-matched ensemble targets against a Monte-Carlo estimate of the mixture and direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.tasks.regression import gaussian_ensemble_targets


def test_moments_equal_a_monte_carlo_estimate_of_the_mixture() -> None:
    rng = np.random.default_rng(0)
    members, samples, dims = 4, 3, 2
    mu = rng.normal(0, 2, (members, samples, dims))
    logvar = rng.normal(-1, 0.7, (members, samples, dims))
    out = gaussian_ensemble_targets(torch.from_numpy(mu), torch.from_numpy(logvar))
    draws = 400_000
    component = rng.integers(0, members, draws)  # the mixture: pick a member, then sample it
    for n in range(samples):
        x = mu[component, n] + np.exp(0.5 * logvar[component, n]) * rng.standard_normal((draws, dims))
        np.testing.assert_allclose(out.mu[n], x.mean(0), atol=0.02)
        np.testing.assert_allclose(np.exp(out.logvar[n]), x.var(0), rtol=0.02)


def test_parts_follow_their_definitions_and_isotropic_members_broadcast() -> None:
    rng = np.random.default_rng(1)
    mu = rng.normal(0, 1, (3, 50, 2))
    logvar = rng.normal(0, 0.5, (3, 50, 1))  # isotropic members: one log σ² for both dims
    out = gaussian_ensemble_targets(torch.from_numpy(mu), torch.from_numpy(logvar))
    aleatoric = np.exp(logvar).mean(0)[:, 0]
    epistemic = mu.var(0).mean(1)
    np.testing.assert_allclose(out.aleatoric, aleatoric, rtol=1e-5)
    np.testing.assert_allclose(out.epistemic, epistemic, rtol=1e-5)
    np.testing.assert_allclose(np.exp(out.logvar), np.exp(logvar).mean(0) + mu.var(0), rtol=1e-5)
    assert out.mu.shape == out.logvar.shape == (50, 2) and out.valid.all()


def test_one_member_is_its_own_gaussian_and_large_means_keep_their_variance() -> None:
    mu = torch.full((1, 4, 2), 3.0)
    logvar = torch.full((1, 4, 2), -2.0)
    out = gaussian_ensemble_targets(mu, logvar)
    np.testing.assert_allclose(out.logvar, -2.0, atol=1e-6)
    assert (out.epistemic == 0).all()
    # Means of 1e8 with σ² = 1e-4: E[x²] − μ² would cancel to garbage; the parts do not.
    big = gaussian_ensemble_targets(torch.full((2, 1, 1), 1e8, dtype=torch.float64),
                                    torch.full((2, 1, 1), np.log(1e-4), dtype=torch.float64))
    assert np.exp(big.logvar[0, 0]) == pytest.approx(1e-4, rel=1e-5)


def test_non_finite_members_mark_the_sample_invalid() -> None:
    mu = torch.zeros(2, 3, 2)
    logvar = torch.zeros(2, 3, 1)
    mu[1, 0, 1] = float("nan")
    logvar[0, 2, 0] = float("inf")
    out = gaussian_ensemble_targets(mu, logvar)
    assert out.valid.tolist() == [False, True, False]
    assert np.isfinite(out.mu).all() and np.isfinite(out.logvar).all()
