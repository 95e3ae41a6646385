"""Which layers of a model may lose output channels, and removing channels along every layer that
depends on them (torch-pruning's DepGraph: the library finds the group, we choose the indices).

A convolution is prunable when the group of its output channels holds no other layer's output
channels and at least one consumer: the inner convolution of a residual block, not the ones tied
to a skip connection, which the paper's ResNets keep unpruned too (§4: "prevents certain
convolution layer from being pruned"); every block's sum stays intact. The stages are the
prunable convolutions grouped by output width in order of appearance: a CIFAR ResNet's three
groups (16, 32, 64 channels), where Li et al. set one ratio each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from core.errors import UserError


def library() -> ModuleType:
    """torch-pruning, an optional dependency: only pruned students need it."""
    try:
        import torch_pruning
    except ImportError as err:
        raise UserError("pruning needs the torch-pruning package: pip install 'transferset[pruning]'") from err
    return torch_pruning


@dataclass(frozen=True)
class Prunable:
    """A convolution whose output channels may be removed, the batch norm over them (if any) and
    its stage (index of its width among the prunable convolutions' widths)."""

    name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d | None
    stage: int


class Graph:
    """The dependency graph of ``model``, traced once on ``example`` in eval mode (a traced
    training-mode pass would move the batch norms' running statistics)."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.tp, self.model = library(), model
        training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                self.graph = self.tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        finally:
            model.train(training)
        self.names = {module: name for name, module in model.named_modules()}

    def group(self, conv: nn.Conv2d, channels: Sequence[int]) -> Any:
        return self.graph.get_pruning_group(conv, self.tp.prune_conv_out_channels, idxs=list(channels))

    def _prunable(self, conv: nn.Conv2d) -> tuple[bool, nn.BatchNorm2d | None]:
        norm, consumers = None, 0
        for dep, _ in self.group(conv, [0]):
            module, outward = dep.target.module, self.graph.is_out_channel_pruning_fn(dep.handler)
            if outward and module is not conv and isinstance(module, nn.Conv2d | nn.Linear):
                return False, None  # tied to another layer's outputs (a residual sum)
            if outward and isinstance(module, nn.BatchNorm2d) and norm is None:
                norm = module
            consumers += int(not outward and isinstance(module, nn.Conv2d | nn.Linear))
        return consumers > 0, norm

    def prunable(self) -> list[Prunable]:
        """The prunable convolutions in module order (grouped convolutions are left alone)."""
        found, widths = [], []
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.out_channels < 2:
                continue
            ok, norm = self._prunable(module)
            if not ok:
                continue
            if module.out_channels not in widths:
                widths.append(module.out_channels)
            found.append(Prunable(name, module, norm, widths.index(module.out_channels)))
        return found

    def remove(self, removals: dict[nn.Conv2d, list[int]]) -> None:
        """Remove output channels of several convolutions (indices chosen before any is removed),
        with everything that depends on them."""
        for conv, channels in removals.items():
            if channels:
                self.group(conv, sorted(channels)).prune()


def widths(layers: Sequence[Prunable]) -> dict[str, int]:
    """Output channels of each layer by module name: what a pruned checkpoint records."""
    return {layer.name: int(layer.conv.out_channels) for layer in layers}


def prunable_layers(model: nn.Module, example: torch.Tensor, method: str) -> tuple[Graph, list[Prunable]]:
    """The graph and the prunable layers; refused in one line when there are none."""
    graph = Graph(model, example)
    layers = graph.prunable()
    if not layers:
        raise UserError(f"prune method {method!r}: the model has no convolution whose channels can be removed "
                        "without touching a residual sum or the output")
    return graph, layers
