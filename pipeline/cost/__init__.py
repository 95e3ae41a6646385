"""The cost of a job before it runs (``transferset plan``): counts, stored bytes, device time.

Per set: shards, samples, the candidates the teachers label — the samples through the
ensemble, which ``run`` reports as "teacher forward passes" (more than the samples with
``select``) — each member's forward batches, and the stored bytes, measured on one probe shard:
shard 0 made by the real ``make_shard`` and committed by the real ``write_shard`` into a
temporary directory (never the job's), labelled with uniform targets of the set's width (a
record's targets have a fixed size, so their values barely change its bytes).

What this run would do depends on what ``OUT`` holds, read by the chain's own teacher plan
(:func:`pipeline.train.teachers.plan_teachers`): its ready members are the run's, its pending ones
stood in for in the temporary directory (an imported member exactly, a member not trained yet by
random weights of the configured arch: counts and bytes do not depend on the weights, nor does a
forward's time). When every member is known each set is planned by ``plan_set`` and its
committed shards found by ``resume`` (both read-only).

With ``probe``, :mod:`pipeline.cost.probe` times a teacher batch per member and a training step
per arch on this machine's devices; the estimate is their serial sum over the work this run would
do (a pool of actors or GPUs divides the wall time, not the device time). Nothing is written
under OUT; Ray is not imported.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config
from core.progress import Progress, quiet
from core.sets.spec import SetSpec
from core.sources import Source, load_source_cached
from pipeline.cost.probe import TIMING, median_seconds, teacher_batch_seconds, train_step_seconds
from pipeline.generate.plan import AUTO, plan_set, resolve_set, resume
from pipeline.generate.set_locations import check_config_locations, check_planned, check_writable
from pipeline.train.job import load_splits
from pipeline.train.runs import set_dir
from pipeline.train.teachers import TeacherPlan, plan_teachers
from stages.writer import make_shard, write_shard

# ---------------------------------------------------------------- sets


def set_work(cfg: Config, name: str, out: str | Path, teachers: list[str | Path], source: Source,
             final: bool) -> tuple[SetSpec, list[int]]:
    """The set's spec and the shards this run would make. ``final``: the checkpoints are the ones
    the run will use, so the set's directory tells what is done; otherwise its fingerprint will
    change with the trained teachers and every shard is to make."""
    if not final:
        spec = resolve_set(cfg, name, set_dir(out, name), teachers, source=source)
        return spec, list(range(spec.shards))
    plan = plan_set(cfg, name, set_dir(out, name), teachers, source=source)
    if plan.complete():
        return plan.spec, []
    return plan.spec, resume(plan, lambda _: None).missing(plan.spec)


def batches(spec: SetSpec, shards: list[int], batch_size: int) -> int:
    """Forward batches of one member over ``shards``: the ensemble labels a shard in chunks."""
    return sum(math.ceil(spec.candidates(shard) / batch_size) for shard in shards)


def probe_shard(spec: SetSpec, scratch: Path, timed: bool) -> tuple[dict[str, Any], np.ndarray]:
    """Shard 0 made and committed as a run would, into ``scratch``: its samples and bytes (and,
    ``timed``, the seconds of making it warm and of encoding it), and its images."""
    load_source_cached(spec.source_cfg, "train")  # loaded once per process, as in an actor
    began = time.perf_counter()
    images, drawn, labels = make_shard(spec, 0)
    made_s = time.perf_counter() - began
    if timed:  # the first call was the warm-up (a generator fitted or loaded): time warm ones
        made_s = median_seconds(lambda: make_shard(spec, 0), min_calls=1, warm_up=False)
    task = spec.task
    uniform = task.combine(torch.zeros((len(spec.teachers), len(images), task.width(spec.outputs))), spec.outputs)
    began = time.perf_counter()
    summary = write_shard(spec.model_copy(update={"out_dir": str(scratch / "sets" / spec.name)}), 0, images, drawn,
                          labels, uniform, count=spec.planned(0))
    encoded_s = time.perf_counter() - began
    probe: dict[str, Any] = {"candidates": len(drawn), "samples": summary.samples, "bytes": summary.bytes}
    if timed:
        probe.update(make_s=round(made_s, 4), encode_s=round(encoded_s, 4))
    return probe, images


def set_cost(spec: SetSpec, to_make: list[int], probe: dict[str, Any], final: bool) -> dict[str, Any]:
    """One set's figures (the whole set, and what this run makes of it)."""
    candidates = sum(spec.candidates(shard) for shard in range(spec.shards))
    members = len(spec.teachers)
    per_sample = probe["bytes"] / probe["samples"] if probe["samples"] else 0.0
    shown_dir = spec.out_dir if final or spec.set_cfg.out != AUTO else "auto (the cache; named once the teachers exist)"
    return {
        "name": spec.name, "out_dir": shown_dir, "samplers": [s.kind for s in spec.set_cfg.sampler_list()],
        "shards": spec.shards, "samples": spec.total, "teacher_forward_samples": candidates,
        "member_forwards": members * candidates,
        "batches_per_member": batches(spec, list(range(spec.shards)), spec.teacher_stage.batch_size),
        "bytes_per_sample": round(per_sample, 1), "bytes": round(per_sample * spec.total),
        "to_make": {"shards": len(to_make), "samples": sum(spec.planned(s) for s in to_make),
                    "teacher_forward_samples": sum(spec.candidates(s) for s in to_make),
                    "batches_per_member": batches(spec, to_make, spec.teacher_stage.batch_size)},
        "probe": probe,
    }


