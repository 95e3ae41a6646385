"""Held-out evaluation: ensemble-mean probabilities on a real split, and top-1 accuracy.

Each model sees the split through its own input contract (size, channels, mean/std), so
teachers and students trained at different resolutions can be evaluated and averaged together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError
from stages.sources import Source
from student.data import normalize


def prepare(images_uint8: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """uint8 NCHW → the float input ``spec`` describes: grey → RGB if needed, antialiased
    bilinear resize if the size differs, then per-channel normalisation."""
    channels = int(spec["channels"])
    if images_uint8.shape[1] != channels:
        if images_uint8.shape[1] != 1:
            raise UserError(f"a model expects {channels}-channel images, "
                            f"the data has {images_uint8.shape[1]}")
        images_uint8 = images_uint8.expand(-1, channels, -1, -1)
    x = normalize(images_uint8, spec)
    size = (int(spec["size"][0]), int(spec["size"][1]))
    if tuple(x.shape[2:]) != size:
        # Resizing after normalising equals resizing before: the weights of each output pixel sum to 1.
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def predict_probs(
    models: list[nn.Module], input_specs: list[dict[str, Any]], source: Source, batch_size: int = 512
) -> np.ndarray:
    """Mean of the members' softmax over every image of ``source``: float64 array (N, C).

    Models are put in eval mode for the call and restored to their previous mode afterwards.
    """
    if not models or len(models) != len(input_specs):
        raise ValueError(f"need one input spec per model, got {len(models)} models, {len(input_specs)} specs")
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    chunks = []
    try:
        for start in range(0, len(source), batch_size):
            indices = np.arange(start, min(start + batch_size, len(source)))
            images = torch.from_numpy(np.ascontiguousarray(source.images(indices))).permute(0, 3, 1, 2)
            total = None
            for model, spec in zip(models, input_specs, strict=True):
                device = _device(model)
                x = prepare(images.to(device), spec)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                probs = torch.softmax(model(x).double(), dim=1).cpu()
                total = probs if total is None else total + probs
            chunks.append((total / len(models)).numpy())
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    if not chunks:
        return np.zeros((0, source.num_classes))
    return np.concatenate(chunks)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: the fraction of rows whose argmax is the label."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == labels))
