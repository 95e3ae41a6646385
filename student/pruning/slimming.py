"""Network slimming (Liu et al. 2017; kd-orthogonality-ensemble Table 2): an L1 penalty λ·Σ|γ| on
the batch-norm scales of the prunable convolutions during pre-training, then one global
threshold on those scales: the channels whose |γ| lies under it go, physically, with every layer
that depends on them. The threshold is the |γ| below which the fraction ``amount`` of all those
channels lies; a layer keeps at least its largest channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from student.pruning.graph import Prunable, prunable_layers, widths


def slimmed_layers(model: nn.Module, example: torch.Tensor) -> tuple[Any, list[Prunable]]:
    """The graph and the prunable layers with a batch norm; refused when the model has none."""
    graph, layers = prunable_layers(model, example, "slimming")
    with_norm = [layer for layer in layers if layer.norm is not None]
    if not with_norm:
        raise UserError(f"prune method 'slimming' reads batch-norm scales, and the prunable convolutions of "
                        f"{type(model).__name__} have no batch norm; use method l1 or magnitude")
    return graph, with_norm


def add_l1_subgradient(norms: Sequence[nn.BatchNorm2d], weight: float) -> None:
    """Add λ·sign(γ) to each scale's gradient (after backward): Liu et al.'s sparsity training."""
    for norm in norms:
        if norm.weight.grad is not None:
            norm.weight.grad.add_(torch.sign(norm.weight.detach()), alpha=weight)


def global_threshold(scales: Sequence[torch.Tensor], amount: float) -> float:
    """The |γ| under which the fraction ``amount`` of all the channels lie (the smallest kept)."""
    ordered = torch.sort(torch.cat([s.detach().abs().flatten() for s in scales])).values
    return float(ordered[min(round(amount * len(ordered)), len(ordered) - 1)])


def channels_under(norm: nn.BatchNorm2d, threshold: float) -> list[int]:
    """Channels with |γ| under ``threshold``; never all of them (the largest stays)."""
    scales = norm.weight.detach().abs()
    under = (scales < threshold).nonzero().flatten().tolist()
    if len(under) == len(scales):
        under.remove(int(torch.argmax(scales)))
    return under


def slim(model: nn.Module, amount: float, example: torch.Tensor) -> dict[str, Any]:
    """Prune ``model`` in place; returns the checkpoint's ``pruned`` record."""
    graph, layers = slimmed_layers(model, example)
    threshold = global_threshold([layer.norm.weight for layer in layers if layer.norm is not None], amount)
    before = widths(layers)
    graph.remove({layer.conv: channels_under(layer.norm, threshold) for layer in layers if layer.norm is not None})
    return {"method": "slimming", "structured": True, "amount": amount, "threshold": threshold,
            "widths_before": before, "widths": widths(layers)}
