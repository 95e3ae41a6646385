"""KD with the teacher ensemble in the loop (``objective: kd_online``): every step draws fresh
augmentations of the real split (and, with ``kd.online_mix``, fresh XCL-Mix pairs of them) and
asks the ensemble for their targets.

This is the reference the offline sets are measured against: it has the same loss, recipe and
teachers as ``kd`` from stored views, but never sees a view twice. If it beats the offline
student, what holds the offline student back is the finite stored set, not the loss. It costs a
teacher forward per step, which is what the offline pipeline exists to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from core.config import KDConfig
from core.seeds import stream_seed
from core.sources import Source
from student.data import real_batches
from student.evaluate import prepare
from student.losses import kd_loss
from student.objectives import DATA_STREAM, MIX_STREAM, Objective

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
    mix is (``stages.samplers.mixing.mix_pixels``)."""
    if count <= 0:
        return images
    partners = images[torch.randperm(len(images), generator=generator)[:count]]
    lam = torch.rand(count, 1, 1, 1, generator=generator, dtype=torch.float64)
    mixed = lam * images[:count].double() + (1.0 - lam) * partners.double()
    out = images.clone()
    out[:count] = mixed.round().clamp(0, 255).to(torch.uint8)
    return out


class OnlineKDObjective(Objective):
    """Hinton KD on fresh augmentations with the ensemble computing the targets every step."""

    def __init__(self, teachers: list[Teacher], source: Source, kd_cfg: KDConfig, *args: Any) -> None:
        super().__init__(*args)
        self.teachers, self.source, self.kd = teachers, source, kd_cfg
        for model, _ in teachers:
            model.to(self.device).eval()
            if self.cfg.channels_last:
                model.to(memory_format=torch.channels_last)
        self.batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.mix_count = round(kd_cfg.online_mix * self.cfg.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.batches = real_batches(self.source, self.cfg.batch_size,
                                    stream_seed(self.seed, DATA_STREAM, epoch, self.rank),
                                    class_balanced=self.cfg.class_balanced)
        self.mix_rng = torch.Generator().manual_seed(stream_seed(self.seed, MIX_STREAM, epoch, self.rank))

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.batches is not None, "begin_epoch first"
        images, labels = next(self.batches)
        if self.mix_count:
            images = mix_rows(images, self.mix_count, self.mix_rng)
            labels = labels.clone()
            labels[:self.mix_count] = -1  # a mix has no real label: KL term only, as in kd
        self.counts.drawn[0] += len(labels)
        self.counts.trained[0] += len(labels)
        logp = ensemble_log_probs(self.teachers, images).to(self.device)
        x, labels = self.to_input(images), labels.to(self.device, non_blocking=True)
        kd = self.kd
        return self.loss(model, x, lambda z: kd_loss(z, logp, labels, kd.temperature, kd.alpha)), {}
