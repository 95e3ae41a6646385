"""Training losses: Hinton KD from stored teacher log-probabilities, ERM with label smoothing,
MixUp and CutMix (linear labels), Self-Guidance, and the Gaussian pair of XCL (eq 5, 6).

Every loss is a mean over the batch of per-sample losses, so a sample's weight never depends
on what else shares its batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core.records.format import LOGP_FLOOR


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # half precision → float32


def teacher_log_probs(teacher_logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher at temperature τ from temperature-free log p̄: ``log softmax(log p̄ / τ)``."""
    return torch.log_softmax(_float(teacher_logp).clamp_min(LOGP_FLOOR) / temperature, dim=1)


def kl_per_sample(teacher_log: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(p_T ‖ softmax(z/τ))`` per sample, with ``teacher_log`` = log p_T already at τ."""
    student = torch.log_softmax(_float(student_logits) / temperature, dim=1)
    return (teacher_log.exp() * (teacher_log - student)).sum(dim=1)


def sampled_cross_entropy(weights: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The sampled-class KD term per sample: ``−Σ_c w_c·log softmax(z/τ)_c`` with the stored
    importance weights ``w`` (drawn at τ; zero where no class was drawn) used as they are — never
    renormalised — so it is an unbiased estimate of the cross-entropy to the teacher at τ and its
    gradient ``(Σ_c w_c·s_c − w)/τ`` an unbiased estimate of the dense KL's. Its value is the KL
    plus the teacher's entropy at τ (the record cannot estimate that constant without bias), so it
    does not fall to 0 as the student learns."""
    student = torch.log_softmax(_float(student_logits) / temperature, dim=1)
    return -(_float(weights) * student).sum(dim=1)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample CE against ``1 − ε`` on the label and ``ε / (C − 1)`` on every other class
    (XCL supplement eq 1; note torch's ``label_smoothing`` spreads ε over all C classes)."""
    log_q = torch.log_softmax(_float(logits), dim=1)
    picked = log_q.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    if not smoothing:
        return -picked
    classes = logits.shape[1]
    others = log_q.sum(dim=1) - picked
    return -((1.0 - smoothing) * picked + smoothing / (classes - 1) * others)


def kd_loss(
    student_logits: torch.Tensor, teacher_logp: torch.Tensor, labels: torch.Tensor,
    temperature: float, alpha: float, has_target: torch.Tensor | None = None,
    weights: torch.Tensor | None = None, sampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton's KD, per sample: ``(1 − α)·CE(z, y)·[y ≥ 0] + α·τ²·KL(p_T^τ ‖ p_S^τ)·[has target]``,
    averaged over the batch.

    A sample without a real label (a mix, a generated image) gets the KL term only — never a
    mixed hard label (seed 004's rule for x′) — and its weight α·τ² does not depend on how many
    labelled samples share the batch. A sample without a teacher target (from the real split)
    gets the CE term only. ``α = 1`` is pure distillation; the τ² keeps gradient magnitudes
    comparable across temperatures. Rows where ``sampled`` is True take the term from their
    sampled-class ``weights`` instead (:func:`sampled_cross_entropy`: the same gradient in
    expectation), the others from ``teacher_logp``.
    """
    loss = torch.zeros(len(labels), dtype=torch.float32, device=student_logits.device)
    if alpha:
        teacher_log = teacher_log_probs(teacher_logp, temperature)
        kl = kl_per_sample(teacher_log, student_logits, temperature)
        if sampled is not None and weights is not None:
            estimate = sampled_cross_entropy(weights, student_logits, temperature)
            kl = torch.where(sampled, estimate, kl)
        if has_target is not None:
            kl = torch.where(has_target, kl, torch.zeros_like(kl))
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        ce = smoothed_cross_entropy(student_logits, labels)
        loss = loss + (1.0 - alpha) * torch.where(labels >= 0, ce, torch.zeros_like(ce))
    return loss.mean()


def self_guidance_kl(full_logits: torch.Tensor, sub_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Self-Guidance's distillation term ``τ²·KL(p_full ‖ p_sub)`` at τ, mean over the batch.

    The full network's prediction is the target and is detached: it learns from its own loss
    term, the sampled sub-network learns to match it (Self-Guidance eq 5 with the usual KD
    convention of a fixed target)."""
    target = torch.log_softmax(_float(full_logits.detach()) / temperature, dim=1)
    return temperature**2 * kl_per_sample(target, sub_logits, temperature).mean()


# ---------------------------------------------------------------- ERM mixing


def _beta(alpha: float, rng: torch.Generator) -> float:
    if alpha == 1.0:
        return float(torch.rand((), generator=rng))
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    images: torch.Tensor, labels: torch.Tensor, rng: torch.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018): ``λ·x + (1 − λ)·x[perm]``, λ ~ Beta(α, α), on float inputs.
    Returns ``(mixed, labels_a, labels_b, lam)``; train with :func:`mixed_label_loss`."""
    lam = _beta(alpha, rng)
    perm = torch.randperm(len(images), generator=rng).to(images.device)
    return lam * images + (1.0 - lam) * images[perm], labels, labels[perm.to(labels.device)], lam


def cutmix(
    images: torch.Tensor, labels: torch.Tensor, rng: torch.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019) on an NCHW batch: paste a box of a shuffled partner into every image.

    λ ~ Beta(α, α) (U[0, 1] for α = 1); the box has area ≈ (1 − λ)·H·W around a uniform centre and
    is clipped at the border, so λ is recomputed from the clipped box: the returned ``lam`` is
    exactly the fraction of each image that kept its own pixels.
    Returns ``(mixed, labels_a, labels_b, lam)``; train with :func:`mixed_label_loss`.
    """
    n, _, height, width = images.shape
    lam = _beta(alpha, rng)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (), generator=rng))
    cx = int(torch.randint(0, width, (), generator=rng))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    perm = torch.randperm(n, generator=rng).to(images.device)
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return mixed, labels, labels[perm.to(labels.device)], lam


def mixed_label_loss(
    logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, smoothing: float = 0.0,
) -> torch.Tensor:
    """The linear label of MixUp / CutMix: ``lam·CE(z, a) + (1 − lam)·CE(z, b)``, batch mean."""
    per_sample = (lam * smoothed_cross_entropy(logits, labels_a, smoothing)
                  + (1.0 - lam) * smoothed_cross_entropy(logits, labels_b, smoothing))
    return per_sample.mean()


cutmix_loss = mixed_label_loss  # the name the teachers' ERM path has always used


# ---------------------------------------------------------------- regression (XCL §4.1)


def gaussian_nll(mu: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """XCL eq 5, the teacher's loss: ``½·exp(−s)·‖μ − y‖² + (d/2)·s`` per sample with
    ``s = log σ²`` one value per sample (the isotropic Gaussian of the supplement's gaze model),
    mean over the batch. For d = 1 this is eq 5 as printed; for d > 1 the ``d/2`` keeps it the
    exact negative log-likelihood (up to a constant). ``log_var`` may also hold one value per
    dimension (a diagonal Gaussian): ``Σ_d ½·[exp(−s_d)·(μ_d − y_d)² + s_d]``."""
    mu, target = _float(mu).reshape(len(mu), -1), _float(target).reshape(len(mu), -1)
    s = _float(log_var).reshape(len(mu), -1).expand_as(mu)
    return (0.5 * (torch.exp(-s) * (mu - target).pow(2) + s)).sum(dim=1).mean()


def gaussian_kl(mu_t: torch.Tensor, log_var_t: torch.Tensor, mu_s: torch.Tensor,
                log_var_s: torch.Tensor) -> torch.Tensor:
    """XCL eq 6, the student's loss: ``KL(N(μᵗ, σᵗ²·I) ‖ N(μ, σ²·I)) =
    ½·[d·exp(sᵗ − s) + exp(−s)·‖μᵗ − μ‖² − d·(sᵗ − s) − d]`` per sample, mean over the batch
    (eq 6 as printed for d = 1; exact for any d). Either log-variance may hold one value per
    sample (isotropic) or one per dimension (diagonal, as the ensemble's moment-matched targets
    are): the KL is then the sum of the per-dimension terms."""
    n = len(mu_s)
    mu_t, mu_s = _float(mu_t).reshape(n, -1), _float(mu_s).reshape(n, -1)
    s_t = _float(log_var_t).reshape(n, -1).expand_as(mu_s)
    s = _float(log_var_s).reshape(n, -1).expand_as(mu_s)
    return (0.5 * (torch.exp(s_t - s) + torch.exp(-s) * (mu_t - mu_s).pow(2) - (s_t - s) - 1)).sum(dim=1).mean()


def mse_loss(mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖μ − y‖²`` per sample, mean over the batch: ERM's and plain KD's regression loss."""
    n = len(mu)
    return (_float(mu).reshape(n, -1) - _float(target).reshape(n, -1)).pow(2).sum(dim=1).mean()
