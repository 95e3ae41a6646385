"""What pruning bought, measured: parameters (and non-zero ones), multiply-adds as torch-pruning
counts them, and CPU latency at a batch size — the median of repeated timed passes, the models
taking turns in one process so that a busy machine slows them alike."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from student.pruning.graph import library


def size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Parameters, non-zero parameters and multiply-adds of one forward of ``example``."""
    macs, params = library().utils.count_ops_and_params(model.eval(), example)
    nonzero = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    return {"parameters": int(params), "nonzero": nonzero, "macs": int(macs)}


def latency(models: dict[str, nn.Module], example: torch.Tensor, batch: int, repeats: int = 15,
            warmup: int = 3, threads: int = 1) -> dict[str, float]:
    """Median seconds of one forward of a batch of ``batch`` images, per model; the models run in
    turn each round, with ``threads`` torch threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    inputs = torch.randn((batch, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for round_ in range(warmup + repeats):
                for name, model in models.items():
                    model.eval()
                    tick = time.perf_counter()
                    model(inputs)
                    if round_ >= warmup:
                        times[name].append(time.perf_counter() - tick)
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(values) for name, values in times.items()}


def compare(unpruned: nn.Module, pruned: nn.Module, example: torch.Tensor,
            batches: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    """Sizes of both models and their latencies side by side, at each batch size."""
    result: dict[str, Any] = {"unpruned": size(unpruned, example), "pruned": size(pruned, example), "threads": 1}
    for batch in batches:
        seconds = latency({"unpruned": unpruned, "pruned": pruned}, example, batch)
        result["unpruned"][f"latency_b{batch}_s"] = seconds["unpruned"]
        result["pruned"][f"latency_b{batch}_s"] = seconds["pruned"]
    return result
