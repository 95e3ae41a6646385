"""The training loop shared by teachers (ERM) and students (ERM or KD from transfer sets).

One call trains one model for exactly ``steps`` optimizer steps and leaves, in ``out_dir``:
``metrics.jsonl`` (train and eval rows), ``curves.png``, ``model.pt`` (a self-describing
checkpoint) and ``result.json``. At each ``checkpoint_epochs``-th epoch end it writes
``state.pt``; a later call with the same spec resumes from it and ends with the same weights as
an uninterrupted run (same seed, readers and machine; see :mod:`student.state`). It runs as one
process, under ``torchrun`` or under Ray Train (:mod:`student.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline import storage
from pipeline.config import SOURCE_SET, KDConfig, ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.format import atomic_write, read_index
from pipeline.models import build_model, count_parameters, load_model, save_checkpoint, stochastic_blocks
from stages.sources import Source, load_in_memory
from student import distributed
from student import regression as reg
from student.curves import TensorBoard, plot_curves
from student.data import derive_seed, source_input_spec
from student.evaluate import classification_metrics, predict_probs
from student.objectives import TRANSFER_STREAM, ERMObjective, KDObjective, Objective, SelfGuided
from student.online import OnlineKDObjective, Teacher
from student.optim import lr_factor, make_optimizer, set_lr
from student.regression_eval import evaluate_regression
from student.shards import open_transfer_sets
from student.state import STATE_NAME, load_state, restore, save_state, spec_hash
from student.stream import RealPart, StreamPlan

__all__ = ["MAX_TRAIN_ROWS", "epoch_steps", "log_interval", "lr_factor", "train_model"]

# At most this many train rows in metrics.jsonl (each averages the steps since the previous one).
MAX_TRAIN_ROWS = 1000


def log_interval(steps: int) -> int:
    """Steps between train rows of metrics.jsonl (the last step always gets a row)."""
    return max(1, math.ceil(steps / MAX_TRAIN_ROWS))


def epoch_steps(cfg: TrainConfig, samples: int) -> int:
    """Steps of one epoch: the configured number, else one pass over ``samples``."""
    return cfg.epoch_steps or max(1, math.ceil(samples / cfg.batch_size))


def _set_threads(cfg: TrainConfig, ctx: distributed.Dist) -> None:
    """``cfg.threads``, or the cores left by the loader workers and the other local ranks.

    Oversubscribed intra-op threads spin against each other: on a busy 2-core machine a tiny
    CNN step took 3 ms with one thread and 160 ms with two."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        return
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    free = (os.cpu_count() or 1) // max(1, local_ranks) - cfg.num_workers
    torch.set_num_threads(max(1, min(torch.get_num_threads(), free)))


