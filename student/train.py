"""The training loop shared by teachers (ERM) and students (ERM or KD from transfer sets).

One call trains one model for exactly ``steps`` optimizer steps and leaves, in ``out_dir``:
``metrics.jsonl`` (train and eval rows), ``curves.png``, ``model.pt`` (a self-describing
checkpoint) and ``result.json``. Every ``checkpoint_steps`` steps it writes ``state.pt``; a later
call with the same spec resumes from it — at any step, mid-epoch — and ends with the same weights
as an uninterrupted run (same seed, readers and machine; see :mod:`student.state`). It runs as one
process, under ``torchrun`` or under Ray Train (:mod:`student.distributed`); only rank 0 writes.

:func:`train_model` is three parts: :func:`student.build.build_run` (inputs checked, model,
optimizer and objective built, a saved state picked up), :func:`loop` (the steps) and
:func:`finish` (checkpoint and result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.models import count_parameters, save_checkpoint
from core.progress import Progress
from core.sources import Source
from core.store import storage
from student import distributed
from student.build import Run, batches_per_transfer, build_run, epoch_steps
from student.cpu_kernels import safe_cpu_kernels
from student.curves import plot_curves
from student.metrics import MAX_TRAIN_ROWS, MetricsLog, Window, log_interval
from student.objectives import Objective
from student.optim import lr_factor, set_lr
from student.request import TrainRequest
from student.state import save_state
from student.stream.coverage import Coverage
from student.tasks import EVALUATE

__all__ = ["MAX_TRAIN_ROWS", "TrainRequest", "batches_per_transfer", "epoch_steps", "log_interval", "lr_factor",
           "train_model"]


def train_model(request: TrainRequest, train_source: Source, test_source: Source, progress: Progress | None = None,
                resume: bool = True) -> dict[str, Any]:
    """Train one model (:class:`student.request.TrainRequest`); write ``metrics.jsonl``,
    ``curves.png``, ``model.pt`` and ``result.json``.

    ``erm`` trains on ``train_source``; ``kd`` on the request's sets; ``kd_online`` on fresh
    augmentations of ``train_source`` labelled by the request's teachers every step
    (:mod:`student.online`). Every input is checked before anything is written. Returns the
    result dict (also in ``result.json``). The source's task decides the model's head, the
    objective's loss and the metrics: a regression source (float targets) trains a Gaussian head
    (:mod:`student.regression`) and reports its error, NLL and σ calibration instead of accuracy.
    Before training, a KD run says how often it will see each stored view of each set and warns
    past the request's ``views_seen_warning``. ``resume``: pick up a saved state of the same run.
    """
    started = time.perf_counter()
    run = build_run(request, train_source, test_source, progress, resume)
    planned = planned_views_seen(run)
    if progress is not None and run.ctx.is_main:
        for line in views_seen_lines(request.name, planned, request.views_seen_warning):
            progress(line)
    with safe_cpu_kernels(run.plain, run.ctx.device):
        final, train_seconds = loop(run)
    return finish(run, final, train_seconds, time.perf_counter() - started, planned)


def evaluate(run: Run) -> dict[str, Any]:
    """The model's metrics on the held-out split (its task's :data:`student.tasks.EVALUATE`)."""
    return EVALUATE[run.task.name]([run.plain], [run.input_contract], run.test_source)


def step_once(run: Run, step: int) -> tuple[float, torch.Tensor, dict[str, float], float]:
    """One optimizer step: ``(lr, loss, extras, seconds)``."""
    cfg, optimizer, scaler = run.train_cfg, run.optimizer, run.scaler
    tick = time.perf_counter()
    lr = cfg.lr * lr_factor(step - 1, cfg)
    set_lr(optimizer, lr)
    with torch.autocast("cuda", dtype=torch.float16) if scaler is not None else contextlib.nullcontext():
        loss, extras = run.step_fn.step(run.model, run.plain)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if run.shaper is not None:
        run.shaper.after_backward()
    if cfg.clip_grad_norm is not None:
        extras["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(run.plain.parameters(), cfg.clip_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if run.shaper is not None:
        run.shaper.after_step()
    return lr, loss, extras, time.perf_counter() - tick


def save_train_state(run: Run, step: int) -> None:
    """The resumable state after ``step`` (rank 0 writes it; the row counts and what was read are
    summed over the ranks first)."""
    counts = summed_counts(run.step_fn, run.ctx)
    coverage = merged_coverage(run.step_fn, run.ctx)
    if run.ctx.is_main:
        save_state(run.state_path, spec=run.state_hash, step=step, model=run.plain, optimizer=run.optimizer,
                   scaler=run.scaler, counts=counts, coverage=None if coverage is None else coverage.state())
    distributed.barrier(run.ctx)


def loop(run: Run) -> tuple[dict[str, Any], float]:
    """Train from ``run.start_step`` to the last step, logging, evaluating and saving states as
    configured; returns the last evaluation and the seconds spent in steps."""
    cfg, ctx, epoch, steps = run.train_cfg, run.ctx, run.epoch, run.train_cfg.steps
    every_log, every_progress = log_interval(steps), max(1, steps // 10)
    logged, shown = Window(ctx.device), Window(ctx.device)
    train_seconds, final = 0.0, {run.task.headline: float("nan")}
    log = MetricsLog(run.request.out_dir / "metrics.jsonl", run.start_step, ctx.is_main, run.tensorboard)
    try:
        run.model.train()
        for step in range(run.start_step + 1, steps + 1):
            run.step_fn.begin_step(step)
            lr, loss, extras, seconds = step_once(run, step)
            train_seconds += seconds
            logged.add(loss, seconds, extras)
            shown.add(loss, seconds, extras)
            if step % every_log == 0 or step == steps:
                mean_loss, sps, means = logged.take(cfg.batch_size)
                if not math.isfinite(mean_loss):
                    raise UserError(f"{run.name}: training diverged at step {step} (loss {mean_loss}); lower train.lr")
                log.write({"kind": "train", "step": step, "epoch": (step - 1) // epoch, "loss": mean_loss, "lr": lr,
                           "samples_per_s": sps, **means, **skipped(run.step_fn), **read_so_far(run)})
            if run.progress is not None and ctx.is_main and (step % every_progress == 0 or step == steps):
                mean_loss, sps, _ = shown.take(cfg.batch_size)
                run.progress(f"{run.name}: step {step}/{steps} loss {mean_loss:.4f} {sps:.0f} samples/s")
            if ctx.is_main and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                final = evaluate(run)
                log.write({"kind": "eval", "step": step, **final})
            if step % cfg.checkpoint_steps == 0 and step < steps:
                save_train_state(run, step)
        distributed.sync_buffers(run.plain, ctx)
    finally:
        run.step_fn.close()
        log.close()
    return final, train_seconds


def finish(run: Run, final: dict[str, Any], train_seconds: float, seconds: float,
           planned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``model.pt``, ``curves.png`` and ``result.json`` (rank 0; every rank writes its
    ``rank-<r>.json`` when distributed) and drop the train state; returns the result."""
    ctx, cfg, task = run.ctx, run.train_cfg, run.task
    request = run.request
    result = {"name": run.name, "objective": request.objective, task.headline: final[task.headline], "steps": cfg.steps,
              "seconds": seconds, "samples_per_s": (cfg.steps - run.start_step) * cfg.batch_size
              / max(train_seconds, 1e-9), "parameters": count_parameters(run.plain)}
    stats = run.step_fn.stats()
    coverage = merged_coverage(run.step_fn, ctx)
    result["seen"] = views_seen(summed_counts(run.step_fn, ctx), run.opened, len(run.train_source), coverage)
    if coverage is not None:
        result["images_per_batch"] = coverage.images_per_batch()
    if planned:
        result["planned_seen"] = planned
    if ctx.enabled:
        storage.atomic_write(run.request.out_dir / f"rank-{ctx.rank}.json", json.dumps(
            {"rank": ctx.rank, "weights_sha256": _weights_sha(run.plain), "visited": run.step_fn.visited(), **stats},
            indent=1).encode())
    if ctx.is_main:
        kd = request.objective_kind.kd_record(request.kd)
        result["checkpoint_sha256"] = save_checkpoint(
            request.out_dir / "model.pt", run.plain, arch=request.model.arch, arch_kwargs=request.model.arch_kwargs,
            num_classes=run.train_source.num_classes, input=run.input_contract, task=task.name, head=run.head,
            train={**cfg.model_dump(), "objective": request.objective, "seed": request.seed,
                   **({"kd": kd} if kd is not None else {})},
            pruned=run.shaper.record(run.plain) if run.shaper is not None else None,
        )
        result.update({k: final[k] for k in task.result_keys if k in final})
        if stats.get("shards_skipped"):
            result["shards_skipped"] = stats["shards_skipped"]
        plot_curves(run.request.out_dir / "metrics.jsonl", run.request.out_dir / "curves.png", run.name)
        storage.atomic_write(run.request.out_dir / "result.json", json.dumps(result, indent=1).encode())
        run.state_path.unlink(missing_ok=True)
    distributed.barrier(ctx)
    return result


