"""A guard against a oneDNN fault seen on this project's CPU machines.

On an AMD EPYC (AVX2, no AVX-512) with torch 2.14.1, training a network that has a convolution
of fewer than 8 output channels (a ResNet of width 4 or 6; width 8, 12 and 16 are fine) with
one torch thread corrupts the heap inside oneDNN's CPU kernels within a few hundred steps
("corrupted double-linked list", SIGSEGV). It reproduces with plain torch and no project code,
and not with ``torch.backends.mkldnn.enabled = False``. Such thin networks are test- and
pruning-sized, where oneDNN's speed does not matter, so their training runs with oneDNN off;
every other model keeps it (it is 3–4× faster for a ResNet-8 of width 16 here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

THIN = 8  # convolutions with fewer output channels than this train without oneDNN on CPU


def is_thin(model: nn.Module) -> bool:
    """The model has a convolution with fewer than :data:`THIN` output channels."""
    return any(isinstance(m, nn.Conv2d) and m.out_channels < THIN for m in model.modules())


@contextlib.contextmanager
def safe_cpu_kernels(model: nn.Module, device: torch.device) -> Iterator[None]:
    """oneDNN off for the block when a thin model trains on the CPU (see the module docstring)."""
    if device.type != "cpu" or not is_thin(model):
        yield
        return
    before = torch.backends.mkldnn.enabled  # set and restored by hand: flags() also warns about TF32
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
