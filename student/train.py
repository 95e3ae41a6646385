"""The training loop shared by teachers (ERM, + CutMix) and students (ERM or KD from transfer sets).

One call trains one model for exactly ``steps`` optimizer steps and leaves, in ``out_dir``:
``metrics.jsonl`` (train and eval rows), ``model.pt`` (a self-describing checkpoint) and
``result.json``. Everything random is seeded from ``seed``, so a run repeats exactly on the same
machine (for KD: with the same ``num_workers``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import KDConfig, ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.format import atomic_write
from pipeline.models import build_model, count_parameters, save_checkpoint
from stages.sources import Source, load_in_memory
from student.data import derive_seed, normalize, real_batches, source_input_spec, transfer_loader
from student.evaluate import accuracy, predict_probs
from student.losses import cutmix, cutmix_loss, kd_loss

# Random streams of a run, each seeded with derive_seed(seed, stream).
DATA_STREAM, CUTMIX_STREAM, TRANSFER_STREAM = 1, 2, 3
# At most this many train rows in metrics.jsonl (each averages the steps since the previous one).
MAX_TRAIN_ROWS = 1000


def log_interval(steps: int) -> int:
    """Steps between train rows of metrics.jsonl (the last step always gets a row)."""
    return max(1, math.ceil(steps / MAX_TRAIN_ROWS))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for 0-based ``step``: linear warm-up, then cosine to 0 or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _limit_threads() -> None:
    """Keep torch's default thread count unless it oversubscribes the machine's cores."""
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def _loss_fn(
    objective: str, source: Source, train_cfg: TrainConfig, kd_cfg: KDConfig | None,
    sets: list[tuple[str, float]], spec: dict[str, Any], device: torch.device, seed: int,
) -> tuple[Callable[[nn.Module], torch.Tensor], Callable[[], None]]:
    """``(loss of the next batch, close)`` for the objective; opens (and checks) the data first."""
    def to_input(images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(device, non_blocking=True), spec)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    if objective == "erm":
        batches = real_batches(source, train_cfg.batch_size, derive_seed(seed, DATA_STREAM))
        mix_rng = torch.Generator().manual_seed(derive_seed(seed, CUTMIX_STREAM))

        def erm(model: nn.Module) -> torch.Tensor:
            images, labels = next(batches)
            x, labels = to_input(images), labels.to(device, non_blocking=True)
            if train_cfg.cutmix > 0 and float(torch.rand((), generator=mix_rng)) < train_cfg.cutmix:
                x, labels_a, labels_b, lam = cutmix(x, labels, mix_rng)
                return cutmix_loss(model(x), labels_a, labels_b, lam)
            return F.cross_entropy(model(x), labels)

        return erm, batches.close

    if kd_cfg is None:
        raise UserError("objective 'kd' needs a kd config (temperature, alpha)")
    loader = transfer_loader(sets, train_cfg.batch_size, derive_seed(seed, TRANSFER_STREAM),
                             train_cfg.num_workers, train_cfg.shuffle_buffer)
    if loader.num_classes != source.num_classes:
        raise UserError(f"transfer sets have {loader.num_classes} classes, "
                        f"the source has {source.num_classes}")
    stream: Iterator[dict[str, torch.Tensor]] = iter(loader)
    expected = (source.shape[2], source.shape[0], source.shape[1])

    def kd(model: nn.Module) -> torch.Tensor:
        batch = next(stream)
        if tuple(batch["image"].shape[1:]) != expected:
            raise UserError(f"transfer set images are {tuple(batch['image'].shape[1:])} (C, H, W), "
                            f"the source's are {expected}; make the sets from the same source")
        logp = batch["logp"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        return kd_loss(model(to_input(batch["image"])), logp, labels, kd_cfg.temperature, kd_cfg.alpha)

    return kd, stream.close  # type: ignore[attr-defined]  # a generator: close() stops the workers


class _Window:
    """Mean loss and throughput since the last report; the loss sum stays on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss, self.steps, self.seconds = torch.zeros((), device=device), 0, 0.0

    def add(self, loss: torch.Tensor, seconds: float) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.seconds += seconds

    def take(self, batch_size: int) -> tuple[float, float]:
        """``(mean loss, samples/s)`` of the window, which then starts again."""
        steps = max(self.steps, 1)
        result = (float(self.loss) / steps, self.steps * batch_size / max(self.seconds, 1e-9))
        self.loss, self.steps, self.seconds = torch.zeros((), device=self.device), 0, 0.0
        return result


