"""Generators for the tests, built locally: a tiny BigGAN config, and conditional-generator
factories that a config names as ``gan_fixtures:NAME`` (the tests directory is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_config(channel_width: int = 4, num_classes: int = 10):
    """An 8x8 BigGAN (one upsampling; channels 16 → 8 → 4 → 2 → 1 × width; no attention)."""
    from pytorch_pretrained_biggan import BigGANConfig

    return BigGANConfig(z_dim=16, channel_width=channel_width, num_classes=num_classes, attention_layer_position=9,
                        layers=[(True, 16, 8), (False, 8, 4), (False, 4, 2), (False, 2, 1)])


class LinearGenerator(nn.Module):
    """G(z, y) = tanh(W·[z, y]) as a grey ``size``×``size`` image: seeded weights, so two builds
    are the same generator."""

    def __init__(self, z_dim: int, num_classes: int, size: int, seed: int) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.size = z_dim, num_classes, size
        torch.manual_seed(seed)
        self.layer = nn.Linear(z_dim + num_classes, size * size)

    def forward(self, z: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(torch.cat([z, class_vectors], dim=1))).view(len(z), 1, self.size, self.size)


def linear_generator(z_dim: int = 8, num_classes: int = 10, size: int = 16, seed: int = 0) -> nn.Module:
    return LinearGenerator(z_dim, num_classes, size, seed)


def not_a_generator() -> object:
    return "not a module"
