"""Timings for ``transferset plan --probe``: what one teacher batch and one training step take here.

Each figure is the median of a few timed calls (:func:`median_seconds`) after one warm-up call (the first call pays for
lazy initialisation: kernels chosen, memory pools grown). The teachers run exactly as a shard
actor runs them (:class:`stages.teachers.Ensemble`, ``teacher_stage``'s device, threads, batch,
autocast, channels-last, pinned memory); a training step is a forward, backward and SGD step of
the configured arch on random inputs of the source's shape, on the device the trainer picks.
Neither depends on the weights' values, so a model not trained yet is timed with random weights.
No Ray.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import TeacherStageConfig
from core.models import build_model
from core.options.train import ModelConfig, TrainConfig
from core.sources import Source
from stages.teachers import Ensemble, torch_threads
from student.build import set_threads
from student.distributed import Dist, pick_device

MIN_CALLS, MAX_CALLS, BUDGET_S = 3, 10, 1.0  # timed calls: at least 3, more while they cost < 1 s in all
TIMING = "median of 3-10 timed calls after a warm-up"  # of a teacher batch or a step; a shard: 1-10


def median_seconds(call: Callable[[], Any], min_calls: int = MIN_CALLS, max_calls: int = MAX_CALLS,
                   budget_s: float = BUDGET_S, warm_up: bool = True) -> float:
    """Median wall seconds of ``call`` after one untimed warm-up call: ``min_calls`` timed calls,
    then more (up to ``max_calls``) while the timed calls took less than ``budget_s`` in all, so
    a millisecond step is timed often enough to be steady and a slow one is not repeated much.
    ``warm_up=False``: the caller made the warm-up call already."""
    if warm_up:
        call()
    times: list[float] = []
    while len(times) < min_calls or (len(times) < max_calls and sum(times) < budget_s):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def full_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """``batch_size`` images (uint8 NHWC) made by repeating ``images``: a full teacher batch."""
    return np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))


def teacher_batch_seconds(paths: Sequence[str | Path], outputs: int, task: str, stage: TeacherStageConfig,
                          images: np.ndarray, factories: Sequence[str] = ()) -> tuple[list[float], str]:
    """Seconds per full batch of each member (one at a time, as the ensemble runs them) and the
    device they ran on."""
    batch = full_batch(images, stage.batch_size)
    seconds, device = [], "cpu"
    for path in paths:
        member = Ensemble([path], outputs, task=task, device=stage.device, threads=stage.torch_threads(),
                          batch_size=stage.batch_size, autocast=stage.autocast, channels_last=stage.channels_last,
                          pin_memory=stage.pin_memory, allowed_factories=factories)
        device = str(member.device)
        seconds.append(median_seconds(lambda member=member: member.member_logits(batch)))
    return seconds, device


def train_step_seconds(model_cfg: ModelConfig, train_cfg: TrainConfig, head_width: int,
                       source: Source) -> tuple[float, str]:
    """Seconds of one training step (forward, backward, SGD) of ``model_cfg`` at ``train_cfg``'s
    batch on the trainer's device, and that device. Data loading and the loss's own cost are left
    out: the figure is the model's compute."""
    device = pick_device()
    height, width, channels = source.shape
    with torch_threads(torch.get_num_threads()):  # the trainer's thread rule inside, ours again after
        set_threads(train_cfg, Dist(device=device))
        torch.manual_seed(0)
        factories = [model_cfg.factory] if model_cfg.factory else []
        model = build_model(model_cfg.arch, channels, head_width, model_cfg.arch_kwargs, factories).to(device)
        memory = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=memory).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(train_cfg.batch_size, channels, height, width, device=device).contiguous(memory_format=memory)
        amp = train_cfg.amp and device.type == "cuda"

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):  # as the trainer
                loss = model(x).float().square().mean()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return median_seconds(step), str(device)
