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

from core.config import ModelConfig, TrainConfig
from core.errors import UserError
from core.models import build_model, load_model, probe_forward, stochastic_blocks
from core.models.zoo import library_of
from core.progress import Progress
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
from student.request import TrainRequest
from student.shards import SetShards, check_sampled_temperature, open_transfer_sets
from student.state import STATE_NAME, load_state, restore, spec_hash
from student.stream import RealPart, StreamPlan
from student.stream.coverage import Coverage
from student.tasks import OBJECTIVES


@dataclass
class Run:
    """One training run, built: what the loop trains and the finish writes."""

    request: TrainRequest
    task: Task
    progress: Progress | None
    ctx: distributed.Dist
    train_source: Source
    test_source: Source
    opened: list[SetShards]  # the transfer sets (kd)
    head: dict[str, int]  # what the model predicts (its checkpoint's head)
    input_contract: dict[str, Any]  # what the model takes: size, channels, mean, std
    plain: nn.Module  # the model itself
    model: nn.Module  # what the step runs: plain, or Self-Guidance's pair, in DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # mixed precision on CUDA
    step_fn: Objective
    state_hash: str  # what a resumable state must carry to be this run's
    start_step: int
    epoch: int  # steps per epoch
    tensorboard: TensorBoard | None
    shaper: Shaper | None = None  # a pruned student's hooks (student.pruning.shaping)

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def train_cfg(self) -> TrainConfig:
        return self.request.train

    @property
    def state_path(self) -> Path:
        return self.request.out_dir / STATE_NAME


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


@dataclass(frozen=True)
class ObjectiveInputs:
    """What a run's objective is built from: the request, the source's task and real split, the
    model's input contract, the opened transfer sets (kd) or the teachers in the loop (kd_online),
    and the step its stream starts at."""

    request: TrainRequest
    task: Task
    source: Source
    input_contract: dict[str, Any]
    ctx: distributed.Dist
    start_step: int
    opened: list[SetShards]
    teachers: list[Teacher]

    def plan(self, batch_size: int, width: int) -> StreamPlan:
        return stream_plan(self.request.train, batch_size, self.request.seed, self.start_step, self.ctx, self.source,
                           width)

    def real(self, weight: float, values: bool = False) -> RealPart:
        cfg = self.request.train
        return RealPart(self.source, weight, cfg.class_balanced, values=values, randaugment=cfg.randaugment)

    @property
    def common(self) -> tuple[Any, ...]:
        """The arguments every objective ends with: ``(train_cfg, input contract, device, seed, rank)``."""
        return self.request.train, self.input_contract, self.ctx.device, self.request.seed, self.ctx.rank


def _erm(factory: Callable[..., Objective], inputs: ObjectiveInputs) -> Objective:
    source = inputs.source
    real = inputs.real(1.0, values=source.targets is not None)
    return factory(real, inputs.plan(inputs.request.train.batch_size, source.out_dim), *inputs.common)


def _kd(factory: Callable[..., Objective], inputs: ObjectiveInputs) -> Objective:
    request, source, opened = inputs.request, inputs.source, inputs.opened
    kd_cfg, batch_size = request.kd, request.train.batch_size
    assert kd_cfg is not None, "build_run refuses a kd objective without its kd config"
    real = inputs.real(request.real_weight) if request.real_weight > 0 else None
    candidates = batch_size if kd_cfg.pick is None else math.ceil(kd_cfg.pick.ratio * batch_size)
    coverage = Coverage([sum(s.samples) for s in opened] + [len(source)], len(source))
    shape = (source.shape[2], source.shape[0], source.shape[1])
    return factory(opened, real, kd_cfg, inputs.plan(candidates, opened[0].width), shape, coverage, *inputs.common)


def _kd_online(factory: Callable[..., Objective], inputs: ObjectiveInputs) -> Objective:
    plan = inputs.plan(inputs.request.train.batch_size, 0)
    return factory(inputs.teachers, inputs.real(1.0), plan, inputs.request.kd, *inputs.common)


# How each objective's step is assembled from a run's inputs (the step classes: student.tasks.OBJECTIVES).
ASSEMBLE: dict[str, Callable[[Callable[..., Objective], ObjectiveInputs], Objective]] = {
    "erm": _erm, "kd": _kd, "kd_online": _kd_online}


def build_objective(inputs: ObjectiveInputs) -> Objective:
    """The run's objective (:data:`student.tasks.OBJECTIVES`), its stream positioned at ``start_step``."""
    name = inputs.request.objective
    return ASSEMBLE[name](OBJECTIVES[inputs.task.name][name], inputs)


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


