"""The Ray driver: the one module that imports Ray.

One row of the Ray Dataset is one shard spec. The graph is
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
:mod:`pipeline.plan` (no Ray). Ray is imported lazily so that importing this module (e.g. from
the CLI) stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import GeneratorStageConfig, RayConfig, SetConfig, SourceConfig, TeacherStageConfig
from pipeline.errors import UserError
from pipeline.format import FormatError
from pipeline.plan import SetPlan, finish, plan_set, resume, start
from stages.samplers import draw_shard, set_size
from stages.samplers.generating import GeneratorRunner, set_generator
from stages.sources import load_source_cached
from stages.writer import make_shard, write_shard

# Shard calls in flight per actor: one in the teachers, the others sampling and writing.
CALLS_PER_ACTOR = 3


# ---------------------------------------------------------------- the actor


class GeneratorActor:
    """The unfused generator stage: holds a set's generator once per actor and makes the images
    of one shard's ``gan`` samples per call (uint8 NHWC, in candidate order)."""

    def __init__(self, *, stage_json: str, set_json: str, source_json: str, seed: int) -> None:
        import torch

        stage = GeneratorStageConfig.model_validate_json(stage_json)
        torch.set_num_threads(stage.torch_threads())
        self.set_cfg, self.seed = SetConfig.model_validate_json(set_json), seed
        self.source = load_source_cached(source_json, "train")
        generator = set_generator(self.set_cfg)
        if generator is None:
            raise ValueError("GeneratorActor: the set has no gan sampler")
        self.runner = GeneratorRunner(generator, self.source, device=stage.device, threads=stage.torch_threads())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        generated = []
        for shard in batch["shard"]:
            drawn = draw_shard(self.set_cfg, self.source, self.seed, int(shard), set_size(self.set_cfg, self.source))
            params = [p for kind, p in drawn if kind == "gan"]
            generated.append(self.runner.generate(params).cpu().numpy())
        return {"shard": batch["shard"], "count": batch["count"], "generated": np.stack(generated)}


class ShardActor:
    """Holds the ensemble once per actor; makes, labels and commits one shard per call. Fused,
    it holds the set's generator too (on the teachers' device, with their threads).

    Bad input met only here (an unreadable image deep in a user's folder) is returned as data in
    the ``error`` column, not raised: it is the user's to fix, not a crash for Ray to retry and
    print, and the driver raises it as the one-line error it is.
    """

    def __init__(self, *, paths: list[str], num_classes: int, stage_json: str, set_json: str, source_json: str,
                 seed: int, set_dir: str, fuse_generator: bool = False, task: str = "classify") -> None:
        import torch

        from stages.teachers import Ensemble  # torch: only the actor processes pay for it

        stage = TeacherStageConfig.model_validate_json(stage_json)
        torch.set_num_threads(stage.torch_threads())  # fixed for the process: calls never change it
        self.ensemble = Ensemble(paths, num_classes, device=stage.device, threads=stage.torch_threads(),
                                 batch_size=stage.batch_size, autocast=stage.autocast,
                                 channels_last=stage.channels_last, pin_memory=stage.pin_memory, task=task)
        self.set_cfg = SetConfig.model_validate_json(set_json)
        self.set_json, self.source_json, self.seed, self.set_dir = set_json, source_json, seed, set_dir
        self.forward = threading.Lock()
        self.input_error = ""
        self.runner: GeneratorRunner | None = None
        try:
            source = load_source_cached(source_json, "train")  # once, before the concurrent shard calls need it
            generator = set_generator(self.set_cfg) if fuse_generator else None
            if generator is not None:
                self.runner = GeneratorRunner(generator, source, device=stage.device, threads=stage.torch_threads())
        except (UserError, FormatError) as err:
            self.input_error = str(err)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        summaries, errors = [], []
        for row, (shard, count) in enumerate(zip(batch["shard"], batch["count"], strict=True)):
            try:
                if self.input_error:
                    raise UserError(self.input_error)
                generated = batch["generated"][row] if "generated" in batch else None
                summaries.append(json.dumps(self._make(int(shard), int(count), generated)))
                errors.append("")
            except (UserError, FormatError) as err:
                summaries.append("")
                errors.append(str(err))
        return {"summary": summaries, "error": errors}

    def _make(self, shard: int, count: int, generated: Any = None) -> dict[str, Any]:
        made_on_device: list[Any] = []
        generate = None
        if generated is not None:  # made by the generator stage
            generate = lambda params: generated  # noqa: E731
        elif self.runner is not None:
            generate = self._fused_generate(self.runner, made_on_device)
        images, drawn, labels = make_shard(self.set_json, self.source_json, self.seed, shard, generate)
        # A shard of generated images only is labelled where it was made: it never leaves the GPU.
        labelled = made_on_device[0] if made_on_device and len(made_on_device[0]) == len(images) else images
        with self.forward:
            output = self.ensemble.predict(labelled)
        topk = self.set_cfg.targets.k if self.set_cfg.targets.kind == "topk" else 0
        return write_shard(self.set_dir, shard, images, drawn, labels, output, count=count,
                           select=self.set_cfg.select, topk=topk, dtype=self.set_cfg.targets.dtype or "float32")

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


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


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
    """The Ray Dataset of shard specs: one row (and one block) per shard."""
    import ray

    return ray.data.from_items([{"shard": i, "count": plan.planned(i)} for i in shards],
                               override_num_blocks=len(shards))


