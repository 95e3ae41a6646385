"""What a training run of a pruned student does beyond its objective: start from a pruned
checkpoint (``init``), keep a magnitude-pruned model's zeros while it fine-tunes (``keep_zeros``),
or add slimming's L1 penalty on the batch-norm scales (``bn_l1``). Plain values, so a Ray task
receives them as JSON; the trainer builds a :class:`Shaper` on its model."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from student.pruning.magnitude import sparsity, zero_masks
from student.pruning.slimming import add_l1_subgradient, slimmed_layers


@dataclass(frozen=True)
class Shaping:
    init: str | None = None
    keep_zeros: bool = False
    bn_l1: float = 0.0

    def identity(self) -> dict[str, Any]:
        """What the run depends on: the start checkpoint by its bytes, not its place."""
        sha = hashlib.sha256(Path(self.init).read_bytes()).hexdigest() if self.init else None
        return {"init_sha256": sha, "keep_zeros": self.keep_zeros, "bn_l1": self.bn_l1}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Shaper:
    """The hooks of one run on its model: after backward (the slimming penalty) and after each
    optimizer step (the pruned weights back to zero: momentum and weight decay would move them)."""

    def __init__(self, shaping: Shaping, model: nn.Module, example: torch.Tensor,
                 pruned: dict[str, Any] | None) -> None:
        self.shaping, self.pruned = shaping, pruned
        self.norms = [layer.norm for layer in slimmed_layers(model, example)[1]] if shaping.bn_l1 else []
        self.masks = zero_masks(model) if shaping.keep_zeros else []

    def after_backward(self) -> None:
        if self.norms:
            add_l1_subgradient(self.norms, self.shaping.bn_l1)

    def after_step(self) -> None:
        with torch.no_grad():
            for weight, keep in self.masks:
                weight.mul_(keep)

    def record(self, model: nn.Module) -> dict[str, Any] | None:
        """The ``pruned`` record of the model as saved (a magnitude model's sparsity measured again)."""
        if self.pruned is None or self.pruned.get("structured", True):
            return self.pruned
        return {**self.pruned, **sparsity(model)}