def train_model(
    *, name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, objective: Literal["erm", "kd"],
    kd_cfg: KDConfig | None, sets: list[tuple[str, float]], train_source: Source, test_source: Source,
    out_dir: Path, seed: int, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one model; write ``metrics.jsonl``, ``model.pt`` and ``result.json`` to ``out_dir``.

    ``sets`` (set directories and weights) feed the ``kd`` objective; ``erm`` trains on
    ``train_source`` with standard augmentation and CutMix with probability ``train_cfg.cutmix``.
    Returns the result dict (also in ``result.json``).
    """
    started = time.perf_counter()
    if objective not in ("erm", "kd"):
        raise UserError(f"objective {objective!r}: expected 'erm' or 'kd'")
    _limit_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Decode folder images once: ERM samples the split every step, evaluation reads the test split often.
    test_source = load_in_memory(test_source)
    if objective == "erm":
        train_source = load_in_memory(train_source)
    channels = train_source.shape[2]
    spec = source_input_spec(train_source)
    torch.manual_seed(seed)
    model = build_model(model_cfg.arch, channels, train_source.num_classes, model_cfg.arch_kwargs).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_cfg)
    next_loss, close = _loss_fn(objective, train_source, train_cfg, kd_cfg, sets, spec, device, seed)

    def evaluate() -> float:
        return accuracy(predict_probs([model], [spec], test_source), test_source.labels)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps, batch = train_cfg.steps, train_cfg.batch_size
    every_log, every_progress = log_interval(steps), max(1, steps // 10)
    logged, shown, train_seconds, final = _Window(device), _Window(device), 0.0, float("nan")
    try:
        with open(out_dir / "metrics.jsonl", "w") as metrics:
            def write(row: dict[str, Any]) -> None:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()

            model.train()
            for step in range(1, steps + 1):
                tick = time.perf_counter()
                lr = train_cfg.lr * lr_factor(step - 1, train_cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = next_loss(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seconds = time.perf_counter() - tick
                train_seconds += seconds
                logged.add(loss, seconds)
                shown.add(loss, seconds)
                if step % every_log == 0 or step == steps:
                    mean_loss, sps = logged.take(batch)
                    if not math.isfinite(mean_loss):
                        raise UserError(f"{name}: training diverged at step {step} (loss {mean_loss}); "
                                        f"lower train.lr")
                    write({"kind": "train", "step": step, "loss": mean_loss, "lr": lr, "samples_per_s": sps})
                if progress is not None and (step % every_progress == 0 or step == steps):
                    mean_loss, sps = shown.take(batch)
                    progress(f"{name}: step {step}/{steps} loss {mean_loss:.4f} {sps:.0f} samples/s")
                if (train_cfg.eval_every and step % train_cfg.eval_every == 0) or step == steps:
                    final = evaluate()
                    write({"kind": "eval", "step": step, "accuracy": final})
    finally:
        close()

    sha = save_checkpoint(
        out_dir / "model.pt", model, arch=model_cfg.arch, arch_kwargs=model_cfg.arch_kwargs,
        num_classes=train_source.num_classes, input=spec,
        train={**train_cfg.model_dump(), "objective": objective, "seed": seed,
               **({"kd": kd_cfg.model_dump()} if objective == "kd" and kd_cfg is not None else {})},
    )
    result = {
        "name": name, "objective": objective, "accuracy": final, "steps": steps,
        "seconds": time.perf_counter() - started,
        "samples_per_s": steps * batch / max(train_seconds, 1e-9),
        "parameters": count_parameters(model), "checkpoint_sha256": sha,
    }
    atomic_write(out_dir / "result.json", json.dumps(result, indent=1).encode())
    return result
