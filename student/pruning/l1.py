"""L1-norm filter pruning (Li et al. 2016; kd-orthogonality-ensemble Table 1): in each prunable
convolution remove the given fraction of filters, those with the smallest L1 norm; the fraction
is set per stage. The channels go physically, with every layer that depends on them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from student.pruning.graph import Prunable, prunable_layers, widths


def filter_norms(conv: nn.Conv2d) -> torch.Tensor:
    """The L1 norm of each output filter."""
    return conv.weight.detach().abs().sum(dim=tuple(range(1, conv.weight.ndim)))


def kept(channels: int, ratio: float) -> int:
    """Filters kept of ``channels`` when the fraction ``ratio`` is removed (at least one)."""
    return max(1, round(channels * (1.0 - ratio)))


def filters_to_remove(conv: nn.Conv2d, ratio: float) -> list[int]:
    """The indices of the filters with the smallest L1 norms, ``channels − kept`` of them (ties:
    the later filter goes)."""
    order = torch.argsort(filter_norms(conv), descending=True, stable=True)
    return sorted(order[kept(conv.out_channels, ratio):].tolist())


def stage_ratios(ratios: Sequence[float], layers: Sequence[Prunable]) -> list[float]:
    """One ratio per stage: as given, or one value for every stage."""
    stages = 1 + max(layer.stage for layer in layers)
    if len(ratios) == 1:
        return list(ratios) * stages
    if len(ratios) != stages:
        found = sorted({int(layer.conv.out_channels) for layer in layers}, key=[
            int(layer.conv.out_channels) for layer in layers].index)
        raise UserError(f"prune method 'l1': {len(ratios)} ratios for a model with {stages} stages of prunable "
                        f"convolutions (widths {found}); give one ratio per stage, or one for all")
    return list(ratios)


def l1_prune(model: nn.Module, ratios: Sequence[float], example: torch.Tensor) -> dict[str, Any]:
    """Prune ``model`` in place; returns the checkpoint's ``pruned`` record."""
    graph, layers = prunable_layers(model, example, "l1")
    per_stage = stage_ratios(ratios, layers)
    before = widths(layers)
    graph.remove({layer.conv: filters_to_remove(layer.conv, per_stage[layer.stage]) for layer in layers})
    return {"method": "l1", "structured": True, "ratios": per_stage, "widths_before": before,
            "widths": widths(layers)}
