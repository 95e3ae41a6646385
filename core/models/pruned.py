"""Checkpoints of pruned models: rebuilt from the arch and the stored tensors, without the pruning
library.

A structurally pruned model (channels removed) is its arch with narrower convolutions, batch
norms and linear layers. Its checkpoint records, under ``pruned``, the method and the width of
every layer it pruned (``widths``: module name → output channels); the state dict holds every
tensor's shape. :func:`rebuild` gives a freshly built arch those shapes (parameters and buffers
replaced, the modules' width attributes set), so ``load_state_dict`` fills it and the loaded model
computes exactly what the saved one did. Only tensors and primitives are stored: the file loads
with ``weights_only=True``. An unstructured (magnitude) pruned model keeps its shapes and needs
nothing here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from core.errors import UserError


def _shape(state: dict[str, Any], key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _resize_conv(module: _ConvNd, weight: tuple[int, ...]) -> None:
    module.out_channels, module.in_channels = weight[0], weight[1] * module.groups
    module.weight = nn.Parameter(torch.empty(weight))
    if module.bias is not None:
        module.bias = nn.Parameter(torch.empty(weight[0]))


def _resize_norm(module: _BatchNorm, features: int) -> None:
    module.num_features = features
    if module.affine:
        module.weight = nn.Parameter(torch.empty(features))
        module.bias = nn.Parameter(torch.empty(features))
    if module.track_running_stats:
        module.running_mean = torch.zeros(features)
        module.running_var = torch.ones(features)


def _resize_linear(module: nn.Linear, weight: tuple[int, ...]) -> None:
    module.out_features, module.in_features = weight
    module.weight = nn.Parameter(torch.empty(weight))
    if module.bias is not None:
        module.bias = nn.Parameter(torch.empty(weight[0]))


def rebuild(model: nn.Module, state: dict[str, Any], pruned: dict[str, Any], where: str) -> None:
    """Give ``model`` (the arch as built) the shapes of ``state`` where they differ, then check
    every width ``pruned['widths']`` records. Other shape differences are left for the strict
    load to name."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, _ConvNd):
            shape = _shape(state, prefix + "weight")
            if shape is not None and shape != tuple(module.weight.shape) and len(shape) == module.weight.ndim:
                _resize_conv(module, shape)
        elif isinstance(module, _BatchNorm):
            shape = _shape(state, prefix + ("weight" if module.affine else "running_mean"))
            if shape is not None and len(shape) == 1 and shape[0] != module.num_features:
                _resize_norm(module, shape[0])
        elif isinstance(module, nn.Linear):
            shape = _shape(state, prefix + "weight")
            if shape is not None and len(shape) == 2 and shape != tuple(module.weight.shape):
                _resize_linear(module, shape)
    modules = dict(model.named_modules())
    for name, width in (pruned.get("widths") or {}).items():
        found = getattr(modules.get(name), "out_channels", None)
        if found != width:
            raise UserError(f"{where}: the pruned layer {name!r} should have {width} output channels, "
                            f"the stored weights give {found}; the file is damaged or of another arch")


def check_record(pruned: Any, where: str) -> None:
    """The ``pruned`` header of a checkpoint: a dict naming its method, widths of ints."""
    if not isinstance(pruned, dict) or not isinstance(pruned.get("method"), str):
        raise UserError(f"{where}: header field 'pruned' is not a record of a pruning method")
    widths = pruned.get("widths", {})
    if not isinstance(widths, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in widths.items()):
        raise UserError(f"{where}: header field 'pruned.widths' must map layer names to channel counts")