def state_hash(request: TrainRequest, opened: list[SetShards], source: Source, world_size: int) -> str:
    """The hash a resumable state of this run must carry: everything its weights depend on."""
    kind, shaping = request.objective_kind, request.shaping
    return spec_hash({
        "model": request.model.model_dump(), "train": request.train.model_dump(), "objective": request.objective,
        "kd": kind.kd_record(request.kd), "seed": request.seed, "teachers": kind.teachers_record(request.teachers),
        "sets": [(d, w, _fingerprint(d), sum(shards.samples))  # a set grows in place: its size counts too
                 for (d, w), shards in zip(request.transfer_sets, opened, strict=True)] if opened else [],
        "real_weight": request.real_weight, "world_size": world_size, "source": source.identity,
        **({"shaping": shaping.identity()} if shaping is not None else {}),
    })


def open_inputs(request: TrainRequest, source: Source) -> tuple[list[SetShards], list[Teacher], Source]:
    """What the objective reads, checked: the transfer sets (kd), the teachers in the loop
    (kd_online) and the real split as the run reads it."""
    kind, cfg = request.objective_kind, request.train
    if kind.distils and request.kd is None:
        raise UserError(f"objective {request.objective!r} needs a kd config (temperature, alpha)")
    source.task.check_student(request.name, kind, cfg, request.kd, request.real_weight)
    opened = open_sets(request.transfer_sets, source.task, cfg, source) if kind.reads_sets else []
    if opened and request.kd is not None:
        check_sampled_temperature(opened, request.kd.temperature)
    online = online_teachers(request.name, request.teachers, source, request.factories) if kind.teachers_in_loop else []
    return opened, online, training_split(source) if kind.reads_real(request.real_weight) else source


def start_plain(request: TrainRequest, task: Task, source: Source, ctx: distributed.Dist
                ) -> tuple[nn.Module, dict[str, int], Shaper | None]:
    """The model to train on the run's device (new, or a pruned start), its head and its shaper."""
    torch.manual_seed(request.seed)
    head = task.head(request.model, source)
    plain = new_model(request.name, request.model, request.train, task.head_width(head), source)
    pruned, shaping = None, request.shaping
    if shaping is not None and shaping.init:
        plain, pruned = start_model(request.name, shaping, request.model, source, request.factories)
    plain = on_device(plain, request.train, ctx)
    example = torch.zeros(1, source.shape[2], *source.shape[:2], device=ctx.device)
    return plain, head, Shaper(shaping, plain, example, pruned) if shaping is not None else None


def build_run(request: TrainRequest, train_source: Source, test_source: Source, progress: Progress | None = None,
              resume: bool = True) -> Run:
    """Everything :func:`student.train.train_model` trains, checked and built (see there)."""
    cfg, kind, out_dir = request.train, request.objective_kind, request.out_dir
    ctx = distributed.setup()
    set_threads(cfg, ctx)
    test_source = in_memory_if_small(test_source)
    task = train_source.task
    opened, online, train_source = open_inputs(request, train_source)
    epoch = epoch_steps(cfg, kind.epoch_samples(len(train_source), [sum(s.samples) for s in opened]))
    plain, head, shaper = start_plain(request, task, train_source, ctx)
    tensorboard = TensorBoard(out_dir / "tensorboard") if cfg.tensorboard and ctx.is_main else None
    contract = source_input_spec(train_source)
    optimizer = make_optimizer(plain, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and ctx.device.type == "cuda" else None
    run_hash = state_hash(request, opened, train_source, ctx.world_size)
    payload = load_state(out_dir / STATE_NAME, run_hash) if resume else None
    start_step = 0 if payload is None else restore(payload, plain, optimizer, scaler)
    if payload is not None and progress is not None and ctx.is_main:
        progress(f"{request.name}: resuming at step {start_step} from {out_dir / STATE_NAME}")
    guided = SelfGuided(plain) if cfg.self_guidance is not None else plain
    unused = bool(stochastic_blocks(plain)) and cfg.self_guidance is None  # dropped blocks get no gradient
    model = distributed.wrap(guided, ctx, find_unused=unused)
    step_fn = build_objective(ObjectiveInputs(request, task, train_source, contract, ctx, start_step, opened, online))
    if payload is not None:
        restore_counts(step_fn, payload, ctx)
    return Run(request=request, task=task, progress=progress, ctx=ctx, train_source=train_source,
               test_source=test_source, opened=opened, head=head, input_contract=contract, plain=plain, model=model,
               optimizer=optimizer, scaler=scaler, step_fn=step_fn, state_hash=run_hash, start_step=start_step,
               epoch=epoch, tensorboard=tensorboard, shaper=shaper)
