"""A config recipe (``students.NAME.prune``) applied to a trained model: the one entry point the
chain calls, and the check it runs on a freshly built model before anything is written."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from core.options.train import PruneConfig
from student.pruning.graph import library
from student.pruning.l1 import l1_prune
from student.pruning.magnitude import magnitude_prune
from student.pruning.slimming import slim


def example_input(spec: dict[str, Any]) -> torch.Tensor:
    """A zero batch of one image of a checkpoint's input contract (what DepGraph traces)."""
    height, width = (int(v) for v in spec["size"])
    return torch.zeros(1, int(spec["channels"]), height, width)


def prune_model(model: nn.Module, recipe: PruneConfig, example: torch.Tensor) -> dict[str, Any]:
    """Prune ``model`` in place by ``recipe``; returns the checkpoint's ``pruned`` record."""
    if recipe.method == "l1":
        assert recipe.ratios is not None, "the config validated the recipe"
        return l1_prune(model, recipe.ratios, example)
    assert recipe.amount is not None, "the config validated the recipe"
    if recipe.method == "slimming":
        return slim(model, recipe.amount, example)
    return magnitude_prune(model, recipe.amount)


def check_recipe(model: nn.Module, recipe: PruneConfig, example: torch.Tensor) -> None:
    """Refuse, in one line, a recipe that cannot prune this arch (no batch norm for slimming, a
    ratio per stage that does not fit, no prunable layer) by pruning a copy of a fresh model."""
    library()  # measuring needs it for every method (multiply-adds)
    prune_model(copy.deepcopy(model), recipe, example)
