"""KD with the teacher ensemble in the loop (``objective: kd_online``): every step draws fresh
augmentations of the real split (and, with ``kd.online_mix``, fresh XCL-Mix pairs of them) and
asks the ensemble for their targets.

This is the reference the offline sets are measured against: it has the same loss, recipe and
teachers as ``kd`` from stored views, but never sees a view twice. If it beats the offline
student, what holds the offline student back is the finite stored set, not the loss. It costs a
teacher forward per step, which is what the offline pipeline exists to save.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.config import KDConfig
from student.evaluate import prepare
from student.losses import kd_loss
from student.objectives import RealStreamObjective
from student.stream import RealPart, StreamPlan

Teacher = tuple[nn.Module, dict[str, Any]]  # a model and its checkpoint's input contract


@torch.no_grad()
def ensemble_log_probs(teachers: list[Teacher], images_uint8: torch.Tensor) -> torch.Tensor:
    """``log p̄`` of the ensemble mean on uint8 NCHW images, each member through its own input
    contract — the same target a transfer set stores (before its float16 rounding)."""
    total = None
    for model, spec in teachers:
        device = next(model.parameters()).device
        probs = torch.softmax(model(prepare(images_uint8.to(device), spec)).float(), dim=1)
        total = probs if total is None else total + probs
    assert total is not None, "an ensemble has at least one member"
    return torch.log(total / len(teachers)).clamp_min(-1e4)


def mix_rows(images: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """XCL-Mix on the first ``count`` rows of a uint8 NCHW batch: ``λ·x_i + (1 − λ)·x_j`` with a
    shuffled partner from the same batch and λ ~ U[0, 1] per row, rounded to uint8 as a stored
    mix is (``core.samplers.mixing.mix_pixels``)."""
    if count <= 0:
        return images
    partners = images[torch.randperm(len(images), generator=generator)[:count]]
    lam = torch.rand(count, 1, 1, 1, generator=generator, dtype=torch.float64)
    mixed = lam * images[:count].double() + (1.0 - lam) * partners.double()
    out = images.clone()
    out[:count] = mixed.round().clamp(0, 255).to(torch.uint8)
    return out


class OnlineKDObjective(RealStreamObjective):
    """Hinton KD on fresh augmentations with the ensemble computing the targets every step."""

    def __init__(self, teachers: list[Teacher], real: RealPart, plan: StreamPlan, kd_cfg: KDConfig,
                 *args: Any) -> None:
        super().__init__(real, plan, *args)
        self.teachers, self.kd = teachers, kd_cfg
        for model, _ in teachers:
            model.to(self.device).eval()
            if self.cfg.channels_last:
                model.to(memory_format=torch.channels_last)
        self.mix_count = round(kd_cfg.online_mix * self.cfg.batch_size)

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = self.real_batch()
        if self.mix_count:
            images = mix_rows(images, self.mix_count, self.mix_rng)
            labels = labels.clone()
            labels[:self.mix_count] = -1  # a mix has no real label: KL term only, as in kd
        logp = ensemble_log_probs(self.teachers, images).to(self.device)
        x, labels = self.to_input(images), labels.to(self.device, non_blocking=True)
        kd = self.kd
        return self.loss(model, x, lambda z: kd_loss(z, logp, labels, kd.temperature, kd.alpha)), {}
