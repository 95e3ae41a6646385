"""The speed part of bench/real_split.py (run that script): the trainer's ERM step from an
ImageFolder of large JPEGs against a plain torchvision DataLoader loop, and what each loader costs.

Both modes train the same model (``resnet_cifar`` at the contract's size, channels-last, the
trainer's optimizer and input statistics) in this process with the trainer's torch threads:

* ``trainer``: ``student.build.build_run`` once; per round a fresh objective
  (``student.build.build_objective``, its stream positioned at the current step) whose steps are
  ``begin_step`` + ``student.train.step_once`` — the trainer's loop without logging;
* ``torchvision``: ``datasets.ImageFolder`` with ``RandomResizedCrop`` (the contract's scale,
  ratio, bilinear) + ``RandomHorizontalFlip`` + ``PILToTensor`` in ``DataLoader(batch_size=B,
  shuffle=True, num_workers=W, drop_last=True)``; the step normalises like the trainer
  (``/255``, the trainer's mean and std, channels-last), then cross-entropy, backward, SGD.

A window (:func:`timed_window`) starts the mode's loader afresh, runs the warm-up steps, waits
until the loader's workers are idle (their queues are full: the trainer's holds 4 items of
``batches_per_transfer`` batches, torchvision's 2 batches per worker — filling them is a start-up
cost, not a step's), then times S steps: fetch, normalise, forward, loss, backward, optimizer
step. It records the wall seconds, the seconds spent waiting for batches and the CPU seconds of
this process and of the workers. A loader window (:func:`loader_window`) fetches batches without
training, so the workers are the bottleneck: their CPU ms and wall ms per batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SIZE = 64
MODEL = {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": 8}}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S, IDLE_LIMIT_S = 1.0, 300.0  # workers idle this long count as done; give up waiting after the limit


def source_cfg(folder: Path) -> Any:
    from core.config import ImageConfig, SourceConfig

    return SourceConfig(kind="imagefolder", path=str(folder), image=ImageConfig(size=SIZE, views="random_resized_crop"))


def train_cfg(args: argparse.Namespace, steps: int) -> Any:
    from core.config import TrainConfig

    return TrainConfig(steps=steps, batch_size=args.batch, num_workers=args.workers, checkpoint_steps=10**6)


class Waiting:
    """Batches of ``inner``, timing how long each one took to arrive."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner, self.seconds = inner, 0.0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        began = time.perf_counter()
        item = next(self.inner)
        self.seconds += time.perf_counter() - began
        return item

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


class TrainerMode:
    """(i) the trainer's ERM step on the run's real split; its stream made afresh by ``start``."""

    def __init__(self, run: Any) -> None:
        self.run, self.step, self.waiting = run, 0, Waiting(iter(()))

    def start(self) -> None:
        from student.build import ObjectiveInputs, build_objective

        run = self.run
        inputs = ObjectiveInputs(run.request, run.task, run.train_source, run.input_contract, run.ctx, self.step,
                                 [], [])
        run.step_fn = build_objective(inputs)
        self.waiting = run.step_fn.stream = Waiting(run.step_fn.stream)

    def fetch(self) -> None:
        self.run.step_fn.next_batch()  # the batch as the step gets it: counted, normalised, channels-last

    def one(self) -> None:
        from student.train import step_once

        self.step += 1
        self.run.step_fn.begin_step(self.step)
        step_once(self.run, self.step)

    def stop(self) -> None:
        self.run.step_fn.close()


