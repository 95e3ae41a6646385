"""The teacher stage: an ensemble of checkpoints turned into temperature-free targets.

The stored target is log p̄, the log of the mean of the members' softmaxes, so a student can
apply any temperature later (softmax(log p̄ / τ)). Alongside it we keep two uncertainty
statistics, both divided by log C so they lie in [0, 1] whatever the class count:

* entropy Ĥ = H(p̄) / log C, the total uncertainty;
* disagreement = (H(p̄) − mean_m H(p_m)) / log C, the ensemble's mutual information
  (epistemic part), normalised like Ĥ.

No Ray here: the class runs the same inside a Ray actor, a test, or a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import UserError
from pipeline.models import load_model, split_gaussian
from stages.gaussian import GaussianOutput, gaussian_ensemble_targets
from stages.targets import EnsembleOutput

__all__ = ["Ensemble", "EnsembleOutput", "ensemble_targets", "resolve_device"]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def ensemble_targets(member_logits: torch.Tensor) -> EnsembleOutput:
    """Targets from raw member logits ``[M, N, C]``, computed stably in float64.

    log p̄ = logsumexp_m(log_softmax(z_m)) − log M never forms a tiny probability and takes its
    log. Samples with a non-finite member logit are marked invalid (their other fields are
    finite placeholders, computed from zeroed logits).
    """
    if member_logits.ndim != 3:
        raise ValueError(f"member logits must be [M, N, C], got {tuple(member_logits.shape)}")
    members, _, classes = member_logits.shape
    if members < 1 or classes < 2:
        raise ValueError(f"need at least 1 member and 2 classes, got M={members}, C={classes}")
    z = member_logits.detach().to("cpu", torch.float64)
    valid = torch.isfinite(z).all(dim=2).all(dim=0)
    z = torch.where(valid[None, :, None], z, torch.zeros((), dtype=z.dtype))
    member_logp = F.log_softmax(z, dim=-1)  # [M, N, C]
    logp = torch.logsumexp(member_logp, dim=0) - math.log(members)  # [N, C]
    log_c = math.log(classes)
    h_mean = -(logp.exp() * logp).sum(-1)  # exp(logp)·logp → 0 as p → 0, no 0·(−inf)
    h_members = -(member_logp.exp() * member_logp).sum(-1).mean(0)
    entropy = (h_mean / log_c).clamp(0.0, 1.0)
    disagreement = ((h_mean - h_members) / log_c).clamp(0.0, 1.0)  # ≥ 0 by Jensen; clamp rounding
    return EnsembleOutput(
        logp=logp.float().numpy(),
        entropy=entropy.float().numpy(),
        disagreement=disagreement.float().numpy(),
        argmax=logp.argmax(-1).numpy().astype(np.int64),
        valid=valid.numpy(),
    )


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
    """Teacher checkpoints of one task, ready to label uint8 NHWC images: class probabilities
    (``task="classify"``, ``num_classes`` classes) or Gaussians (``task="regress"``, where
    ``num_classes`` is the target's dimension D; members may predict 1 or D log-variances).

    Each member sees the images the way it was trained: /255, resized (antialiased bilinear)
    to its input size, normalised with its own mean/std — so members trained at different
    resolutions form one ensemble. Threads are fixed so that repeated runs give the same floats,
    hence the same shard bytes. On CUDA, batches go through pinned host memory and the members
    run under ``autocast`` (bf16/fp16) when asked; ``channels_last`` applies on every device.
    The ensemble statistics are always computed in float64 from the members' logits.
    """

    def __init__(
        self, paths: Sequence[str | Path], num_classes: int, *, device: str = "auto", threads: int = 1,
        batch_size: int = 512, allowed_factories: Iterable[str] = (), autocast: str = "none",
        channels_last: bool = True, pin_memory: bool = True, task: str = "classify",
    ) -> None:
        if not paths:
            raise UserError("teachers: no checkpoints given")
        self.threads = threads
        self.device = resolve_device(device)
        self.autocast = AUTOCAST_DTYPES[autocast] if self.device.type == "cuda" else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self.num_classes = num_classes
        self.task = task
        self.width = 2 * num_classes if task == "regress" else num_classes  # regress: μ, then log σ² per dim
        self.batch_size = batch_size
        self.payloads: list[dict[str, Any]] = []
        self.members: list[_Member] = []
        for path in paths:
            model, payload = load_model(path, task=task, num_classes=num_classes, out_dim=num_classes,
                                        allowed_factories=allowed_factories)
            spec = payload["input"]
            channels = int(spec["channels"])
            stats = [torch.tensor(spec[k], dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
                     for k in ("mean", "std")]
            size = (int(spec["size"][0]), int(spec["size"][1]))
            key = (size, channels, tuple(spec["mean"]), tuple(spec["std"]))
            model = model.to(self.device, memory_format=self.memory_format).eval()
            self.members.append(_Member(model, size, channels, *stats, key))
            self.payloads.append({k: v for k, v in payload.items() if k != "state_dict"})

    def _prepare(self, member: _Member, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC on the device → the member's normalised float NCHW input."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] != member.channels:
            if x.shape[1] != 1:
                raise ValueError(f"{member.channels}-channel teacher, {x.shape[1]}-channel images")
            x = x.expand(-1, member.channels, -1, -1)  # grey → RGB
        if tuple(x.shape[2:]) != member.size:
            x = F.interpolate(x, size=member.size, mode="bilinear", align_corners=False, antialias=True)
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
            outputs = []
            for member in self.members:
                if member.key not in prepared:
                    prepared[member.key] = self._prepare(member, x)
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    outputs.append(self._widen(member.model(prepared[member.key]).float()))
            chunks.append(torch.stack(outputs).cpu())
        if not chunks:
            return torch.zeros((len(self.members), 0, self.width))
        return torch.cat(chunks, dim=1)

    def _widen(self, output: torch.Tensor) -> torch.Tensor:
        """Regression: ``[μ, s]`` with one s per dimension, so isotropic and diagonal members stack."""
        if self.task != "regress":
            return output
        mu, logvar = split_gaussian(output, self.num_classes)
        return torch.cat([mu, logvar.expand_as(mu)], dim=1)

    def predict(self, images: np.ndarray | torch.Tensor) -> EnsembleOutput | GaussianOutput:
        """Targets for uint8 NHWC images (the decoded stored pixels: what is stored is labelled),
        a numpy array or a tensor on any device: log p̄ and its statistics, or the moment-matched
        Gaussian of a regression ensemble."""
        outputs = self._member_logits(images)
        if self.task == "regress":
            return gaussian_ensemble_targets(outputs[..., :self.num_classes], outputs[..., self.num_classes:])
        return ensemble_targets(outputs)