def generator_stage(ds: Any, plan: SetPlan) -> Any:
    """``ds`` → the unfused generator stage: each row gains its shard's generated images."""
    import ray

    gen = plan.generator_stage
    return ds.map_batches(
        GeneratorActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=gen.actors),
        num_cpus=gen.num_cpus, num_gpus=gen.num_gpus,
        fn_constructor_kwargs={"stage_json": gen.model_dump_json(), "set_json": plan.set_cfg.model_dump_json(),
                               "source_json": plan.source_cfg.model_dump_json(), "seed": plan.seed},
    )


def _run_ray(plan: SetPlan, missing: list[int], on_shard: Callable[[dict[str, Any]], None]) -> None:
    import ray

    stage_cfg = plan.stage_cfg
    fuse = plan.generator_stage.fuse
    ds = shard_specs(plan, missing)
    if set_generator(plan.set_cfg) is not None and not fuse:
        ds = generator_stage(ds, plan)
    ds = ds.map_batches(
        ShardActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=stage_cfg.actors, max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                           enable_true_multi_threading=True),
        num_cpus=stage_cfg.num_cpus, num_gpus=stage_cfg.num_gpus,
        fn_constructor_kwargs={
            "paths": plan.teacher_paths, "num_classes": plan.outputs, "stage_json": stage_cfg.model_dump_json(),
            "set_json": plan.set_cfg.model_dump_json(), "source_json": plan.source_cfg.model_dump_json(),
            "seed": plan.seed, "set_dir": plan.out_dir, "fuse_generator": fuse, "task": plan.task},
    )
    for row in ds.iter_rows():
        if row["error"]:
            raise UserError(row["error"])  # leaving the loop ends the execution
        on_shard(json.loads(row["summary"]))


def execute(plan: SetPlan, ray_cfg: RayConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """Make (or complete) a planned set; see the module docstring.

    Returns ``{set_dir, shards_made, shards_total, samples, rejected, teacher_forward_samples,
    seconds, samples_per_s, first_shard_s, steady_samples_per_s, fingerprint}`` where ``seconds``
    / ``samples_per_s`` cover the shards made by this call (Ray's start-up excluded, the actors'
    included) and ``steady_samples_per_s`` the shards after the first one.
    """
    result = {"set_dir": plan.out_dir, "shards_made": 0, "shards_total": plan.shards, "teacher_forward_samples": 0,
              "fingerprint": plan.fingerprint, "seconds": 0.0, "samples_per_s": 0.0}
    if plan.complete():
        assert plan.index is not None
        progress(f"{plan.name}: complete at {plan.out_dir} ({plan.shards} shards, fingerprint "
                 f"{plan.fingerprint[:12]}), nothing to do: reused with 0 teacher forward passes")
        return {**result, "samples": plan.index["totals"]["samples"], "rejected": plan.index["totals"]["rejected"]}

    start(plan)
    missing = resume(plan, progress)
    progress(f"{plan.name}: {plan.total} samples in {plan.shards} shards; "
             f"{plan.shards - len(missing)} present, {len(missing)} to make")
    if missing:  # Ray's start-up (seconds) is not generation time
        ensure_ray(ray_cfg)
        _configure_data_context(ray_cfg)
    began = time.perf_counter()
    made: dict[str, float] = {"shards": 0, "samples": 0, "labelled": 0, "first_at": 0.0, "first_samples": 0}

    def on_shard(summary: dict[str, Any]) -> None:
        plan.summaries[summary["shard"]] = summary
        made["shards"] += 1
        made["samples"] += summary["planned"]
        made["labelled"] += plan.candidates(summary["shard"])
        if made["shards"] == 1:  # start-up (actor start, imports, first shard) ends here
            made["first_at"], made["first_samples"] = time.perf_counter() - began, made["samples"]
        rate = made["samples"] / max(time.perf_counter() - began, 1e-9)
        progress(f"{plan.name}: {len(plan.summaries)}/{plan.shards} shards ({rate:.0f} samples/s)")

    if missing:
        _run_ray(plan, missing, on_shard)
    seconds = time.perf_counter() - began
    totals = finish(plan)
    if totals["rejected"]:
        progress(f"{plan.name}: rejected {totals['rejected']} samples with non-finite teacher outputs")
    rate = round(made["samples"] / seconds, 1) if made["shards"] else 0.0
    steady = (made["samples"] - made["first_samples"]) / max(seconds - made["first_at"], 1e-9) if made["shards"] > 1 \
        else rate
    progress(f"{plan.name}: {made['labelled']} samples through the teachers "
             f"({len(missing)} shards made, {plan.shards - len(missing)} reused)")
    return {**result, "shards_made": made["shards"], "samples": totals["samples"], "rejected": totals["rejected"],
            "teacher_forward_samples": int(made["labelled"]), "seconds": round(seconds, 3), "samples_per_s": rate,
            "first_shard_s": round(made["first_at"], 3), "steady_samples_per_s": round(steady, 1)}


def generate_set(
    *, set_name: str, set_cfg: SetConfig, source_cfg: SourceConfig, seed: int,
    teacher_paths: Sequence[str | Path], out_dir: str | Path, stage_cfg: TeacherStageConfig, ray_cfg: RayConfig,
    progress: Callable[[str], None], cache: str | None = None, generator_stage: GeneratorStageConfig | None = None,
) -> dict[str, Any]:
    """Plan and make one set (see :func:`execute` for the result)."""
    plan = plan_set(set_name=set_name, set_cfg=set_cfg, source_cfg=source_cfg, seed=seed,
                    teacher_paths=list(teacher_paths), out_dir=out_dir, stage_cfg=stage_cfg, cache=cache,
                    generator_stage=generator_stage)
    return execute(plan, ray_cfg, progress)
