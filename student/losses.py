"""Training losses: distillation from stored teacher log-probabilities, and CutMix for ERM.

The loss of a sample depends on what it carries: every sample has the teacher's log p̄ (the KL
term); only real images carry a label (the CE term).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.format import LOGP_FLOOR


def kd_loss(
    student_logits: torch.Tensor, teacher_logp: torch.Tensor, labels: torch.Tensor,
    temperature: float, alpha: float,
) -> torch.Tensor:
    """Mean over the batch of ``τ²·KL(softmax(log p̄/τ) ‖ softmax(z/τ)) + α·CE(z, y)·[y ≥ 0]``.

    Stored log-probs are temperature-free, so the teacher at τ is ``softmax(log p̄ / τ)``; the τ²
    factor keeps gradient magnitudes comparable across temperatures (Hinton et al.). The CE
    term is a per-sample loss like the KL term, so it is summed over labelled samples and
    divided by the whole batch size: a sample without a label contributes zero, and the CE
    weight of a labelled sample does not depend on how many other samples in the batch happen
    to carry labels.
    """
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half precision → float32
    logits = student_logits.to(dtype)
    teacher = torch.log_softmax(teacher_logp.to(dtype).clamp_min(LOGP_FLOOR) / temperature, dim=1)
    student = torch.log_softmax(logits / temperature, dim=1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=1)
    loss = temperature**2 * kl
    if alpha:
        labelled = labels >= 0
        ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        loss = loss + alpha * torch.where(labelled, ce, torch.zeros_like(ce))
    return loss.mean()


def cutmix(
    images: torch.Tensor, labels: torch.Tensor, rng: torch.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019) on an NCHW batch: paste a box of a shuffled partner into every image.

    λ ~ Beta(α, α) (U[0, 1] for α = 1); the box has area ≈ (1 − λ)·H·W around a uniform centre and
    is clipped at the border, so λ is recomputed from the clipped box: the returned ``lam`` is
    exactly the fraction of each image that kept its own pixels.
    Returns ``(mixed, labels_a, labels_b, lam)``; train with :func:`cutmix_loss`.
    """
    n, _, height, width = images.shape
    if alpha == 1.0:
        lam = float(torch.rand((), generator=rng))
    else:
        seed = int(torch.randint(0, 2**62, (), generator=rng))
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
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


def cutmix_loss(
    logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float
) -> torch.Tensor:
    """``lam·CE(z, a) + (1 − lam)·CE(z, b)``, each averaged over the batch."""
    return lam * F.cross_entropy(logits, labels_a) + (1.0 - lam) * F.cross_entropy(logits, labels_b)