class PlainMode:
    """(ii) torchvision's ImageFolder + RandomResizedCrop in a plain DataLoader, the same step."""

    def __init__(self, args: argparse.Namespace, root: Path, run: Any) -> None:
        import torch
        from torchvision import datasets, transforms

        from core.models import build_model
        from student.optim import make_optimizer

        contract = run.train_source.contract
        transform = transforms.Compose([
            transforms.RandomResizedCrop(SIZE, scale=contract.scale, ratio=contract.ratio,
                                         interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
        dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
        if len(dataset) // args.batch < args.warmup + args.steps:
            raise SystemExit(f"{root}: an epoch of {len(dataset) // args.batch} batches is shorter than warm-up + "
                             f"window ({args.warmup + args.steps}); the plain loop would restart its workers")
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                                  num_workers=args.workers, drop_last=True)
        torch.manual_seed(0)
        self.model = build_model(MODEL["arch"], 3, 10, MODEL["arch_kwargs"]).to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = make_optimizer(self.model, run.train_cfg)
        self.mean = torch.tensor(run.input_contract["mean"]).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(run.input_contract["std"]).view(1, -1, 1, 1)
        self.batches: Iterator[Any] = iter(())
        self.waiting = Waiting(iter(()))

    def start(self) -> None:
        self.batches = iter(self.loader)
        self.waiting = Waiting(self.batches)

    def fetch(self) -> tuple[Any, Any]:
        import torch

        images, labels = next(self.waiting)
        x = ((images.float().div_(255.0) - self.mean).mul_(self.inv_std)).contiguous(memory_format=torch.channels_last)
        return x, labels

    def one(self) -> None:
        import torch

        x, labels = self.fetch()
        loss = torch.nn.functional.cross_entropy(self.model(x), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def stop(self) -> None:
        self.batches._shutdown_workers()  # type: ignore[attr-defined]
        self.batches = iter(())


def children_cpu() -> float:
    """CPU seconds (user + system) so far of this process's live children (the loader's workers)."""
    total, me = 0, os.getpid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    total += int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                continue
    return total / CLOCK_TICKS


def wait_idle() -> float:
    """Seconds until the workers' CPU time stops growing for :data:`IDLE_S` (their queues are full)."""
    began, last = time.perf_counter(), children_cpu()
    while time.perf_counter() - began < IDLE_LIMIT_S:
        time.sleep(IDLE_S)
        now = children_cpu()
        if now - last < 0.05 * IDLE_S:
            break
        last = now
    return time.perf_counter() - began


def measured(count: int, call: Callable[[], Any], mode: Any) -> dict[str, float]:
    """``count`` calls: wall seconds, seconds waiting for batches, CPU ms per call here and in the workers."""
    mode.waiting.seconds = 0.0
    start, cpu, workers = time.perf_counter(), time.process_time(), children_cpu()
    for _ in range(count):
        call()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "waiting": mode.waiting.seconds,
            "main_cpu_ms": 1000 * (time.process_time() - cpu) / count,
            "worker_cpu_ms": 1000 * (children_cpu() - workers) / count, "wall_ms": 1000 * seconds / count}


def timed_window(args: argparse.Namespace, mode: Any) -> dict[str, float]:
    """A fresh loader, the warm-up steps, the workers' queues filled, then ``args.steps`` timed steps."""
    mode.start()
    for _ in range(args.warmup):
        mode.one()
    filled = wait_idle()
    out = {**measured(args.steps, mode.one, mode), "fill_s": filled}
    mode.stop()
    return out


def loader_window(args: argparse.Namespace, mode: Any) -> dict[str, float]:
    """A fresh loader, two batches, then ``args.loader_batches`` fetched without training."""
    mode.start()
    for _ in range(2):
        mode.fetch()
    out = measured(args.loader_batches, mode.fetch, mode)
    mode.stop()
    return out


def speed_part(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import torch

    from core.config import ModelConfig
    from core.sources import load_in_memory, load_source
    from student.build import build_run
    from student.request import TrainRequest

    cfg = source_cfg(root)
    began = time.perf_counter()
    request = TrainRequest(name="erm", model=ModelConfig(**MODEL), train=train_cfg(args, 10**6),
                           out_dir=args.workdir / "speed", seed=0)
    run = build_run(request, load_source(cfg, "train"), load_in_memory(load_source(cfg, "test")), resume=False)
    run.step_fn.close()  # each window starts its own stream
    print(f"build_run: {time.perf_counter() - began:.1f} s; torch threads {torch.get_num_threads()}", flush=True)
    modes: dict[str, Any] = {"trainer": TrainerMode(run), "torchvision": PlainMode(args, root, run)}
    windows: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    loaders: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    for round_ in range(args.rounds):
        for name in list(modes)[::-1 if round_ % 2 else 1]:
            windows[name].append(timed_window(args, modes[name]))
            if args.loader_batches:
                loaders[name].append(loader_window(args, modes[name]))
        print(f"round {round_ + 1}: " + "; ".join(
            f"{n} {args.steps / w[-1]['seconds']:.2f} steps/s (waiting {w[-1]['waiting']:.1f} s, queues filled in "
            f"{w[-1]['fill_s']:.0f} s; CPU ms/step here {w[-1]['main_cpu_ms']:.0f}, workers "
            f"{w[-1]['worker_cpu_ms']:.0f})" + (f", loader alone {loaders[n][-1]['wall_ms']:.0f} ms/batch (CPU "
                                                f"{loaders[n][-1]['worker_cpu_ms']:.0f} ms in workers)"
                                                if loaders[n] else "")
            for n, w in windows.items()) + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    return speed_figures(args, windows, loaders)


def speed_figures(args: argparse.Namespace, windows: dict[str, list[dict[str, float]]],
                  loaders: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    import torch

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    ratios = [b["seconds"] / a["seconds"] for a, b in zip(windows["trainer"], windows["torchvision"], strict=True)]
    figures = {
        "trainer_vs_torchvision": statistics.median(ratios),
        "trainer_vs_torchvision_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]]
        if len(ratios) > 1 else [],
        "trainer_vs_torchvision_rounds": [round(r, 3) for r in ratios],
        **{f"{n}_steps_per_s": args.steps / median(rows, "seconds") for n, rows in windows.items()},
        **{f"{n}_waiting_share": statistics.median(w["waiting"] / w["seconds"] for w in rows)
           for n, rows in windows.items()},
        **{f"{n}_{key}": median(rows, key) for n, rows in windows.items()
           for key in ("main_cpu_ms", "worker_cpu_ms", "fill_s")},
        "torch_threads": torch.get_num_threads(),
    }
    if all(loaders.values()):
        figures.update({f"{n}_loader_{key}": median(rows, key) for n, rows in loaders.items()
                        for key in ("wall_ms", "worker_cpu_ms", "main_cpu_ms")})
        figures["loader_trainer_vs_torchvision"] = statistics.median(
            b["seconds"] / a["seconds"] for a, b in zip(loaders["trainer"], loaders["torchvision"], strict=True))
    quart = figures["trainer_vs_torchvision_quartiles"]
    print(f"trainer ÷ torchvision steps/s: {figures['trainer_vs_torchvision']:.3f}"
          + (f" (rounds' quartiles {quart[0]:.3f}–{quart[1]:.3f})" if quart else "") + "; goal ≥ 0.95", flush=True)
    print("CPU ms per step (median): " + "; ".join(
        f"{n}: here {figures[f'{n}_main_cpu_ms']:.0f}, workers {figures[f'{n}_worker_cpu_ms']:.0f}" for n in windows)
        + (f"; the loaders alone, trainer ÷ torchvision batches/s {figures['loader_trainer_vs_torchvision']:.3f}"
           if "loader_trainer_vs_torchvision" in figures else ""), flush=True)
    return figures
