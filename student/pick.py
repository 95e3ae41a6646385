"""``pick`` (seed 004, TLCutMix+pick §3.2): from r×B candidates keep the B the student finds hardest.

Candidates are scored with the student under no-grad by ``d = KL(p_T^τ ‖ p_S^τ)`` (eq 3), or by
the teacher's or the student's entropy; the B largest scores are trained on. The mean KL ratio
``r = mean(d of the picked) / mean(d of all candidates)`` (eq 4) goes to the metrics: r ≈ 1 means
picking finds nothing harder than a random batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from student.losses import kl_per_sample, teacher_log_probs

Criterion = Literal["kl", "teacher_entropy", "student_entropy"]


@torch.no_grad()
def scoring_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in its current mode, leaving batch-norm running statistics
    exactly as they were: the candidates are looked at, not trained on."""
    buffers = [(b, b.clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in m.buffers()]
    try:
        return model(x)
    finally:
        for buffer, saved in buffers:
            buffer.copy_(saved)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(dim=1)


def pick_scores(student_logits: torch.Tensor, teacher_logp: torch.Tensor, temperature: float,
                criterion: Criterion) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, d)``: the hardness of each candidate by ``criterion`` and its KL ``d`` (eq 3)."""
    teacher = teacher_log_probs(teacher_logp, temperature)
    d = kl_per_sample(teacher, student_logits, temperature)
    if criterion == "kl":
        return d, d
    if criterion == "teacher_entropy":
        return entropy(teacher), d
    if criterion == "student_entropy":
        return entropy(torch.log_softmax(student_logits.float() / temperature, dim=1)), d
    raise ValueError(f"pick criterion {criterion!r}: expected kl, teacher_entropy or student_entropy")


def pick_hardest(scores: torch.Tensor, keep: int, has_target: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``keep`` largest scores (ties by position, so picking is deterministic).
    Candidates without a teacher target have no hardness and come last."""
    if has_target is not None:
        scores = torch.where(has_target, scores, torch.full_like(scores, -torch.inf))
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep]


def kl_ratio(d: torch.Tensor, picked: torch.Tensor, has_target: torch.Tensor | None = None) -> float:
    """Eq 4: mean KL of the picked candidates over the mean KL of all of them (≥ 1 for kl);
    candidates without a teacher target take no part."""
    if has_target is not None:
        picked = picked[has_target[picked]]
        d_all = d[has_target]
    else:
        d_all = d
    mean_all = float(d_all.mean()) if len(d_all) else 0.0
    return float(d[picked].mean()) / mean_all if mean_all > 0 and len(picked) else 1.0
