"""The Ray Data graph that makes a set (with :mod:`pipeline.generate.supervisor` and :mod:`pipeline.train.ray_train`,
one of the three driver modules that import Ray).

One row of the Ray Dataset is one shard of a planned set (:class:`core.sets.spec.SetSpec`, which every
actor receives whole). The graph is
``from_items(missing shards) → map_batches(ShardActor)``: each actor of a fixed pool holds the
teacher ensemble and turns a shard spec into a committed shard with the plain stage functions —
``make_shard`` (sample) → ``Ensemble.predict`` (label) → ``write_shard`` (commit) — and returns
the shard's summary. A retried or resumed shard gets identical bytes, since every step is a pure
function of the spec.

Why one fused actor rather than a map → actor → map graph: measured on 2 cores, the three-stage
graph spent seconds starting extra worker processes (each importing numpy, PIL, the source),
copied every shard's images through the object store twice, and its memory grew with the number
of worker processes Ray chose to start. One actor runs several shard calls at once in threads
(``max_concurrent_calls_per_actor``): while one call runs the teachers (torch releases the GIL;
a lock keeps one forward at a time with fixed threads, so targets stay deterministic), the
others draw and encode their shards. See docs/ARCHITECTURE.md and docs/BENCHMARKS.md.

Sets with a ``gan`` sampler (XCL-GAN) add a generator stage: unfused (default), a pool of
``GeneratorActor`` s (``generator_stage``: actors, CPUs, GPUs) makes each shard's generated
images and passes them, as uint8, to the shard actors: ``from_items → map_batches(GeneratorActor)
→ map_batches(ShardActor)``. Fused (``generator_stage.fuse``), each shard actor also holds the
generator and labels the images on the device they were made on. Either way the bytes are the
same (the generator's pass shape and threads are fixed). See docs/ARCHITECTURE.md.

Planning, resume and the final ``manifest.parquet`` / ``index.json`` commit live in
:mod:`pipeline.generate.plan` (no Ray), and the progress of a set (:class:`pipeline.generate.plan.SetProgress`) is
owned here. Ray is imported inside the functions that use it, so importing this module (e.g.
from the CLI) does not start or load Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config, RayConfig
from core.errors import FormatError, UserError
from core.progress import Progress
from core.samplers import SAMPLERS
from core.sets.index import ShardSummary
from core.sets.spec import SetSpec
from core.sources import load_source_cached
from core.store.lease import SetLease
from pipeline.generate.plan import SetPlan, finish, plan_set, refresh, resume, start
from stages.samplers import draw_shard
from stages.samplers.generating import GeneratorRunner, set_generator
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

# Shard calls in flight per actor: one in the teachers, the others sampling and writing.
CALLS_PER_ACTOR = 3


# ---------------------------------------------------------------- the actors


class GeneratorActor:
    """The unfused generator stage: holds a set's generator once per actor and makes the images
    of one shard's ``gan`` samples per call (uint8 NHWC, in candidate order)."""

    def __init__(self, spec: SetSpec) -> None:
        stage = spec.generator_stage
        torch.set_num_threads(stage.torch_threads())
        self.spec = spec
        self.source = load_source_cached(spec.source_cfg, "train")
        generator = set_generator(spec.set_cfg)
        if generator is None:
            raise ValueError("GeneratorActor: the set has no gan sampler")
        self.runner = GeneratorRunner(generator, self.source, device=stage.device, threads=stage.torch_threads())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        spec, generated = self.spec, []
        for shard in batch["shard"]:
            drawn = draw_shard(spec.set_cfg, self.source, spec.seed, int(shard), spec.total)
            params = [p for kind, p in drawn if SAMPLERS[kind].generated]
            generated.append(self.runner.generate(params).cpu().numpy())
        return {"shard": batch["shard"], "count": batch["count"], "name": batch["name"],
                "generated": np.stack(generated)}