# ---------------------------------------------------------------- the job


def student_costs(cfg: Config) -> list[dict[str, Any]]:
    """Each student's runs (one per seed) and their steps."""
    return [{"name": name, "arch": student.model.arch, "objective": student.objective, "runs": len(student.seeds),
             "steps": student.train.steps, "batch_size": student.train.batch_size,
             "total_steps": len(student.seeds) * student.train.steps}
            for name, student in cfg.students.items()]


def job_cost(cfg: Config, out: str | Path, *, probe: bool = False,
             progress: Progress = quiet) -> dict[str, Any]:
    """The plan of job ``cfg`` run into ``out`` (see the module docstring); a JSON-ready dict."""
    train, _ = load_splits(cfg)  # both splits, so a bad source stops the plan as it would the run
    check_config_locations(cfg, out)
    with tempfile.TemporaryDirectory(prefix="transferset-plan-") as scratch_dir:
        scratch = Path(scratch_dir)
        ensemble = plan_teachers(cfg, out, train)
        teachers = ensemble.stand_in(train, scratch)
        final = not ensemble.to_train
        sets, images = [], None
        work = [set_work(cfg, name, out, teachers, train, final) for name in cfg.sets]
        check_planned(cfg, out, [spec for spec, _ in work])
        for spec, to_make in work:  # the run would refuse a set it cannot write: so does its plan
            if final and to_make:
                check_writable(cfg, spec)
        for spec, to_make in work:
            progress(f"plan: set {spec.name}: probe shard 0 ({spec.planned(0)} samples)")
            shard_probe, shard_images = probe_shard(spec, scratch, probe)
            images = shard_images if images is None else images
            sets.append(set_cost(spec, to_make, shard_probe, final))
        cost: dict[str, Any] = {
            "config": cfg.name, "out": str(out),
            "teachers": teacher_summary(cfg, ensemble),
            "sets": sets, "students": student_costs(cfg),
        }
        if probe:
            progress("plan: timing the teachers and a training step of each arch")
            cost["probe"] = probe_times(cfg, train, teachers, ensemble.to_train, images, cost)
    cost["totals"] = totals(cost)
    return cost


def teacher_summary(cfg: Config, plan: TeacherPlan) -> dict[str, Any]:
    """The ensemble as the run will have it: trained here (``model``/``train``), existing
    checkpoints, or imported (``models``)."""
    section, to_train = cfg.teachers, plan.to_train
    weights = "random (not trained yet: their time does not depend on the weights)" if to_train else \
        plan.ensemble.weights
    return {"members": len(plan.members), "arch": plan.ensemble.archs(), "to_train": to_train,
            "train_steps": section.train.steps if section.train is not None else 0,
            "batch_size": section.train.batch_size if section.train is not None else 0, "weights": weights}


