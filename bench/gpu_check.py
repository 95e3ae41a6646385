"""A prepared GPU check: the teacher stage and a few student steps on CUDA, without Ray.

What a GPU machine must show before a cluster job uses it, in one short run:

1. **Teachers** — ``stages.teachers.Ensemble`` (the class a Ray shard actor holds) with two
   members of different architectures and input sizes (a seeded ``resnet_cifar`` at half the
   image size, so the per-member antialiased resize runs, and ``torchvision:resnet18`` at the
   image size), labelling uint8 NHWC batches through pinned host memory in channels-last: in
   fp32 and under autocast bf16, with samples/s of each and the agreement of the two (argmax of
   the ensemble's log p̄, largest |Δ log p̄|). Also: the fp32 targets of a repeated call (does
   the device give the same floats twice?) and of a batch handed over already on the device (as
   a fused generator does).
2. **Student** — a few KD steps (``student.losses.kd_loss`` on those targets,
   ``student.optim.make_optimizer``) of a ``resnet_cifar`` student in fp32, under autocast bf16,
   and on CUDA under autocast fp16 with a ``GradScaler`` (the trainer's ``train.amp`` path), with
   steps/s of each.

Ends with one JSON line: ``device`` (``cuda`` or ``cpu``), ``device_name``, the figures, and
``imported_packages`` (the third-party packages this run imported: what a machine without the
project's environment must have or be carried). No Ray, no webdataset, no pipeline module.
Weights are seeded and random: the cost and the agreement of bf16 with fp32 do not need trained
ones. Usage::

    python bench/gpu_check.py           # on a GPU machine: well under 5 minutes
    python bench/gpu_check.py --quick   # small sizes on whatever device there is (seconds on a CPU)

See docs/BENCHMARKS.md ("GPU check") for what to carry to a machine without pydantic.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from core.config import TrainConfig
from core.models import CifarResNet, build_model, input_spec, save_checkpoint
from stages.teachers import Ensemble
from student.losses import kd_loss
from student.optim import make_optimizer

CLASSES = 10
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_members(directory: Path, size: int) -> list[str]:
    """Two seeded members: ``resnet_cifar`` at ``size // 2`` (resized) and ``torchvision:resnet18``
    at ``size`` (not resized)."""
    torch.manual_seed(0)
    small = CifarResNet(3, CLASSES, depth=8, width=16)
    save_checkpoint(directory / "resnet_cifar.pt", small, arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 16},
                    num_classes=CLASSES, input=input_spec(size // 2, size // 2, 3, MEAN, STD))
    torch.manual_seed(1)
    large = build_model("torchvision:resnet18", 3, CLASSES)
    save_checkpoint(directory / "resnet18.pt", large, arch="torchvision:resnet18", arch_kwargs={},
                    num_classes=CLASSES, input=input_spec(size, size, 3, MEAN, STD))
    return [str(directory / "resnet_cifar.pt"), str(directory / "resnet18.pt")]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def labelling_rate(ensemble: Ensemble, batches: list[np.ndarray]) -> tuple[float, Any]:
    """Samples/s of ``Ensemble.predict`` over ``batches`` (after one warm-up call) and the targets."""
    ensemble.predict(batches[0])
    synchronize(ensemble.device)
    began = time.perf_counter()
    outputs = [ensemble.predict(batch) for batch in batches]
    synchronize(ensemble.device)
    return sum(len(b) for b in batches) / (time.perf_counter() - began), outputs


def teacher_check(paths: list[str], batches: list[np.ndarray], device: str, batch_size: int) -> dict[str, Any]:
    """The ensemble in fp32 and under autocast bf16: rates and agreement."""
    def ensemble(autocast: str) -> Ensemble:
        return Ensemble(paths, CLASSES, device=device, threads=torch.get_num_threads(), batch_size=batch_size,
                        autocast=autocast, channels_last=True, pin_memory=True)

    fp32, bf16 = ensemble("none"), ensemble("bf16")
    fp32_rate, fp32_out = labelling_rate(fp32, batches)
    bf16_rate, bf16_out = labelling_rate(bf16, batches)
    logp32 = np.concatenate([o.logp for o in fp32_out])
    logp16 = np.concatenate([o.logp for o in bf16_out])
    repeated = fp32.predict(batches[0]).logp
    on_device = fp32.predict(torch.from_numpy(batches[0]).to(fp32.device)).logp
    first = fp32.members[0].model
    conv = next(m for m in first.modules() if isinstance(m, torch.nn.Conv2d)).weight
    size = batches[0].shape[1:3]
    return {
        "teacher_samples_per_s_fp32": round(fp32_rate, 1), "teacher_samples_per_s_bf16": round(bf16_rate, 1),
        "bf16_autocast": bf16.autocast is torch.bfloat16,
        "bf16_argmax_agreement": round(float(np.mean(logp32.argmax(1) == logp16.argmax(1))), 4),
        "bf16_max_abs_dlogp": round(float(np.abs(logp32 - logp16).max()), 5),
        "bf16_mean_abs_dlogp": round(float(np.abs(logp32 - logp16).mean()), 6),
        "fp32_mean_top2_gap": round(float(np.mean(np.diff(np.sort(logp32, axis=1)[:, -2:], axis=1))), 5),
        "fp32_repeat_max_abs_dlogp": float(np.abs(repeated - logp32[: len(repeated)]).max()),
        "device_input_max_abs_dlogp": float(np.abs(on_device - logp32[: len(on_device)]).max()),
        "channels_last": bool(conv.is_contiguous(memory_format=torch.channels_last)),
        "pinned_memory": bool(fp32.pin_memory),
        "members": [{"arch": p["arch"], "input": list(p["input"]["size"])} for p in fp32.payloads],
        "resized_members": sum(tuple(m.size) != tuple(size) for m in fp32.members),
        "teacher_samples": int(len(logp32)),
    }, logp32


def student_steps(images: np.ndarray, targets: np.ndarray, device: torch.device, precision: str, steps: int,
                  batch_size: int) -> dict[str, float]:
    """``steps`` KD steps of a seeded ``resnet_cifar`` student in ``precision`` (fp32, bf16, or
    fp16 with a GradScaler as the trainer does on CUDA): steps/s (after one warm-up step) and the
    first and last loss."""
    torch.manual_seed(2)
    model = CifarResNet(3, CLASSES, depth=8, width=16).to(device, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, TrainConfig(steps=steps, lr=0.05))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    mean = torch.tensor(MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).reshape(1, 3, 1, 1)
    x_all = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
    x_all = x_all.contiguous(memory_format=torch.channels_last)
    t_all = torch.from_numpy(targets).to(device)
    no_labels = torch.full((batch_size,), -1, dtype=torch.long, device=device)
    losses = []
    for step in range(steps + 1):  # step 0 warms up (kernels chosen, memory allocated)
        if step == 1:
            synchronize(device)
            began = time.perf_counter()
        rows = torch.arange(step * batch_size, (step + 1) * batch_size, device=device) % len(x_all)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = kd_loss(model(x_all[rows]), t_all[rows], no_labels, temperature=4.0, alpha=1.0)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    synchronize(device)
    seconds = time.perf_counter() - began
    return {f"student_steps_per_s_{precision}": round(steps / seconds, 2),
            f"student_samples_per_s_{precision}": round(steps * batch_size / seconds, 1),
            f"student_loss_first_{precision}": round(losses[1], 5),
            f"student_loss_last_{precision}": round(losses[-1], 5)}


def imported_packages() -> list[str]:
    """Third-party top-level packages loaded in this process (neither the standard library nor
    the project's own floors)."""
    own = {"core", "stages", "student", "pipeline", "common", "__main__", "gpu_check", "cython_runtime"}
    names = {name.split(".")[0] for name in sys.modules if sys.modules[name] is not None}
    return sorted(n for n in names if n not in own and n not in sys.stdlib_module_names and not n.startswith("_"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run on any device")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", type=int, help="image side (default 160; --quick 32)")
    parser.add_argument("--batch-size", type=int, help="teacher batch (default 512; --quick 32)")
    parser.add_argument("--batches", type=int, help="teacher batches timed (default 16; --quick 2)")
    parser.add_argument("--steps", type=int, help="student steps per precision (default 30; --quick 3)")
    args = parser.parse_args()
    size = args.size or (32 if args.quick else 160)
    batch_size = args.batch_size or (32 if args.quick else 512)
    batches_count = args.batches or (2 if args.quick else 16)
    steps = args.steps or (3 if args.quick else 30)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    began = time.perf_counter()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8) for _ in range(batches_count)]
    with tempfile.TemporaryDirectory() as directory:
        paths = build_members(Path(directory), size)
        teachers, targets = teacher_check(paths, batches, device.type, batch_size)
    images = np.concatenate(batches)
    student: dict[str, float] = {}
    for precision in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"):
        student.update(student_steps(images, targets.astype(np.float32), device, precision, steps,
                                     min(batch_size, len(images))))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    figures = {"device": device.type, "device_name": name, "torch": torch.__version__, "image_size": size,
               "batch_size": batch_size, **teachers, "student_steps": steps, **student,
               "seconds": round(time.perf_counter() - began, 1), "imported_packages": imported_packages()}
    print(f"{name} ({device.type}): teachers {teachers['teacher_samples_per_s_fp32']:.0f} samples/s fp32, "
          f"{teachers['teacher_samples_per_s_bf16']:.0f} bf16 (autocast applied: {teachers['bf16_autocast']}); "
          f"bf16 vs fp32 argmax agreement {teachers['bf16_argmax_agreement']:.4f}, max |Δ log p| "
          f"{teachers['bf16_max_abs_dlogp']:.4f}; student "
          + ", ".join(f"{p} {student[f'student_steps_per_s_{p}']:.1f} steps/s" for p in ("fp32", "bf16", "fp16")
                      if f"student_steps_per_s_{p}" in student), file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
