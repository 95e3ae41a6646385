"""``pick`` (seed 004, TLCutMix+pick §3.2): from r×B candidates keep the B the student finds hardest.

The paper keeps every original input x and picks among the augmented x′ only. Here x are the
samples of the real split and of views-only sets (augmented real images), x′ those of every other
set (mixes, generated images): the x keep their share of the batch (the first ``count / ratio`` of
the candidates, whose order is already random) and the x′ compete for the rest. A student whose
stored sets are all views picks among all their samples; the real split keeps its share.

Candidates are scored with the student under no-grad by ``d = KL(p_T^τ ‖ p_S^τ)`` (eq 3), or by
the teacher's or the student's entropy; the largest scores are trained on. The mean KL ratio
``r = mean(d of the picked x′) / mean(d of all x′ candidates)`` (eq 4) goes to the metrics: r ≈ 1
means picking finds nothing harder than a random batch.
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


def pick_hardest(scores: torch.Tensor, keep: int, competes: torch.Tensor | None = None,
                 ratio: float = 1.0) -> torch.Tensor:
    """Indices (in batch order) of the ``keep`` samples to train on. ``competes`` marks the x′
    (None or none marked: every candidate competes); the others, x, keep their share: the first
    ``round(len(x) / ratio)`` of them. The x′ with the largest scores fill the rest (ties by
    position, so picking is deterministic)."""
    if competes is None or not bool(competes.any()):
        competes = torch.ones_like(scores, dtype=torch.bool)
    fixed = torch.nonzero(~competes).squeeze(1)
    rivals = int(competes.sum())
    picks = min(rivals, keep - min(len(fixed), round(len(fixed) / ratio)))
    masked = torch.where(competes, scores, torch.full_like(scores, -torch.inf))
    hardest = torch.sort(masked, descending=True, stable=True).indices[:picks]
    return torch.sort(torch.cat([fixed[:keep - picks], hardest])).values


def kl_ratio(d: torch.Tensor, picked: torch.Tensor, competes: torch.Tensor | None = None) -> float:
    """Eq 4: mean KL of the picked x′ over the mean KL of all x′ candidates (≥ 1 for kl)."""
    if competes is None or not bool(competes.any()):
        competes = torch.ones_like(d, dtype=torch.bool)
    picked = picked[competes[picked]]
    mean_all = float(d[competes].mean())
    return float(d[picked].mean()) / mean_all if mean_all > 0 and len(picked) else 1.0
