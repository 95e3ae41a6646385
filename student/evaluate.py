"""Held-out evaluation: ensemble-mean probabilities on a real split, and top-1 accuracy.

Each model sees the split through its own input contract (size, channels, mean/std), so
teachers and students trained at different resolutions can be evaluated and averaged together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import UserError
from core.models.contracts import interpolation_of, resize, size_of
from core.sources import Source


def prepare(images_uint8: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """uint8 NCHW → the float input ``spec`` describes: grey → RGB if needed, a resize with the
    contract's interpolation if the size differs (:func:`core.models.contracts.resize`, as the teacher
    stage does), then per-channel normalisation."""
    channels = int(spec["channels"])
    if images_uint8.shape[1] != channels:
        if images_uint8.shape[1] != 1:
            raise UserError(f"a model expects {channels}-channel images, "
                            f"the data has {images_uint8.shape[1]}")
        images_uint8 = images_uint8.expand(-1, channels, -1, -1)
    x = resize(images_uint8.float().div_(255.0), size_of(spec), interpolation_of(spec))
    mean = torch.tensor(spec["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def eval_mode(models: list[nn.Module]) -> Iterator[None]:
    """Models in eval mode for the block, restored to their previous mode afterwards."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


EVAL_WORKERS = 2  # processes decoding a file-backed split's batches while the models evaluate


class SplitBatches(Dataset):
    """Batch ``i`` of a split (uint8 NCHW), for a DataLoader: a split read from files is decoded
    batch by batch in worker processes, never held whole."""

    def __init__(self, images: Source | np.ndarray, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, number: int) -> torch.Tensor:
        start = number * self.batch_size
        indices = np.arange(start, min(start + self.batch_size, len(self.images)))
        images = self.images
        chunk = images.images(indices) if isinstance(images, Source) else images[indices]
        return torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)


def image_batches(images: Source | np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 NCHW batches of a split or of a uint8 NHWC array, in order (a file-backed split's
    decoded in :data:`EVAL_WORKERS` worker processes)."""
    batches = SplitBatches(images, batch_size)
    from_files = isinstance(images, Source) and images._images is None and len(batches) > 1
    if not from_files:
        yield from (batches[i] for i in range(len(batches)))
        return
    workers = max(1, min(EVAL_WORKERS, os.cpu_count() or 1))
    yield from DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=2)


def forward(model: nn.Module, spec: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
    """One model's float64 outputs (on the CPU) for uint8 NCHW images, through its input spec."""
    device = _device(model)
    x = prepare(images.to(device), spec)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x).double().cpu()


@torch.no_grad()
def predict_probs(
    models: list[nn.Module], input_specs: list[dict[str, Any]], source: Source, batch_size: int = 512
) -> np.ndarray:
    """Mean of the members' softmax over every image of ``source``: float64 array (N, C).

    Models are put in eval mode for the call and restored to their previous mode afterwards.
    """
    if not models or len(models) != len(input_specs):
        raise ValueError(f"need one input spec per model, got {len(models)} models, {len(input_specs)} specs")
    chunks = []
    with eval_mode(models):
        for images in image_batches(source, batch_size):
            total = None
            for model, spec in zip(models, input_specs, strict=True):
                probs = torch.softmax(forward(model, spec, images), dim=1)
                total = probs if total is None else total + probs
            chunks.append((total / len(models)).numpy())
    if not chunks:
        return np.zeros((0, source.num_classes))
    return np.concatenate(chunks)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: the fraction of rows whose argmax is the label."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of rows whose label is among the ``k`` most probable classes."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)| over ``bins``
    equal-width confidence bins (a confidence of exactly 0 falls in the first bin)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() / len(labels) * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Top-1 accuracy of each class (None for a class with no test images)."""
    labels = np.asarray(labels)
    correct = probs.argmax(axis=1) == labels
    return [float(correct[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """The eval row of metrics.jsonl: top-1, top-5, ECE, NLL and per-class accuracy."""
    labels = np.asarray(labels)
    picked = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    return {
        "accuracy": accuracy(probs, labels),
        "top5": top_k_accuracy(probs, labels, 5),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(-np.mean(np.log(np.maximum(picked, 1e-12)))) if len(labels) else float("nan"),
        "per_class": per_class_accuracy(probs, labels, probs.shape[1]),
    }