class ShardActor:
    """Holds the ensemble once per actor; makes, labels and commits one shard per call. Fused
    (``generator_stage.fuse``), it holds the set's generator too (on the teachers' device, with
    their threads).

    Bad input met only here (an unreadable image deep in a user's folder) is returned as data in
    the ``error`` column, not raised: it is the user's to fix, not a crash for Ray to retry and
    print, and the driver raises it as the one-line error it is.
    """

    def __init__(self, spec: SetSpec) -> None:
        stage = spec.teacher_stage
        torch.set_num_threads(stage.torch_threads())  # fixed for the process: calls never change it
        self.ensemble = Ensemble(spec.teacher_paths, spec.outputs, task=spec.task_name, device=stage.device,
                                 threads=stage.torch_threads(), batch_size=stage.batch_size, autocast=stage.autocast,
                                 channels_last=stage.channels_last, pin_memory=stage.pin_memory,
                                 allowed_factories=spec.factories)
        self.spec = spec
        self.forward = threading.Lock()
        self.input_error = ""
        self.runner: GeneratorRunner | None = None
        try:
            source = load_source_cached(spec.source_cfg, "train")  # once, before the concurrent shard calls
            generator = set_generator(spec.set_cfg) if spec.generator_stage.fuse else None
            if generator is not None:
                self.runner = GeneratorRunner(generator, source, device=stage.device, threads=stage.torch_threads())
        except (UserError, FormatError) as err:
            self.input_error = str(err)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        summaries, errors = [], []
        for row, (shard, count, name) in enumerate(zip(batch["shard"], batch["count"], batch["name"], strict=True)):
            try:
                if self.input_error:
                    raise UserError(self.input_error)
                generated = batch["generated"][row] if "generated" in batch else None
                summaries.append(self._make(int(shard), int(count), str(name), generated).to_json())
                errors.append("")
            except (UserError, FormatError) as err:
                summaries.append("")
                errors.append(str(err))
        return {"summary": summaries, "error": errors}

    def _make(self, shard: int, count: int, name: str, generated: Any = None) -> ShardSummary:
        made_on_device: list[Any] = []
        generate = None
        if generated is not None:  # made by the generator stage
            generate = lambda params: generated  # noqa: E731
        elif self.runner is not None:
            generate = self._fused_generate(self.runner, made_on_device)
        images, drawn, labels = make_shard(self.spec, shard, generate)
        # A shard of generated images only is labelled where it was made: it never leaves the GPU
        # (when stored losslessly; a JPEG set labels the decoded JPEG that make_shard returned).
        lossless = self.spec.set_cfg.store.image == "png"
        labelled = made_on_device[0] if lossless and made_on_device and len(made_on_device[0]) == len(images) \
            else images
        with self.forward:
            output = self.ensemble.predict(labelled)
        return write_shard(self.spec, shard, images, drawn, labels, output, count=count, name=name)

    def _fused_generate(self, runner: GeneratorRunner,
                        made_on_device: list[Any]) -> Callable[[list[dict[str, Any]]], Any]:
        """The fused generator: one forward at a time (like the teachers'); keeps the device copy."""

        def generate(params: list[dict[str, Any]]) -> Any:
            with self.forward:
                images = runner.generate(params)
            made_on_device.append(images)
            return images.cpu().numpy()

        return generate


# ---------------------------------------------------------------- Ray lifecycle


def ensure_ray(ray_cfg: RayConfig) -> None:
    """Start an embedded, quiet Ray (or connect to ``address`` / ``RAY_ADDRESS``), once."""
    import ray

    global _embedded
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        ray.init(address=address, **quiet)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=ray_cfg.num_cpus, include_dashboard=False, **quiet)
        _embedded = True


def shutdown_ray() -> None:
    import ray

    global _embedded
    if ray.is_initialized():
        ray.shutdown()
    _embedded = False


def _configure_data_context(ray_cfg: RayConfig) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    ctx.execution_no_progress_timeout_s = ray_cfg.stall_timeout_s
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# ---------------------------------------------------------------- the job


def shard_specs(plan: SetPlan, shards: list[int]) -> Any:
    """The Ray Dataset of shard specs: one row (and one block) per shard, with the file it goes to."""
    import ray

    return ray.data.from_items([{"shard": i, "count": plan.spec.planned(i), "name": plan.name(i)} for i in shards],
                               override_num_blocks=len(shards))


# Restarts of a lost shard or generator actor. On a cluster, Ray Data's default (forever): a lost
# node costs no more than its actors' shards. On the embedded local Ray there is no node to lose and
# a restarted actor would die as the first did, so none: the execution ends and the supervisor
# decides. There restartable actors would also make Ray's core worker print an error-level line on
# every healthy run (core_worker.cc:2465, ray-project/ray#53727: their constructor arguments sit in
# the object store); on a cluster that line is expected and harmless.
_embedded = False


def map_actors(ds: Any, actor: type, **options: Any) -> Any:
    """``ds.map_batches(actor, ...)`` with the actors' restarts set (none on the embedded Ray).
    Ray 2.60 takes ``max_restarts`` only among the ``**ray_remote_args`` it deprecates for 2.64;
    that warning is ours to know, not the user's to read: revisit when the pinned Ray moves."""
    restarts = {"max_restarts": 0} if _embedded else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return ds.map_batches(actor, **options, **restarts)


def generator_stage(ds: Any, spec: SetSpec) -> Any:
    """``ds`` → the unfused generator stage: each row gains its shard's generated images."""
    import ray

    gen = spec.generator_stage
    return map_actors(
        ds, GeneratorActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=gen.actors),
        num_cpus=gen.num_cpus, num_gpus=gen.num_gpus, fn_constructor_kwargs={"spec": spec},
    )