class _Window:
    """Mean loss and extras and throughput since the last report; sums stay on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.seconds = torch.zeros((), device=self.device), 0, 0.0
        self.extras: dict[str, float] = {}

    def add(self, loss: torch.Tensor, seconds: float, extras: dict[str, float]) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.seconds += seconds
        for key, value in extras.items():
            self.extras[key] = self.extras.get(key, 0.0) + value

    def take(self, batch_size: int) -> tuple[float, float, dict[str, float]]:
        """``(mean loss, samples/s, mean extras)`` of the window, which then starts again."""
        steps = max(self.steps, 1)
        result = (float(self.loss) / steps, self.steps * batch_size / max(self.seconds, 1e-9),
                  {k: v / steps for k, v in self.extras.items()})
        self.reset()
        return result


def _kd_sets(sets: list[tuple[str, float]]) -> tuple[list[tuple[str, float]], float]:
    """Transfer sets and the weight of the real split (the reserved set name ``source``)."""
    real = sum(w for d, w in sets if d == SOURCE_SET)
    return [(d, w) for d, w in sets if d != SOURCE_SET], real


def batches_per_transfer(cfg: TrainConfig, batch_size: int, source: Source) -> int:
    """The configured number, else as many as fit in 16 MiB (at most 32): few transfers between
    processes without holding large images many times over in the queues."""
    if cfg.batches_per_transfer:
        return cfg.batches_per_transfer
    height, width, channels = source.shape
    batch_bytes = batch_size * (height * width * channels + 4 * source.num_classes + 9)
    return max(1, min(32, (16 << 20) // batch_bytes))


def _build_objective(
    objective: str, train_cfg: TrainConfig, kd_cfg: KDConfig | None, sets: list[tuple[str, float]],
    source: Source, spec: dict[str, Any], ctx: distributed.Dist, seed: int, start_step: int, epoch: int,
    opened: list[Any], teachers: list[Teacher],
) -> Objective:
    common = (train_cfg, spec, ctx.device, seed, ctx.rank)
    if objective == "erm":
        return reg.RegressionERM(source.out_dim, source, *common) if source.out_dim else ERMObjective(source, *common)
    if kd_cfg is None:
        raise UserError(f"objective {objective!r} needs a kd config (temperature, alpha)")
    if objective == "kd_online":
        return OnlineKDObjective(teachers, source, kd_cfg, *common)
    _, real_weight = _kd_sets(sets)
    real = None
    if real_weight > 0:
        real = RealPart(source.images(), source.labels, source.pad, source.flip, real_weight, train_cfg.class_balanced)
    candidates = train_cfg.batch_size
    if kd_cfg.pick is not None:
        candidates = math.ceil(kd_cfg.pick.ratio * train_cfg.batch_size)
    plan = StreamPlan(
        batch_size=candidates, seed=derive_seed(seed, TRANSFER_STREAM), epoch_steps=epoch,
        start_step=start_step, num_workers=train_cfg.num_workers, world_size=ctx.world_size, rank=ctx.rank,
        batches_per_item=batches_per_transfer(train_cfg, candidates, source), shuffle_buffer=train_cfg.shuffle_buffer,
        cache_bytes=int(train_cfg.cache_mb * 2**20), on_bad_shard=train_cfg.on_bad_shard,
    )
    expected = (source.shape[2], source.shape[0], source.shape[1])
    if source.out_dim:
        return reg.RegressionKD(source.out_dim, opened, real, kd_cfg, plan, expected, *common)
    return KDObjective(opened, real, kd_cfg, plan, expected, *common)


def _weights_sha(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_model(
    *, name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, objective: Literal["erm", "kd", "kd_online"],
    kd_cfg: KDConfig | None, sets: list[tuple[str, float]], train_source: Source, test_source: Source,
    out_dir: Path, seed: int, progress: Callable[[str], None] | None = None, resume: bool = True,
    teachers: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train one model; write ``metrics.jsonl``, ``curves.png``, ``model.pt`` and ``result.json``.

    ``sets`` (set directories and weights; the name ``source`` stands for the real split) feed
    the ``kd`` objective; ``erm`` trains on ``train_source``; ``kd_online`` trains on fresh
    augmentations of ``train_source`` labelled by the ``teachers`` checkpoints every step
    (:mod:`student.online`). Every input is checked before
    anything is written. Returns the result dict (also in ``result.json``). A regression source
    (float targets) trains a Gaussian head (:mod:`student.regression`) and reports its error,
    NLL and σ calibration instead of accuracy.
    """
    started = time.perf_counter()
    if objective not in ("erm", "kd", "kd_online"):
        raise UserError(f"objective {objective!r}: expected 'erm', 'kd' or 'kd_online'")
    ctx = distributed.setup()
    _set_threads(train_cfg, ctx)
    device = ctx.device
    test_source = load_in_memory(test_source)
    transfer_sets, real_weight = _kd_sets(sets)
    task, out_dim = train_source.task, train_source.out_dim
    if task == "regress":
        reg.check_options(name, objective, train_cfg, kd_cfg, real_weight)
    opened: list[Any] = []
    if objective == "kd":
        opened = open_transfer_sets(transfer_sets, task=task, on_bad_shard=train_cfg.on_bad_shard)
        what = "target values" if task == "regress" else "classes"
        got = opened[0].out_dim if task == "regress" else opened[0].num_classes
        want = out_dim if task == "regress" else train_source.num_classes
        if got != want:
            raise UserError(f"transfer sets have {got} {what}, the source has {want}")
    online_teachers: list[Teacher] = []
    if objective == "kd_online":
        if task == "regress":
            raise UserError(f"{name}: objective 'kd_online' is for classification; distil a regression "
                            f"ensemble from a transfer set (objective 'kd')")
        if not teachers:
            raise UserError(f"{name}: objective 'kd_online' needs the teachers' checkpoints")
        online_teachers = [(model, payload["input"]) for model, payload in
                           (load_model(path, num_classes=train_source.num_classes) for path in teachers)]
    if objective != "kd" or real_weight > 0:
        train_source = load_in_memory(train_source)
    samples = len(train_source) if objective != "kd" else sum(sum(s.samples) for s in opened)
    epoch = epoch_steps(train_cfg, samples)
    torch.manual_seed(seed)
    regression_head = reg.head(model_cfg, train_source) if task == "regress" else None
    width = sum(regression_head.values()) if regression_head else train_source.num_classes
    plain = build_model(model_cfg.arch, train_source.shape[2], width, model_cfg.arch_kwargs)
    if train_cfg.self_guidance is not None and not stochastic_blocks(plain):
        raise UserError(f"{name}: train.self_guidance needs a stochastic-depth model, e.g. arch resnet_cifar "
                        f"with arch_kwargs.survival < 1")
    tensorboard = TensorBoard(Path(out_dir) / "tensorboard") if train_cfg.tensorboard and ctx.is_main else None
    plain = plain.to(device)
    if train_cfg.channels_last:
        plain = plain.to(memory_format=torch.channels_last)
    spec = source_input_spec(train_source)
    optimizer = make_optimizer(plain, train_cfg)
    use_amp = train_cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    out_dir = Path(out_dir)
    run_spec = spec_hash({
        "model": model_cfg.model_dump(), "train": train_cfg.model_dump(), "objective": objective,
        "kd": kd_cfg.model_dump() if kd_cfg is not None and objective != "erm" else None, "seed": seed,
        "teachers": [str(t) for t in teachers or []] if objective == "kd_online" else [],
        "sets": [(d, w, (read_index(d) or {}).get("fingerprint")) for d, w in transfer_sets] if opened else [],
        "real_weight": real_weight, "world_size": ctx.world_size, "source": train_source.identity,
    })
    state_path = out_dir / STATE_NAME
    start_step = 0
    payload = load_state(state_path, run_spec) if resume else None
    if payload is not None:
        start_step = restore(payload, plain, optimizer, scaler)
        if progress is not None and ctx.is_main:
            progress(f"{name}: resuming at step {start_step} from {state_path}")
    guided = SelfGuided(plain) if train_cfg.self_guidance is not None else plain
    model = distributed.wrap(guided, ctx, find_unused=bool(stochastic_blocks(plain))
                             and train_cfg.self_guidance is None)
    step_fn = _build_objective(objective, train_cfg, kd_cfg, sets, train_source, spec, ctx, seed, start_step,
                               epoch, opened, online_teachers)
    if payload is not None and ctx.is_main:
        step_fn.counts.restore(payload.get("counts", {}))  # rank 0 keeps the sum over ranks

    def evaluate() -> dict[str, Any]:
        if task == "regress":
            return evaluate_regression([plain], [spec], test_source, out_dim)
        return classification_metrics(predict_probs([plain], [spec], test_source), test_source.labels)

    steps, batch = train_cfg.steps, train_cfg.batch_size
    every_log, every_progress = log_interval(steps), max(1, steps // 10)
    logged, shown = _Window(device), _Window(device)
    train_seconds, final = 0.0, {"error" if task == "regress" else "accuracy": float("nan")}
    metrics_path = out_dir / "metrics.jsonl"
    kept: list[str] = []
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if start_step and metrics_path.is_file():
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
    metrics = open(metrics_path, "w") if ctx.is_main else None  # noqa: SIM115  # closed in finally
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else contextlib.nullcontext
    try:
        def write(row: dict[str, Any]) -> None:
            if metrics is not None:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if tensorboard is not None:
                tensorboard.write(row)

        if metrics is not None:
            metrics.write("".join(line + "\n" for line in kept))
        model.train()
        for step in range(start_step + 1, steps + 1):
            if (step - 1) % epoch == 0:
                step_fn.begin_epoch((step - 1) // epoch)
            tick = time.perf_counter()
            lr = train_cfg.lr * lr_factor(step - 1, train_cfg)
            set_lr(optimizer, lr)
            with autocast():
                loss, extras = step_fn.step(model, plain)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if train_cfg.clip_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), train_cfg.clip_grad_norm)
                extras["grad_norm"] = float(norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            seconds = time.perf_counter() - tick
            train_seconds += seconds
            logged.add(loss, seconds, extras)
            shown.add(loss, seconds, extras)
            if step % every_log == 0 or step == steps:
                mean_loss, sps, means = logged.take(batch)
                if not math.isfinite(mean_loss):
                    raise UserError(f"{name}: training diverged at step {step} (loss {mean_loss}); lower train.lr")
                write({"kind": "train", "step": step, "epoch": (step - 1) // epoch, "loss": mean_loss, "lr": lr,
                       "samples_per_s": sps, **means, **_counts(step_fn)})
            if progress is not None and ctx.is_main and (step % every_progress == 0 or step == steps):
                mean_loss, sps, _ = shown.take(batch)
                progress(f"{name}: step {step}/{steps} loss {mean_loss:.4f} {sps:.0f} samples/s")
            if ctx.is_main and ((train_cfg.eval_every and step % train_cfg.eval_every == 0) or step == steps):
                final = evaluate()
                write({"kind": "eval", "step": step, **final})
            if step % (epoch * train_cfg.checkpoint_epochs) == 0 and step < steps:
                counts = _summed_counts(step_fn, ctx)
                if ctx.is_main:
                    save_state(state_path, spec=run_spec, step=step, model=plain, optimizer=optimizer, scaler=scaler,
                               counts=counts)
                distributed.barrier(ctx)
        distributed.sync_buffers(plain, ctx)
    finally:
        step_fn.close()
        if metrics is not None:
            metrics.close()
        if tensorboard is not None:
            tensorboard.close()

    result = {
        "name": name, "objective": objective, **({"accuracy": final["accuracy"]} if task != "regress" else {}),
        "steps": steps,
        "seconds": time.perf_counter() - started,
        "samples_per_s": (steps - start_step) * batch / max(train_seconds, 1e-9),
        "parameters": count_parameters(plain),
    }
    stats = step_fn.stats()
    result["seen"] = views_seen(_summed_counts(step_fn, ctx), opened, len(train_source), objective)
    if ctx.enabled:
        visited = sorted(set(getattr(step_fn, "loader", None).visited)) if objective == "kd" else []
        atomic_write(out_dir / f"rank-{ctx.rank}.json", json.dumps(
            {"rank": ctx.rank, "weights_sha256": _weights_sha(plain), "visited": visited, **stats}, indent=1).encode())
    if ctx.is_main:
        result["checkpoint_sha256"] = save_checkpoint(
            out_dir / "model.pt", plain, arch=model_cfg.arch, arch_kwargs=model_cfg.arch_kwargs,
            num_classes=train_source.num_classes, input=spec, task=task, head=regression_head,
            train={**train_cfg.model_dump(), "objective": objective, "seed": seed,
                   **({"kd": kd_cfg.model_dump()} if objective != "erm" and kd_cfg is not None else {})},
        )
        result.update({k: final[k] for k in ("top5", "ece") if k in final})
        result.update(reg.headline(final) if task == "regress" else {})
        if stats.get("shards_skipped"):
            result["shards_skipped"] = stats["shards_skipped"]
        plot_curves(metrics_path, out_dir / "curves.png", name)
        atomic_write(out_dir / "result.json", json.dumps(result, indent=1).encode())
        state_path.unlink(missing_ok=True)
    distributed.barrier(ctx)
    return result


def _summed_counts(step_fn: Objective, ctx: distributed.Dist) -> dict[str, list[int]]:
    """The objective's row counts summed over the ranks (a collective: every rank calls it)."""
    return {key: distributed.sum_over_ranks(values, ctx) for key, values in step_fn.counts.state().items()}


def views_seen(counts: dict[str, list[int]], opened: list[Any], source_samples: int,
               objective: str) -> list[dict[str, Any]]:
    """How often the run saw each sample of each of its sets: one row per transfer set, then the
    real split where it was used, with the samples, the rows drawn and trained on (they differ
    with ``pick``) and ``seen`` = trained / samples. A stored view is the same pixels and target
    each time it is seen; the real split's rows are fresh augmentations (``stored: false``)."""
    origins = [(storage.name_of(s.directory), sum(max(0, n) for n in s.samples), True)
               for s in opened] if objective == "kd" else []
    origins.append(("source", source_samples, False))  # the last origin is always the real split
    rows = []
    for where, (name, samples, stored) in enumerate(origins):
        trained, drawn = counts["trained"][where], counts["drawn"][where]
        if not stored and objective == "kd" and not drawn:
            continue  # a kd student without the real split
        rows.append({"set": name, "stored": stored, "samples": samples, "drawn": drawn, "trained": trained,
                     "seen": trained / samples if samples else 0.0})
    return rows


def _counts(step_fn: Objective) -> dict[str, int]:
    stats = step_fn.stats()
    return {"shards_skipped": stats["shards_skipped"]} if stats.get("shards_skipped") else {}
