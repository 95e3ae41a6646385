"""How fast a small CNN student trains on the CPU: memory format, and threads vs parallel runs.

    python bench/student_speed.py [--steps N] [--rounds N]

1. ``channels_last_vs_nchw``: train samples/s of a ``resnet_cifar`` depth 8 (widths 8 and 16,
   batch 128, 32×32 RGB, one thread) in channels-last memory format ÷ the same in NCHW — why
   ``train.channels_last`` is on by default.
2. ``two_runs_vs_two_threads``: total samples/s of two single-thread runs side by side (two
   processes) ÷ one run with two threads — why ``student_stage.parallel`` trains student runs as
   parallel Ray tasks of one CPU each instead of giving one run every core.

Modes are interleaved over ``rounds`` and each ratio is the median of the per-round ratios (the
machine is shared; its load drifts). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import torch
from common import ROOT  # noqa: F401  (puts the repo on sys.path)

from core.models import build_model  # noqa: E402


def samples_per_s(width: int, channels_last: bool, threads: int, steps: int) -> float:
    """Train samples/s of ``steps`` SGD steps on random batches (after 3 warm-up steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("resnet_cifar", 3, 10, {"depth": 8, "width": width})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * 128 / (time.perf_counter() - start)


def _worker(args: tuple[int, bool, int, int]) -> float:
    return samples_per_s(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {
        "channels_last_vs_nchw_w8": [],
        "channels_last_vs_nchw_w16": [],
        "two_runs_vs_two_threads_w16": [],
    }
    rates: dict[str, list[float]] = {}
    context = mp.get_context("spawn")
    for round_ in range(args.rounds):
        for width in (8, 16):
            nchw = samples_per_s(width, False, 1, args.steps)
            last = samples_per_s(width, True, 1, args.steps)
            ratios[f"channels_last_vs_nchw_w{width}"].append(last / nchw)
            rates.setdefault(f"w{width}_nchw", []).append(nchw)
            rates.setdefault(f"w{width}_channels_last", []).append(last)
        one = samples_per_s(16, True, 2, args.steps)
        with context.Pool(2) as pool:
            both = sum(pool.map(_worker, [(16, True, 1, args.steps)] * 2))
        ratios["two_runs_vs_two_threads_w16"].append(both / one)
        rates.setdefault("w16_one_run_two_threads", []).append(one)
        rates.setdefault("w16_two_runs_one_thread_total", []).append(both)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()), flush=True)
    figures = {
        **{k: statistics.median(v) for k, v in ratios.items()},
        **{f"{k}_samples_per_s": statistics.median(v) for k, v in rates.items()},
        "steps": args.steps,
        "rounds": args.rounds,
        "batch_size": 128,
    }
    for key in ratios:
        print(f"{key}: {figures[key]:.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