def _run_ray(plan: SetPlan, missing: list[int], on_shard: Callable[[ShardSummary], None]) -> None:
    import ray

    spec = plan.spec
    stage = spec.teacher_stage
    ds = shard_specs(plan, missing)
    if set_generator(spec.set_cfg) is not None and not spec.generator_stage.fuse:
        ds = generator_stage(ds, spec)
    ds = map_actors(
        ds, ShardActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=stage.actors, max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                           enable_true_multi_threading=True),
        num_cpus=stage.num_cpus, num_gpus=stage.num_gpus, fn_constructor_kwargs={"spec": spec},
    )
    for row in ds.iter_rows():
        if row["error"]:
            raise UserError(row["error"])  # leaving the loop ends the execution
        on_shard(ShardSummary.from_json(row["summary"]))


def execute(plan: SetPlan, ray_cfg: RayConfig, progress: Progress) -> dict[str, Any]:
    """Make (or complete) a planned set; see the module docstring.

    A complete set is reused without a lease (reading only). Otherwise everything that writes runs
    under the set's lease (:class:`core.store.lease.SetLease`): a second writer of the same set
    waits, then finds what the first made (:func:`pipeline.generate.plan.refresh`) and makes only the rest.

    Returns ``{set_dir, shards_made, shards_total, samples, rejected, teacher_forward_samples,
    seconds, samples_per_s, first_shard_s, steady_samples_per_s, fingerprint}`` where ``seconds``
    / ``samples_per_s`` cover the shards made by this call (Ray's start-up excluded, the actors'
    included) and ``steady_samples_per_s`` the shards after the first one.
    """
    spec = plan.spec
    result = {"set_dir": spec.out_dir, "shards_made": 0, "shards_total": spec.shards, "teacher_forward_samples": 0,
              "fingerprint": spec.fingerprint, "seconds": 0.0, "samples_per_s": 0.0}
    if plan.complete():
        return _reused(plan, result, progress)
    with SetLease(spec.out_dir, f"{spec.name}: {spec.total} samples", progress) as lease:
        plan = refresh(plan)
        if plan.complete():
            return _reused(plan, result, progress)
        return _make(plan, lease, ray_cfg, progress, result)


def _reused(plan: SetPlan, result: dict[str, Any], progress: Progress) -> dict[str, Any]:
    spec, index = plan.spec, plan.index
    assert index is not None
    progress(f"{spec.name}: complete at {spec.out_dir} ({spec.shards} shards, fingerprint "
             f"{spec.fingerprint[:12]}), nothing to do: reused with 0 teacher forward passes")
    return {**result, "samples": index.totals.samples, "rejected": index.totals.rejected}


def _make(plan: SetPlan, lease: SetLease, ray_cfg: RayConfig, progress: Progress,
          result: dict[str, Any]) -> dict[str, Any]:
    """Resume, make the missing shards on Ray, and commit the index (the lease held throughout)."""
    spec = plan.spec
    start(plan)
    state = resume(plan, progress)
    missing = state.missing(spec)
    progress(f"{spec.name}: {spec.total} samples in {spec.shards} shards; "
             f"{spec.shards - len(missing)} present, {len(missing)} to make")
    if missing:  # Ray's start-up (seconds) is not generation time
        ensure_ray(ray_cfg)
        _configure_data_context(ray_cfg)
    began = time.perf_counter()

    def on_shard(summary: ShardSummary) -> None:
        state.summaries[summary.shard] = summary
        state.made += 1
        state.samples += summary.planned
        state.labelled += spec.candidates(summary.shard)
        if state.made == 1:  # start-up (actor start, imports, first shard) ends here
            state.first_at, state.first_samples = time.perf_counter() - began, state.samples
        rate = state.samples / max(time.perf_counter() - began, 1e-9)
        progress(f"{spec.name}: {len(state.summaries)}/{spec.shards} shards ({rate:.0f} samples/s)")

    if missing:
        _run_ray(plan, missing, on_shard)
    seconds = time.perf_counter() - began
    lease.ensure()  # the index is written only under the lease
    totals = finish(plan, state)
    if totals["rejected"]:
        progress(f"{spec.name}: rejected {totals['rejected']} samples with non-finite teacher outputs")
    rate = round(state.samples / seconds, 1) if state.made else 0.0
    steady = (state.samples - state.first_samples) / max(seconds - state.first_at, 1e-9) if state.made > 1 \
        else rate
    progress(f"{spec.name}: {state.labelled} samples through the teachers "
             f"({len(missing)} shards made, {spec.shards - len(missing)} reused)")
    return {**result, "shards_made": state.made, "samples": totals["samples"], "rejected": totals["rejected"],
            "teacher_forward_samples": int(state.labelled), "seconds": round(seconds, 3), "samples_per_s": rate,
            "first_shard_s": round(state.first_at, 3), "steady_samples_per_s": round(steady, 1)}


def generate_set(cfg: Config, name: str, out: str | Path, teachers: Sequence[str | Path],
                 progress: Progress) -> dict[str, Any]:
    """Plan and make set ``name`` of the job ``cfg`` (``out``: its default directory; see
    :func:`pipeline.generate.plan.plan_set`), without the supervisor. See :func:`execute` for the result."""
    return execute(plan_set(cfg, name, out, teachers), cfg.ray, progress)
