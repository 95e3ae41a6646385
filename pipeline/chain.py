"""The chain of a job: teachers (:mod:`pipeline.train.teachers`) → transfer sets → students (→ pruned students' phases,
:mod:`pipeline.train.pruning`) → report, each step reused when done.

What each step makes and where it lives (``OUT/teachers``, ``sets``, ``students``, with a
``spec.json`` per finished step) is :mod:`pipeline.train.runs`; this module runs the steps in order,
locally or as Ray tasks (:mod:`pipeline.train.ray_train`), and writes ``OUT/report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Config
from core.progress import Progress
from core.sources import check_readable, load_source
from core.store import storage
from pipeline.generate.driver import execute
from pipeline.generate.plan import SetPlan, plan_set
from pipeline.generate.set_locations import check_config_locations, check_planned, check_writable
from pipeline.generate.supervisor import supervise
from pipeline.report import build_report
from pipeline.train.job import Job, open_job
from pipeline.train.pruning import check_pruning, prune_students
from pipeline.train.ray_train import train_runs
from pipeline.train.runs import set_dir, student_runs
from pipeline.train.teachers import make_teachers


def generate_sets(cfg: Config, out: str | Path, teachers: list[Path], progress: Progress,
                  names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Plan every set first (all input checked, nothing written), then make them one by one, each
    under the supervisor (restarts from the committed shards after a stall or a cluster failure)."""
    check_config_locations(cfg, out)
    source = load_source(cfg.source, "train")
    check_readable(source)

    def plan_of(name: str) -> SetPlan:
        return plan_set(cfg, name, set_dir(out, name), teachers, source=source)

    plans = [plan_of(name) for name in names or list(cfg.sets)]
    check_planned(cfg, out, [plan.spec for plan in plans])
    for plan in plans:  # a complete set is only read: a read-only cache serves it
        if not plan.complete():
            check_writable(cfg, plan.spec)
    results = {}
    for plan in plans:
        name = plan.spec.name
        progress(f"set {name}: generating into {plan.spec.out_dir}")
        results[name] = made = supervise(
            plan, lambda p: execute(p, cfg.ray, progress), progress, cfg.ray.max_restarts,
            replan=lambda name=name: plan_of(name))
        progress(f"set {name}: {made['shards_made']} of {made['shards_total']} shards made, "
                 f"{made['samples']} samples, {made['rejected']} rejected, "
                 f"{made['teacher_forward_samples']} teacher forward passes")
    if results:  # the figure `transferset plan` predicts
        progress(f"sets: {sum(r['teacher_forward_samples'] for r in results.values())} teacher forward passes "
                 f"in all ({len(results)} sets)")
    return results


def train_students(job: Job, names: list[str], force: bool = False,
                   seeds: list[int] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Every run (student × seed) of ``names``: reused when done, else trained — as parallel Ray
    tasks when the CPUs allow (``student_stage.parallel``), else one after the other here.
    Returns ``{name: {seed_index: result}}``."""
    runs = [run for name in names for run in student_runs(job.cfg, job.out, name, job.train.task, seeds)]
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
    trained = train_runs(job, runs, force)
    for run, result in zip(runs, trained, strict=True):
        results[run.name][run.seed_index] = result
    return {name: dict(sorted(by_seed.items())) for name, by_seed in results.items()}


def run_job(cfg: Config, out: Path, progress: Progress) -> dict[str, Any]:
    """The full chain; returns the report (also written to ``OUT/report.json``)."""
    job = open_job(cfg, out, progress)
    check_pruning(cfg, job.train)
    check_config_locations(cfg, out)  # before the teachers: nothing is written for a job that would clash
    teachers = make_teachers(job)
    generate_sets(cfg, out, teachers, progress)
    students = train_students(job, list(cfg.students))
    prune_students(job, list(cfg.students))
    report = build_report(cfg, teachers, students, job.test, out, job.train)
    storage.atomic_write(out / "report.json", json.dumps(report, indent=1).encode())
    return report
