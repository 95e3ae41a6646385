"""Magnitude (weight-level) pruning (Han et al. 2015; kd-orthogonality-ensemble Table 3): in every
convolution the fraction ``amount`` of weights with the smallest magnitude set to zero, the final
linear layer left dense. ``torch.nn.utils.prune`` draws the masks; they are made permanent (the
zeros are in the weights, the model keeps its arch), so the model is as large and as fast as
before: sparsity is what it reports."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def sparsity(model: nn.Module) -> dict[str, Any]:
    """Zero weights of the convolutions and of the whole model."""
    conv = [module.weight.detach() for _, module in conv_layers(model)]
    every = [p.detach() for p in model.parameters()]
    conv_zeros, conv_total = sum(int((w == 0).sum()) for w in conv), sum(w.numel() for w in conv)
    zeros, total = sum(int((p == 0).sum()) for p in every), sum(p.numel() for p in every)
    return {"conv_zeros": conv_zeros, "conv_weights": conv_total, "conv_sparsity": conv_zeros / max(conv_total, 1),
            "zeros": zeros, "parameters": total, "sparsity": zeros / max(total, 1)}


def magnitude_prune(model: nn.Module, amount: float) -> dict[str, Any]:
    """Zero ``round(amount · n)`` weights of each convolution (n its weights), smallest |w| first;
    returns the checkpoint's ``pruned`` record."""
    for _, conv in conv_layers(model):
        prune.l1_unstructured(conv, "weight", amount=amount)
        prune.remove(conv, "weight")
    return {"method": "magnitude", "structured": False, "amount": amount, **sparsity(model)}


def zero_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each convolution's weight and where it is non-zero: what fine-tuning keeps at zero."""
    return [(conv.weight, conv.weight.detach() != 0) for _, conv in conv_layers(model)]
