"""The teacher stage: an ensemble of checkpoints turned into temperature-free targets.

Each member runs on the images the way it was trained; the stacked member outputs become the
task's targets (:mod:`core.tasks`): for classification log p̄, the log of the mean of the
members' softmaxes (a student applies any temperature later) with Ĥ and the disagreement; for
regression the moment-matched Gaussian of the members' mixture.

No Ray here: the class runs the same inside a Ray actor, a test, or a notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from core.models import load_model
from core.models.contracts import interpolation_of, resize, size_of
from core.tasks import Task, task_named

__all__ = ["Ensemble", "resolve_device", "torch_threads"]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("teacher_stage.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


@dataclass
class _Member:
    model: nn.Module
    size: tuple[int, int]
    channels: int
    interpolation: str
    mean: torch.Tensor  # [1, C, 1, 1] on the device
    std: torch.Tensor
    key: tuple[Any, ...]  # members with equal keys share one prepared input


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Exactly ``count`` torch threads inside (float sums on a CPU depend on the split), then the
    caller's setting again, so the process is left as it was found."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Ensemble:
    """Teacher checkpoints of one task, ready to label uint8 NHWC images. ``outputs`` is what
    they predict: the number of classes (``task="classify"``), or the regression target's
    dimension D (``task="regress"``; members may predict 1 or D log-variances).

    Each member sees the images the way it was trained: /255, resized to its input size with its
    own interpolation (antialiased; :func:`core.models.contracts.resize`), normalised with its own
    mean/std — so members of different architectures and resolutions form one ensemble, and
    members share one prepared input only when size, channels, interpolation, mean and std all
    agree. The stored image is labelled whole: a member's ``crop_pct`` is for evaluation.
    Threads are fixed so that repeated runs give the same floats, hence the same shard bytes. On
    CUDA, batches go through pinned host memory and the members run under ``autocast``
    (bf16/fp16) when asked; ``channels_last`` applies on every device.
    The ensemble statistics are always computed in float64 from the members' logits.
    """

    def __init__(
        self, paths: Sequence[str | Path], outputs: int, *, device: str = "auto", threads: int = 1,
        batch_size: int = 512, allowed_factories: Iterable[str] = (), autocast: str = "none",
        channels_last: bool = True, pin_memory: bool = True, task: str | Task = "classify",
    ) -> None:
        if not paths:
            raise UserError("teachers: no checkpoints given")
        self.threads = threads
        self.device = resolve_device(device)
        self.autocast = AUTOCAST_DTYPES[autocast] if self.device.type == "cuda" else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self.outputs = outputs
        self.task = task_named(task)
        self.width = self.task.width(outputs)  # values per member and sample: classes, or μ then log σ² per dim
        self.batch_size = batch_size
        self.payloads: list[dict[str, Any]] = []
        self.members: list[_Member] = []
        for path in paths:
            model, payload = load_model(path, task=self.task.name, outputs=outputs, allowed_factories=allowed_factories)
            spec = payload["input"]
            channels = int(spec["channels"])
            stats = [torch.tensor(spec[k], dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
                     for k in ("mean", "std")]
            size, interpolation = size_of(spec), interpolation_of(spec)
            key = (size, channels, interpolation, tuple(spec["mean"]), tuple(spec["std"]))
            model = model.to(self.device, memory_format=self.memory_format).eval()
            self.members.append(_Member(model, size, channels, interpolation, *stats, key))
            self.payloads.append({k: v for k, v in payload.items() if k != "state_dict"})

    def _prepare(self, member: _Member, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC on the device → the member's normalised float NCHW input."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] != member.channels:
            if x.shape[1] != 1:
                raise ValueError(f"{member.channels}-channel teacher, {x.shape[1]}-channel images")
            x = x.expand(-1, member.channels, -1, -1)  # grey → RGB
        x = resize(x, member.size, member.interpolation)
        return ((x - member.mean) / member.std).contiguous(memory_format=self.memory_format)

    def _to_device(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):  # made on a device already (a fused generator's output)
            return batch.to(self.device, non_blocking=True)
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.pin_memory:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def member_logits(self, images: np.ndarray) -> torch.Tensor:
        """Raw logits ``[M, N, C]`` (on the CPU) for uint8 NHWC images, as an ordinary tensor."""
        return self._member_logits(images).clone()  # clone outside inference mode: editable

    def _member_logits(self, images: np.ndarray) -> torch.Tensor:
        """Runs with exactly ``threads`` torch threads (see :func:`torch_threads`)."""
        with torch_threads(self.threads):
            return self._forward(images)

    @torch.inference_mode()
    def _forward(self, images: np.ndarray) -> torch.Tensor:
        if images.dtype not in (np.uint8, torch.uint8) or images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")
        chunks = []
        for start in range(0, len(images), self.batch_size):
            x = self._to_device(images[start:start + self.batch_size])
            prepared: dict[tuple[Any, ...], torch.Tensor] = {}
            rows = []
            for member in self.members:
                if member.key not in prepared:
                    prepared[member.key] = self._prepare(member, x)
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    rows.append(self.task.member_row(member.model(prepared[member.key]).float(), self.outputs))
            chunks.append(torch.stack(rows).cpu())
        if not chunks:
            return torch.zeros((len(self.members), 0, self.width))
        return torch.cat(chunks, dim=1)

    def predict(self, images: np.ndarray | torch.Tensor) -> Any:
        """The task's targets for uint8 NHWC images (the decoded stored pixels: what is stored is
        labelled), a numpy array or a tensor on any device: log p̄ and its statistics
        (``EnsembleOutput``), or the moment-matched Gaussian of a regression ensemble
        (``GaussianOutput``)."""
        return self.task.combine(self._member_logits(images), self.outputs)
