"""The Ray driver: the one module that imports Ray.

One row of the Ray Dataset is one shard spec. The graph is
``from_items(missing shards) → map(make) → map_batches(TeacherActor) → map(write)``; every step
is a plain function of its row, so a retried or resumed shard gets identical bytes. Planning,
resume and the final ``manifest.parquet`` / ``index.json`` commit live in :mod:`pipeline.plan`
(no Ray). Ray is imported lazily so that importing this module (e.g. from the CLI) stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RayConfig, SetConfig, SourceConfig, TeacherStageConfig
from pipeline.plan import SetPlan, finish, plan_set, resume, start
from stages.targets import FIELDS, EnsembleOutput
from stages.writer import make_shard, write_shard

# Small CPU shares for the plain steps: with 2 CPUs and a 0.5-CPU actor there is always room
# for a make and a write task, so no stage can starve another (see docs: the 2-core deadlock).
MAKE_NUM_CPUS = 0.25
WRITE_NUM_CPUS = 0.25
# Concurrent make / write tasks per cluster CPU. Uncapped fractional tasks make Ray start a
# worker process per task (seconds each: Python + Ray + numpy), which on 2 cores costs more
# than the work; a few long-lived workers are reused for every shard.
TASKS_PER_CPU = 0.25


# ---------------------------------------------------------------- Ray steps (plain functions)


def _first(column: Any) -> np.ndarray:
    """Row 0 of a batch column (a stacked ndarray, or an object array of ragged tensors)."""
    return np.asarray(column[0])


def make_step(row: dict[str, Any], *, set_json: str, source_json: str, seed: int) -> dict[str, Any]:
    images, drawn, labels = make_shard(set_json, source_json, seed, int(row["shard"]))
    return {"shard": int(row["shard"]), "count": int(row["count"]), "drawn": json.dumps(drawn), "images": images,
            "labels": labels}


class TeacherActor:
    """Holds the ensemble once per actor; labels one shard per call (batch_size=1)."""

    def __init__(self, paths: list[str], num_classes: int, stage_json: str) -> None:
        from stages.teachers import Ensemble  # torch: only the actor processes pay for it

        cfg = TeacherStageConfig.model_validate_json(stage_json)
        self.ensemble = Ensemble(paths, num_classes, device=cfg.device, threads=cfg.torch_threads(),
                                 batch_size=cfg.batch_size, autocast=cfg.autocast,
                                 channels_last=cfg.channels_last, pin_memory=cfg.pin_memory)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.ensemble.predict(_first(batch["images"]))
        return {
            "shard": batch["shard"], "count": batch["count"], "drawn": batch["drawn"], "labels": batch["labels"],
            "images": batch["images"],
            **{name: getattr(out, name)[None] for name in FIELDS},
        }


def write_step(row: dict[str, Any], *, set_dir: str, set_json: str) -> dict[str, Any]:
    cfg = SetConfig.model_validate_json(set_json)
    output = EnsembleOutput(*(np.asarray(row[k]) for k in FIELDS))
    drawn = [(kind, params) for kind, params in json.loads(row["drawn"])]
    summary = write_shard(set_dir, int(row["shard"]), np.asarray(row["images"]), drawn,
                          np.asarray(row["labels"]), output, count=int(row["count"]), select=cfg.select,
                          topk=cfg.targets.k if cfg.targets.kind == "topk" else 0)
    return {"shard": summary["shard"], "summary": json.dumps(summary)}


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


def _run_ray(plan: SetPlan, missing: list[int], on_shard: Callable[[dict[str, Any]], None]) -> None:
    import ray

    stage_cfg = plan.stage_cfg

    tasks = max(1, int(ray.cluster_resources().get("CPU", 1) * TASKS_PER_CPU), stage_cfg.actors)
    ds = ray.data.from_items([{"shard": i, "count": plan.planned(i)} for i in missing],
                             override_num_blocks=len(missing))
    ds = ds.map(make_step, num_cpus=MAKE_NUM_CPUS, compute=ray.data.TaskPoolStrategy(size=tasks), fn_kwargs={
        "set_json": plan.set_cfg.model_dump_json(), "source_json": plan.source_cfg.model_dump_json(),
        "seed": plan.seed})
    ds = ds.map_batches(
        TeacherActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=stage_cfg.actors),
        num_cpus=stage_cfg.num_cpus, num_gpus=stage_cfg.num_gpus,
        fn_constructor_kwargs={"paths": plan.teacher_paths, "num_classes": plan.num_classes,
                               "stage_json": stage_cfg.model_dump_json()},
    )
    ds = ds.map(write_step, num_cpus=WRITE_NUM_CPUS, compute=ray.data.TaskPoolStrategy(size=tasks),
                fn_kwargs={"set_dir": plan.out_dir, "set_json": plan.set_cfg.model_dump_json()})
    for row in ds.iter_rows():
        on_shard(json.loads(row["summary"]))


def execute(plan: SetPlan, ray_cfg: RayConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """Make (or complete) a planned set; see the module docstring.

    Returns ``{set_dir, shards_made, shards_total, samples, rejected, seconds, samples_per_s,
    fingerprint}`` where ``seconds`` / ``samples_per_s`` cover the shards made by this call
    (Ray's start-up excluded).
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
    made = {"shards": 0, "samples": 0, "labelled": 0}

    def on_shard(summary: dict[str, Any]) -> None:
        plan.summaries[summary["shard"]] = summary
        made["shards"] += 1
        made["samples"] += summary["planned"]
        made["labelled"] += plan.candidates(summary["shard"])
        rate = made["samples"] / max(time.perf_counter() - began, 1e-9)
        progress(f"{plan.name}: {len(plan.summaries)}/{plan.shards} shards ({rate:.0f} samples/s)")

    if missing:
        _run_ray(plan, missing, on_shard)
    seconds = time.perf_counter() - began
    totals = finish(plan)
    if totals["rejected"]:
        progress(f"{plan.name}: rejected {totals['rejected']} samples with non-finite teacher outputs")
    rate = round(made["samples"] / seconds, 1) if made["shards"] else 0.0
    progress(f"{plan.name}: {made['labelled']} samples through the teachers "
             f"({len(missing)} shards made, {plan.shards - len(missing)} reused)")
    return {**result, "shards_made": made["shards"], "samples": totals["samples"], "rejected": totals["rejected"],
            "teacher_forward_samples": made["labelled"], "seconds": round(seconds, 3), "samples_per_s": rate}


def generate_set(
    *, set_name: str, set_cfg: SetConfig, source_cfg: SourceConfig, seed: int,
    teacher_paths: Sequence[str | Path], out_dir: str | Path, stage_cfg: TeacherStageConfig, ray_cfg: RayConfig,
    progress: Callable[[str], None], cache: str | None = None,
) -> dict[str, Any]:
    """Plan and make one set (see :func:`execute` for the result)."""
    plan = plan_set(set_name=set_name, set_cfg=set_cfg, source_cfg=source_cfg, seed=seed,
                    teacher_paths=list(teacher_paths), out_dir=out_dir, stage_cfg=stage_cfg, cache=cache)
    return execute(plan, ray_cfg, progress)
