"""The gaze architectures of XCL's supplement (A.1): a LeNet student and a PreAct-ResNet teacher.

Both take ``(in_channels, num_classes)`` like every registry model; ``num_classes`` is the width
of the last layer, so a regression model asks for ``out_dim + logvar_dim`` outputs (μ, then
s = log σ²; :func:`core.models.split_gaussian`). Widths are arguments: the defaults are the
published sizes, the bundled gaze example scales them down to run on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    """The MPIIGaze LeNet (Zhang et al. 2015): conv 5×5 → max-pool → conv 5×5 → max-pool → fc →
    ReLU → fc. The second pool is adaptive to a ``grid`` (6×12 is exactly what a 36×60 eye gives),
    so other input sizes work too."""

    def __init__(self, in_channels: int, num_classes: int, conv1: int = 20, conv2: int = 50, hidden: int = 500,
                 grid: tuple[int, int] = (6, 12)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, conv1, 5), nn.MaxPool2d(2),
            nn.Conv2d(conv1, conv2, 5), nn.AdaptiveMaxPool2d(tuple(grid)),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(conv2 * grid[0] * grid[1], hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN → ReLU → conv, twice, plus the skip."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """PreAct-ResNet: a 3×3 stem, four stages of ``blocks`` pre-activation blocks (widths w, 2w,
    4w, 8w; strides 1, 2, 2, 2), BN → ReLU → global average pool → linear. ``blocks=(1, 1, 1, 1)``
    is the 9-layer network (8 convolutions in blocks + the stem) of XCL's gaze teacher."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64,
                 blocks: tuple[int, ...] | list[int] = (1, 1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2**stage
            for block in range(count):
                layers.append(PreActBlock(cin, cout, stride=2 if stage and not block else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.layers(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
