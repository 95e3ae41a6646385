"""Building a training run (the first of :func:`student.train.train_model`'s three parts): check
every input before anything is written, open the data, build the model, optimizer and objective,
and pick up a saved train state of the same run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import SOURCE_SET, KDConfig, ModelConfig, TrainConfig
from core.errors import UserError
from core.models import build_model, load_model, probe_forward, stochastic_blocks
from core.models.zoo import library_of
from core.seeds import stream_seed
from core.sets.index import read_index
from core.sources import Source, in_memory_if_small
from core.tasks import Task
from student import distributed
from student.curves import TensorBoard
from student.data import source_input_spec
from student.objectives import TRANSFER_STREAM, Objective, SelfGuided
from student.online import Teacher
from student.optim import make_optimizer
from student.pruning.shaping import Shaper, Shaping
from student.shards import SetShards, check_sampled_temperature, open_transfer_sets
from student.state import STATE_NAME, load_state, restore, spec_hash
from student.stream import RealPart, StreamPlan
from student.stream.coverage import Coverage
from student.tasks import OBJECTIVES

Progress = Callable[[str], None]


@dataclass
class Run:
    """One training run, built: what the loop trains and the finish writes."""

    name: str
    objective: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    kd_cfg: KDConfig | None
    task: Task
    seed: int
    out_dir: Path
    progress: Progress | None
    ctx: distributed.Dist
    train_source: Source
    test_source: Source
    opened: list[SetShards]  # the transfer sets (kd)
    head: dict[str, int]  # what the model predicts (its checkpoint's head)
    spec: dict[str, Any]  # the model's input contract
    plain: nn.Module  # the model itself
    model: nn.Module  # what the step runs: plain, or Self-Guidance's pair, in DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # mixed precision on CUDA
    step_fn: Objective
    run_spec: str  # the hash a resumable state must carry
    start_step: int
    epoch: int  # steps per epoch
    tensorboard: TensorBoard | None
    shaper: Shaper | None = None  # a pruned student's hooks (student.pruning.shaping)

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_NAME


def epoch_steps(cfg: TrainConfig, samples: int) -> int:
    """Steps of one pass over ``samples`` (the ``epoch`` of a train row; each set keeps its own)."""
    return max(1, math.ceil(samples / cfg.batch_size))


# The default shuffle window's ceiling (rows of a set shuffled together). A window's shards are
# decoded before its first batch: 65 536 rows made a reader wait 4 minutes for its first batch on
# a loaded machine (BENCHMARKS "The stream beside its peers"); 16 384 rows of a format-2 set
# already give batches as varied as uniform sampling.
WINDOW_ROWS = 16384


def shuffle_window(cfg: TrainConfig, source: Source, width: int) -> int:
    """``train.shuffle_window``, else as many decoded rows as fit in the reader's cache (at most
    :data:`WINDOW_ROWS`): a window's shards are held decoded while it is read."""
    if cfg.shuffle_window:
        return cfg.shuffle_window
    row_bytes = int(np.prod(source.shape)) + 8 * max(width, 1) + 32
    return int(max(1, min(WINDOW_ROWS, cfg.cache_mb * 2**20 // row_bytes)))


def stream_plan(cfg: TrainConfig, batch_size: int, seed: int, start_step: int, ctx: distributed.Dist,
                source: Source, width: int) -> StreamPlan:
    """The stream of a run (:class:`student.stream.StreamPlan`), positioned at ``start_step``."""
    return StreamPlan(
        batch_size=batch_size, seed=stream_seed(seed, TRANSFER_STREAM), start_step=start_step,
        num_workers=cfg.num_workers, world_size=ctx.world_size, rank=ctx.rank,
        batches_per_item=batches_per_transfer(cfg, batch_size, source),
        shuffle_window=shuffle_window(cfg, source, width), cache_bytes=int(cfg.cache_mb * 2**20),
        on_bad_shard=cfg.on_bad_shard)


def set_threads(cfg: TrainConfig, ctx: distributed.Dist) -> None:
    """``cfg.threads``, or the cores left by the loader workers and the other local ranks.

    Oversubscribed intra-op threads spin against each other: on a busy 2-core machine a tiny
    CNN step took 3 ms with one thread and 160 ms with two."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        return
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    free = (os.cpu_count() or 1) // max(1, local_ranks) - cfg.num_workers
    torch.set_num_threads(max(1, min(torch.get_num_threads(), free)))


def kd_sets(sets: list[tuple[str, float]]) -> tuple[list[tuple[str, float]], float]:
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


def open_sets(transfer_sets: list[tuple[str, float]], task: Task, cfg: TrainConfig,
              source: Source) -> list[SetShards]:
    """The kd objective's transfer sets, checked against the source's task and outputs."""
    opened = open_transfer_sets(transfer_sets, task=task, on_bad_shard=cfg.on_bad_shard, source=source)
    if opened[0].outputs != task.outputs(source):
        raise UserError(f"transfer sets have {opened[0].outputs} {task.outputs_noun}, the source has "
                        f"{task.outputs(source)}")
    return opened


def training_split(source: Source) -> Source:
    """The real split a run trains on: decoded once when small (before the loader's workers fork,
    so they share it), else read image by image in the workers. A split with an image contract
    stays as files: its training views start from the decoded file (random-resized crops)."""
    return source if source.contract is not None else in_memory_if_small(source)


def online_teachers(name: str, teachers: list[str | Path] | None, source: Source,
                    factories: Sequence[str] = ()) -> list[Teacher]:
    """The kd_online objective's ensemble: each member and its input contract."""
    if not teachers:
        raise UserError(f"{name}: objective 'kd_online' needs the teachers' checkpoints")
    return [(model, payload["input"]) for model, payload in
            (load_model(path, task=source.task.name, outputs=source.task.outputs(source),
                        allowed_factories=factories) for path in teachers)]


def new_model(name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, head_width: int,
              source: Source) -> nn.Module:
    """The model to train, initialised from the global torch RNG (seeded by the caller)."""
    # The arch comes from the job's config, so the config named any module:factory it runs.
    plain = build_model(model_cfg.arch, source.shape[2], head_width, model_cfg.arch_kwargs,
                        allowed_factories=[model_cfg.factory] if model_cfg.factory else [])
    if library_of(model_cfg.arch) is not None:  # timm/torchvision models may not take small or odd sizes
        probe_forward(plain, source.shape[2], source.shape[:2], head_width, f"{name}: model arch {model_cfg.arch!r}")
    if train_cfg.self_guidance is not None and not stochastic_blocks(plain):
        raise UserError(f"{name}: train.self_guidance needs a stochastic-depth model, e.g. arch resnet_cifar "
                        f"with arch_kwargs.survival < 1")
    return plain


def start_model(name: str, shaping: Shaping, model_cfg: ModelConfig, source: Source,
                factories: Sequence[str]) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model a shaped run starts from: its ``init`` checkpoint (a pruned model, rebuilt to its
    stored widths), which must be of the run's arch; and that checkpoint's ``pruned`` record."""
    assert shaping.init is not None
    model, payload = load_model(shaping.init, task=source.task.name, outputs=source.task.outputs(source),
                                allowed_factories=factories)
    if (payload["arch"], payload["arch_kwargs"]) != (model_cfg.arch, model_cfg.arch_kwargs):
        raise UserError(f"{name}: start checkpoint {shaping.init} is arch {payload['arch']!r} "
                        f"{payload['arch_kwargs']}, the run trains {model_cfg.arch!r} {model_cfg.arch_kwargs}")
    return model.train(), payload.get("pruned")


def build_objective(objective: str, task: Task, train_cfg: TrainConfig, kd_cfg: KDConfig | None,
                    sets: list[tuple[str, float]], source: Source, spec: dict[str, Any], ctx: distributed.Dist,
                    seed: int, start_step: int, opened: list[SetShards], teachers: list[Teacher]) -> Objective:
    """The run's objective (:data:`student.tasks.OBJECTIVES`), its stream positioned at ``start_step``."""
    factory = OBJECTIVES[task.name][objective]
    common = (train_cfg, spec, ctx.device, seed, ctx.rank)
    balanced, augment = train_cfg.class_balanced, train_cfg.randaugment
    if objective == "erm":
        real = RealPart(source, 1.0, balanced, values=source.targets is not None, randaugment=augment)
        plan = stream_plan(train_cfg, train_cfg.batch_size, seed, start_step, ctx, source, source.out_dim)
        return factory(real, plan, *common)
    if kd_cfg is None:
        raise UserError(f"objective {objective!r} needs a kd config (temperature, alpha)")
    if objective == "kd_online":
        plan = stream_plan(train_cfg, train_cfg.batch_size, seed, start_step, ctx, source, 0)
        return factory(teachers, RealPart(source, 1.0, balanced, randaugment=augment), plan, kd_cfg, *common)
    _, real_weight = kd_sets(sets)
    real = RealPart(source, real_weight, balanced, randaugment=augment) if real_weight > 0 else None
    candidates = train_cfg.batch_size if kd_cfg.pick is None else math.ceil(kd_cfg.pick.ratio * train_cfg.batch_size)
    plan = stream_plan(train_cfg, candidates, seed, start_step, ctx, source, opened[0].width)
    coverage = Coverage([sum(s.samples) for s in opened] + [len(source)], len(source))
    shape = (source.shape[2], source.shape[0], source.shape[1])
    return factory(opened, real, kd_cfg, plan, shape, coverage, *common)


def restore_counts(step_fn: Objective, payload: dict[str, Any], ctx: distributed.Dist) -> None:
    """A saved state's counts: rank 0 keeps the sums over the ranks (and the merged coverage),
    the others start from zero, so the next sum is right again."""
    if not ctx.is_main:
        return
    step_fn.counts.restore(payload.get("counts", {}))
    if step_fn.counts.coverage is not None and payload.get("coverage"):
        step_fn.counts.coverage.restore(payload["coverage"])


def _fingerprint(set_dir: str) -> str | None:
    index = read_index(set_dir)
    return None if index is None else index.fingerprint


def on_device(model: nn.Module, train_cfg: TrainConfig, ctx: Any) -> nn.Module:
    """The model on the run's device, channels-last when the config says so."""
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if train_cfg.channels_last else model


def build_run(*, name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, objective: str, kd_cfg: KDConfig | None,
              sets: list[tuple[str, float]], train_source: Source, test_source: Source, out_dir: Path, seed: int,
              progress: Progress | None, resume: bool, teachers: list[str | Path] | None,
              factories: Sequence[str] = (), shaping: Shaping | None = None) -> Run:
    """Everything :func:`student.train.train_model` trains, checked and built (see there)."""
    if objective not in ("erm", "kd", "kd_online"):
        raise UserError(f"objective {objective!r}: expected 'erm', 'kd' or 'kd_online'")
    ctx = distributed.setup()
    set_threads(train_cfg, ctx)
    test_source = in_memory_if_small(test_source)
    transfer_sets, real_weight = kd_sets(sets)
    task = train_source.task
    task.check_student(name, objective, train_cfg, kd_cfg, real_weight)
    opened = open_sets(transfer_sets, task, train_cfg, train_source) if objective == "kd" else []
    if opened and kd_cfg is not None:
        check_sampled_temperature(opened, kd_cfg.temperature)
    online = online_teachers(name, teachers, train_source, factories) if objective == "kd_online" else []
    if objective != "kd" or real_weight > 0:
        train_source = training_split(train_source)
    epoch = epoch_steps(train_cfg, len(train_source) if objective != "kd" else sum(sum(s.samples) for s in opened))
    torch.manual_seed(seed)
    head = task.head(model_cfg, train_source)
    plain = new_model(name, model_cfg, train_cfg, task.head_width(head), train_source)
    pruned = None
    if shaping is not None and shaping.init:
        plain, pruned = start_model(name, shaping, model_cfg, train_source, factories)
    tensorboard = TensorBoard(Path(out_dir) / "tensorboard") if train_cfg.tensorboard and ctx.is_main else None
    plain = on_device(plain, train_cfg, ctx)
    spec = source_input_spec(train_source)
    optimizer = make_optimizer(plain, train_cfg)
    example = torch.zeros(1, train_source.shape[2], *train_source.shape[:2], device=ctx.device)
    shaper = Shaper(shaping, plain, example, pruned) if shaping is not None else None
    scaler = torch.amp.GradScaler("cuda") if train_cfg.amp and ctx.device.type == "cuda" else None
    out_dir = Path(out_dir)
    run_spec = spec_hash({
        "model": model_cfg.model_dump(), "train": train_cfg.model_dump(), "objective": objective,
        "kd": kd_cfg.model_dump() if kd_cfg is not None and objective != "erm" else None, "seed": seed,
        "teachers": [str(t) for t in teachers or []] if objective == "kd_online" else [],
        "sets": [(d, w, _fingerprint(d), sum(shards.samples))  # a set grows in place: its size counts too
                 for (d, w), shards in zip(transfer_sets, opened, strict=True)] if opened else [],
        "real_weight": real_weight, "world_size": ctx.world_size, "source": train_source.identity,
        **({"shaping": shaping.identity()} if shaping is not None else {}),
    })
    payload = load_state(out_dir / STATE_NAME, run_spec) if resume else None
    start_step = 0 if payload is None else restore(payload, plain, optimizer, scaler)
    if payload is not None and progress is not None and ctx.is_main:
        progress(f"{name}: resuming at step {start_step} from {out_dir / STATE_NAME}")
    guided = SelfGuided(plain) if train_cfg.self_guidance is not None else plain
    unused = bool(stochastic_blocks(plain)) and train_cfg.self_guidance is None  # dropped blocks get no gradient
    model = distributed.wrap(guided, ctx, find_unused=unused)
    step_fn = build_objective(objective, task, train_cfg, kd_cfg, sets, train_source, spec, ctx, seed, start_step,
                              opened, online)
    if payload is not None:
        restore_counts(step_fn, payload, ctx)
    return Run(name=name, objective=objective, model_cfg=model_cfg, train_cfg=train_cfg, kd_cfg=kd_cfg, task=task,
               seed=seed, out_dir=out_dir, progress=progress, ctx=ctx, train_source=train_source,
               test_source=test_source, opened=opened, head=head, spec=spec, plain=plain, model=model,
               optimizer=optimizer, scaler=scaler, step_fn=step_fn, run_spec=run_spec, start_step=start_step,
               epoch=epoch, tensorboard=tensorboard, shaper=shaper)
