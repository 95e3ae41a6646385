"""Benchmark of the student trainer, all figures measured in one run (the machine is shared).

    python bench/train.py [--data cifar|digits] [--steps N] [--rounds N] [--teacher-steps N]

1. ``stream_vs_memory``: KD steps/s reading shards through the student stream (the trainer's
   defaults: one DataLoader worker, decoded-shard cache, epoch = one pass) ÷ KD steps/s on the
   same samples held as in-memory tensors (``stream_main_vs_memory``: the stream in the training
   process, ``num_workers: 0``).
2. ``offline_vs_online``: epoch time with cached targets (shards) ÷ epoch time running the
   4-member teacher ensemble on every batch (goal ≤ 1/3).
3. ``offline_vs_plain``: the same ÷ epoch time of plain ERM on the real split (goal ≤ 1.05).

Setups: ``cifar`` (the default where cifar10-mini is present: 4 ResNet-20 teachers, a transfer
set of the 5000 training images, a ResNet-8 student; 30 steps per epoch, 3 rounds) and ``digits``
(the quickstart's: 4 tiny-CNN teachers of width 32, every training image × 8 views, a tiny-CNN
student of width 6; 300 steps, 7 rounds). Batch 128, one torch thread for every mode. Modes are
interleaved in ``rounds``; each ratio is the median over rounds of the ratio within a round (the
machine's load drifts between rounds). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import ROOT, cifar10_mini  # noqa: E402  (also puts the repo on sys.path)

sys.path.insert(0, str(ROOT / "tests"))

from transfer_fixtures import write_set  # noqa: E402

from core.config import ModelConfig, SourceConfig, TrainConfig  # noqa: E402
from core.models import load_model  # noqa: E402
from core.sources import load_in_memory, load_source  # noqa: E402
from stages.samplers import apply_aug, draw_aug  # noqa: E402
from student.data import crop_flip, real_batches, source_input_spec  # noqa: E402
from student.evaluate import prepare  # noqa: E402
from student.losses import kd_loss  # noqa: E402
from student.shards import open_transfer_sets  # noqa: E402
from student.stream import StreamPlan, TransferLoader  # noqa: E402
from student.train import batches_per_transfer, epoch_steps, train_model  # noqa: E402

BATCH, TAU = 128, 4.0
CIFAR = cifar10_mini()
# --data: (source, teacher model, student model, views per image)
SETUPS = {
    "digits": (SourceConfig(kind="digits"), ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 32}),
               ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 6}), 8),
    "cifar": (SourceConfig(kind="imagefolder", path=str(CIFAR or "cifar10-mini-is-absent")),
              ModelConfig(arch="resnet_cifar", arch_kwargs={"depth": 20, "width": 8}),
              ModelConfig(arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 8}), 1),
}
# Defaults per setup: steps per measured epoch, rounds, teacher steps (ResNet steps are ~40x dearer).
DEFAULTS = {"digits": (300, 7, 300), "cifar": (30, 3, 30)}


def train_teachers(workdir: Path, train, test, model_cfg: ModelConfig, members: int,
                   steps: int) -> list[torch.nn.Module]:
    teachers = []
    for member in range(members):
        out = workdir / f"teacher-{member}"
        train_model(name=f"teacher-{member}", model_cfg=model_cfg,
                    train_cfg=TrainConfig(steps=steps, batch_size=BATCH, cutmix=0.5, num_workers=0, threads=1),
                    objective="erm", kd_cfg=None, sets=[], train_source=train, test_source=test, out_dir=out,
                    seed=member)
        model, payload = load_model(out / "model.pt", outputs=10)
        teachers.append((model.eval(), payload["input"]))
    return teachers


@torch.no_grad()
def ensemble_logp(teachers, images_nchw: torch.Tensor) -> torch.Tensor:
    probs = sum(torch.softmax(model(prepare(images_nchw, spec)), dim=1) for model, spec in teachers)
    return torch.log(probs / len(teachers)).clamp_min(-1e4)


def make_views_set(set_dir: Path, train, teachers, views: int) -> None:
    """Every training image × ``views`` (view 0 = the image), labelled by the ensemble, 1024 per shard."""
    rng = np.random.default_rng(0)
    images = np.stack([image if v == 0 else apply_aug(image, draw_aug(rng, train.pad, train.flip), train.pad)
                      for image in train.images() for v in range(views)])
    logp = np.concatenate([ensemble_logp(teachers, torch.from_numpy(chunk).permute(0, 3, 1, 2)).numpy()
                           for chunk in np.array_split(images, max(1, len(images) // 1024))])
    labels = [int(y) for y in np.repeat(train.labels, views)]
    write_set(set_dir, images, logp, labels, samples_per_shard=1024)


def student_step(spec, model_cfg: ModelConfig, channels: int
                 ) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], torch.optim.Optimizer]:
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg.arch, channels, 10, model_cfg.arch_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
    return model, lambda images: (images.float() / 255.0 - mean) / std, optimizer


def timed(steps: int, step: Callable[[], None]) -> float:
    """Seconds for ``steps`` calls of ``step``."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="steps per measured epoch")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--teacher-steps", type=int)
    parser.add_argument("--data", choices=sorted(SETUPS), default="cifar" if CIFAR else "digits",
                        help="cifar (cifar10-mini: ResNet-20 teachers, ResNet-8 student; the default where "
                             "present) or digits (the quickstart's tiny CNNs)")
    args = parser.parse_args()
    if args.data == "cifar" and CIFAR is None:
        raise SystemExit("--data cifar: cifar10-mini not found; set CIFAR10_MINI or use --data digits")
    for name, default in zip(("steps", "rounds", "teacher_steps"), DEFAULTS[args.data], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    torch.set_num_threads(1)
    source_cfg, teacher_cfg, student_cfg, views = SETUPS[args.data]
    train, test = load_in_memory(load_source(source_cfg, "train")), load_in_memory(load_source(source_cfg, "test"))
    spec = source_input_spec(train)
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    print(f"workdir {workdir}", flush=True)
    teachers = train_teachers(workdir, train, test, teacher_cfg, members=4, steps=args.teacher_steps)
    set_dir = workdir / "views"
    make_views_set(set_dir, train, teachers, views)
    opened = open_transfer_sets([(str(set_dir), 1.0)])

    # The same samples as in-memory tensors (decoded once from the shards).
    from student.shards import decode_shard

    arrays = [decode_shard(url, n, 10) for url, n in zip(opened[0].urls, opened[0].samples, strict=True)]
    mem_images = torch.from_numpy(np.concatenate([a.images for a in arrays])).permute(0, 3, 1, 2).contiguous()
    mem_logp = torch.from_numpy(np.concatenate([a.target for a in arrays]))
    mem_labels = torch.from_numpy(np.concatenate([a.labels for a in arrays]))
    generator = torch.Generator().manual_seed(0)

    model, to_input, optimizer = student_step(spec, student_cfg, train.shape[2])

    def optimise(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def memory_step() -> None:
        rows = torch.randint(0, len(mem_labels), (BATCH,), generator=generator)
        optimise(kd_loss(model(to_input(mem_images[rows])), mem_logp[rows], mem_labels[rows], TAU, 1.0))

    # The trainer's defaults: an epoch is one pass over the set, and the stream restarts each epoch.
    defaults = TrainConfig(steps=1, batch_size=BATCH)
    def stream_step_with(workers: int) -> Callable[[], None]:
        plan = StreamPlan(batch_size=BATCH, seed=0, epoch_steps=epoch_steps(defaults, len(mem_labels)),
                          num_workers=workers, shuffle_buffer=defaults.shuffle_buffer,
                          batches_per_item=batches_per_transfer(defaults, BATCH, train))
        stream = iter(TransferLoader(opened, plan))

        def stream_step() -> None:
            batch = next(stream)
            optimise(kd_loss(model(to_input(batch["image"])), batch["target"], batch["label"], TAU, 1.0))

        return stream_step

    real = real_batches(train, BATCH, seed=0)
    real_images = torch.from_numpy(train.images())

    def online_step() -> None:
        rows = torch.randint(0, len(train), (BATCH,), generator=generator)
        images = crop_flip(real_images[rows], train.pad, train.flip, generator)
        logp = ensemble_logp(teachers, images)
        optimise(kd_loss(model(to_input(images)), logp, torch.full((BATCH,), -1), TAU, 1.0))

    def plain_step() -> None:
        images, labels = next(real)
        optimise(torch.nn.functional.cross_entropy(model(to_input(images)), labels))

    modes = {"memory": memory_step, "stream": stream_step_with(defaults.num_workers),
             "stream_main": stream_step_with(0), "online": online_step, "plain": plain_step}
    for step in modes.values():  # warm-up: the stream's worker starts and decodes every shard once
        timed(120, step)
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for round_ in range(args.rounds):
        for name, step in modes.items():
            seconds[name].append(timed(args.steps, step))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {args.steps / s[-1]:.1f} steps/s"
                                                  for n, s in seconds.items()), flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}

    def paired(a: str, b: str) -> float:
        """Median over rounds of seconds[a] / seconds[b] within the same round (drift cancels)."""
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b], strict=True))

    figures = {
        "stream_vs_memory": paired("memory", "stream"),
        "offline_vs_online": paired("stream", "online"),
        "offline_vs_plain": paired("stream", "plain"),
        "stream_main_vs_memory": paired("memory", "stream_main"),
        **{f"{name}_steps_per_s": args.steps / value for name, value in median.items()},
        "data": args.data, "batch_size": BATCH, "steps_per_epoch": args.steps, "rounds": args.rounds,
        "set_samples": len(mem_labels),
    }
    print(f"stream ÷ memory steps/s: {figures['stream_vs_memory']:.3f} (goal ≥ 0.95)")
    print(f"offline ÷ online epoch time: {figures['offline_vs_online']:.3f} (goal ≤ 0.333)")
    print(f"offline ÷ plain ERM epoch time: {figures['offline_vs_plain']:.3f} (goal ≤ 1.05)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