def probe_times(cfg: Config, source: Source, teachers: list[str | Path], to_train: int,
                images: np.ndarray | None, cost: dict[str, Any]) -> dict[str, Any]:
    """The measured seconds; each part of the job's cost made of them is added to ``cost``."""
    stage, task = cfg.teacher_stage, source.task
    timed: dict[str, Any] = {"teacher_batch_size": stage.batch_size, "repeats": TIMING}
    if images is not None:  # a job without sets makes no forwards
        member_s, device = teacher_batch_seconds(teachers, task.outputs(source), task.name, stage, images,
                                                 cfg.factories)
        timed.update(teacher_device=device, teacher_batch_s=[round(s, 6) for s in member_s])
        for entry in cost["sets"]:
            teachers_s = sum(member_s) * entry["to_make"]["batches_per_member"]
            samples_s = shard_seconds(entry["probe"], entry["to_make"])
            entry["seconds"] = {"teachers": round(teachers_s, 3), "samples": round(samples_s, 3),
                                "total": round(teachers_s + samples_s, 3)}
    steps: dict[str, tuple[float, str]] = {}

    def step_of(model_cfg: Any, train_cfg: Any) -> tuple[float, str]:
        """One arch's step, timed once per model and batch."""
        key = model_cfg.model_dump_json() + train_cfg.model_dump_json(include={"batch_size", "channels_last", "amp"})
        if key not in steps:
            head_width = task.head_width(task.head(model_cfg, source))
            steps[key] = train_step_seconds(model_cfg, train_cfg, head_width, source)
        return steps[key]

    if to_train:
        step_s, device = step_of(cfg.teachers.model, cfg.teachers.train)
        cost["teachers"].update(step_s=round(step_s, 6), device=device,
                                seconds=round(step_s * cfg.teachers.train.steps * to_train, 3))
    for entry in cost["students"]:
        student = cfg.students[entry["name"]]
        step_s, device = step_of(student.model, student.train)
        entry.update(step_s=round(step_s, 6), device=device, seconds=round(step_s * entry["total_steps"], 3))
    return timed


def shard_seconds(probe: dict[str, Any], to_make: dict[str, Any]) -> float:
    """Sample making scales with the candidates drawn, encoding with the samples kept."""
    make = probe["make_s"] * to_make["teacher_forward_samples"] / max(probe["candidates"], 1)
    return make + probe["encode_s"] * to_make["samples"] / max(probe["samples"], 1)


def totals(cost: dict[str, Any]) -> dict[str, Any]:
    """The job's sums; ``seconds`` and ``device_hours`` only when probed."""
    sets, students = cost["sets"], cost["students"]
    total: dict[str, Any] = {
        "shards": sum(s["shards"] for s in sets), "samples": sum(s["samples"] for s in sets),
        "teacher_forward_samples": sum(s["teacher_forward_samples"] for s in sets),
        "member_forwards": sum(s["member_forwards"] for s in sets), "bytes": sum(s["bytes"] for s in sets),
        "to_make": {"shards": sum(s["to_make"]["shards"] for s in sets),
                    "teacher_forward_samples": sum(s["to_make"]["teacher_forward_samples"] for s in sets)},
        "student_runs": sum(s["runs"] for s in students), "student_steps": sum(s["total_steps"] for s in students),
    }
    if "probe" in cost:
        parts = {"teacher_training": cost["teachers"].get("seconds", 0.0),
                 "teacher_forwards": sum(s.get("seconds", {}).get("teachers", 0.0) for s in sets),
                 "sample_making": sum(s.get("seconds", {}).get("samples", 0.0) for s in sets),
                 "student_training": sum(s.get("seconds", 0.0) for s in students)}
        total["seconds"] = {**{k: round(v, 3) for k, v in parts.items()}, "total": round(sum(parts.values()), 3)}
        total["device_hours"] = float(f"{sum(parts.values()) / 3600:.4g}")  # 4 significant digits, however small
    return total