def _weights_sha(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def summed_counts(step_fn: Objective, ctx: distributed.Dist) -> dict[str, list[int]]:
    """The objective's row counts summed over the ranks (a collective: every rank calls it)."""
    return {key: distributed.sum_over_ranks(values, ctx) for key, values in step_fn.counts.state().items()}


def merged_coverage(step_fn: Objective, ctx: distributed.Dist) -> Coverage | None:
    """What the run read, merged over the ranks (a collective: every rank calls it)."""
    coverage = step_fn.counts.coverage
    if coverage is None:
        return None
    return coverage.merged(lambda bits: distributed.max_over_ranks(bits, ctx),
                           lambda values: distributed.sum_over_ranks(values, ctx))


def views_seen(counts: dict[str, list[int]], opened: list[Any], source_samples: int,
               coverage: Coverage | None = None) -> list[dict[str, Any]]:
    """How often the run saw each sample of each of its sets: one row per transfer set, then the
    real split where it was used, with the samples, the rows drawn and trained on (they differ
    with ``pick``) and ``seen`` = trained / samples. A stored view is the same pixels and target
    each time it is seen; the real split's rows are fresh augmentations (``stored: false``). With
    ``coverage``, each row also has the distinct samples and distinct source images read and the
    mean distinct source images per batch among the origin's rows."""
    origins = [(storage.name_of(s.directory), sum(max(0, n) for n in s.samples), True) for s in opened]
    origins.append(("source", source_samples, False))  # the last origin is always the real split
    rows = []
    for where, (name, samples, stored) in enumerate(origins):
        trained, drawn = counts["trained"][where], counts["drawn"][where]
        if not stored and opened and not drawn:
            continue  # a student of transfer sets without the real split
        row = {"set": name, "stored": stored, "samples": samples, "drawn": drawn, "trained": trained,
               "seen": trained / samples if samples else 0.0}
        if coverage is not None and where < len(coverage.sizes):
            row.update(coverage.rows()[where])
        rows.append(row)
    return rows


def planned_views_seen(run: Run) -> list[dict[str, Any]]:
    """How often a KD run will see each stored view of each of its sets, before it trains:
    steps × rows drawn per step × the set's share of the weights ÷ the set's samples (pick draws
    ``ratio`` × batch candidates a step, and each of them is a view seen)."""
    if not run.opened:
        return []
    kd, cfg = run.request.kd, run.train_cfg
    drawn = cfg.batch_size if kd is None or kd.pick is None else math.ceil(kd.pick.ratio * cfg.batch_size)
    total = sum(s.weight for s in run.opened) + run.request.real_weight
    rows = []
    for shards in run.opened:
        samples = sum(max(0, n) for n in shards.samples)
        seen = cfg.steps * drawn * shards.weight / total / max(samples, 1)
        rows.append({"set": storage.name_of(shards.directory), "samples": samples, "share": shards.weight / total,
                     "seen": seen, "replay": shards.shard_format.rebuilds})
    return rows


def views_seen_lines(name: str, planned: list[dict[str, Any]], bound: float | None) -> list[str]:
    """The progress lines of :func:`planned_views_seen`, a warning where a set passes ``bound``."""
    lines = []
    for row in planned:
        lines.append(f"{name}: set {row['set']}: each of its {row['samples']} stored samples will be seen "
                     f"{row['seen']:.1f} times ({row['share']:.0%} of the rows)")
        if bound is not None and row["seen"] > bound:
            lines.append(f"warning: {name}: set {row['set']}: {row['seen']:.0f} sightings per stored sample exceed "
                         f"student_stage.views_seen_warning ({bound:g}); a student overfits repeated teacher "
                         f"targets: store more views (store: replay makes them tens of bytes) or train fewer steps")
    return lines


def read_so_far(run: Run) -> dict[str, Any]:
    """For a train row: per origin, the distinct samples and distinct source images this rank
    has read so far (``result.json``'s ``seen`` has the figures merged over the ranks)."""
    coverage = run.step_fn.counts.coverage
    if coverage is None:
        return {}
    names = [*(storage.name_of(s.directory) for s in run.opened), "source"]
    return {"read": {name: {"samples": int(samples.sum()), "images": int(images.sum())}
                     for name, samples, images, batches in zip(names, coverage.samples, coverage.images,
                                                               coverage.batches, strict=True) if batches}}


def skipped(step_fn: Objective) -> dict[str, int]:
    """The damaged shards skipped so far, for a train row (nothing when none were)."""
    stats = step_fn.stats()
    return {"shards_skipped": stats["shards_skipped"]} if stats.get("shards_skipped") else {}
