"""The chain of a job: teachers → transfer sets → students → report, each step reused when done.

Output layout under ``OUT``::

    teachers/member-<m>/model.pt     sets/<name>/     students/<name>/     report.json

A finished step leaves a ``spec.json`` describing what it was made from; a rerun whose spec is
unchanged reuses the step's output instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.config import SOURCE_SET, Config
from pipeline.errors import UserError
from pipeline.format import atomic_write, read_index
from stages.sources import Source, load_source

Progress = Callable[[str], None]
SPEC_NAME = "spec.json"


def derive_seed(seed: int, *parts: int | str) -> int:
    """A stable 31-bit seed for a named part of the job (teacher member m, student s, ...)."""
    words = [seed] + [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) if isinstance(p, str) else p for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def _reusable(out_dir: Path, spec: dict[str, Any], artifact: str) -> bool:
    spec_path = out_dir / SPEC_NAME
    return (out_dir / artifact).is_file() and spec_path.is_file() and json.loads(spec_path.read_text()) == spec


def _mark_done(out_dir: Path, spec: dict[str, Any]) -> None:
    atomic_write(out_dir / SPEC_NAME, json.dumps(spec, sort_keys=True, indent=1).encode())


# ---------------------------------------------------------------- teachers


def teacher_paths(cfg: Config, out: str | Path) -> list[str | Path]:
    """Checkpoints of the ensemble: the config's own files (paths or fsspec URLs, kept as given),
    or the members this job trains (under ``out``, a path or, for ``generate``, a URL)."""
    if cfg.teachers.checkpoints:
        return list(cfg.teachers.checkpoints)
    parts = [("teachers", f"member-{m}", "model.pt") for m in range(cfg.teachers.members)]
    if storage.is_local(out):
        return [storage.local_path(out).joinpath(*p) for p in parts]
    return [storage.join(out, *p) for p in parts]


def require_teachers(cfg: Config, out: str | Path) -> list[str | Path]:
    paths = teacher_paths(cfg, out)
    missing = [str(p) for p in paths if not storage.is_file(p)]
    if missing:
        raise UserError(
            f"teachers: {len(missing)} checkpoint(s) missing ({missing[0]}); "
            f"train them with `transferset train CONFIG --teachers` or set teachers.checkpoints"
        )
    return paths


def train_teachers(cfg: Config, out: Path, train: Source, test: Source, progress: Progress) -> list[str | Path]:
    """Train the members that are not done yet: as parallel Ray tasks when the CPUs allow
    (``teachers.parallel``), else one after the other in this process."""
    from pipeline.ray_train import train_members, use_ray_for_members
    from pipeline.report import score
    from student.train import train_model

    if cfg.teachers.checkpoints:
        return require_teachers(cfg, out)
    paths = teacher_paths(cfg, out)
    jobs = []
    for member, path in enumerate(paths):
        seed = derive_seed(cfg.seed, "teacher", member)
        if _reusable(path.parent, _member_spec(cfg, seed), "model.pt"):
            progress(f"teacher {member}: reused {path}")
        else:
            jobs.append((member, path.parent, seed))
    if use_ray_for_members(cfg, len(jobs)):
        train_members(cfg, jobs, progress)
        for _, member_dir, seed in jobs:
            _mark_done(member_dir, _member_spec(cfg, seed))
        return paths
    for member, member_dir, seed in jobs:
        progress(f"teacher {member}: training {cfg.teachers.model.arch} for {cfg.teachers.train.steps} steps")
        result = train_model(
            name=f"teacher-{member}", model_cfg=cfg.teachers.model, train_cfg=cfg.teachers.train,
            objective="erm", kd_cfg=None, sets=[], train_source=train, test_source=test,
            out_dir=member_dir, seed=seed, progress=progress,
        )
        progress(f"teacher {member}: {score(result)}")
        _mark_done(member_dir, _member_spec(cfg, seed))
    return paths


def _member_spec(cfg: Config, seed: int) -> dict[str, Any]:
    return {"model": cfg.teachers.model.model_dump(), "train": cfg.teachers.train.model_dump(),
            "source": cfg.source.model_dump(), "seed": seed}


# ---------------------------------------------------------------- sets


def set_dir(out: str | Path, name: str) -> str:
    return storage.join(out, "sets", name)


def generate_sets(cfg: Config, out: str | Path, teachers: list[Path], progress: Progress,
                  names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Plan every set first (all input checked, nothing written), then make them one by one, each
    under the supervisor (restarts from the committed shards after a stall or a cluster failure)."""
    from pipeline.driver import execute
    from pipeline.plan import plan_set
    from pipeline.supervisor import supervise

    source = load_source(cfg.source, "train")

    def plan_of(name: str):
        return plan_set(set_name=name, set_cfg=cfg.sets[name], source_cfg=cfg.source, seed=cfg.seed,
                        teacher_paths=list(teachers), out_dir=set_dir(out, name), stage_cfg=cfg.teacher_stage,
                        cache=cfg.cache_root, source=source, generator_stage=cfg.generator_stage)

    plans = [plan_of(name) for name in names or list(cfg.sets)]
    results = {}
    for plan in plans:
        progress(f"set {plan.name}: generating into {plan.out_dir}")
        results[plan.name] = made = supervise(
            plan, lambda p: execute(p, cfg.ray, progress), progress, cfg.ray.max_restarts,
            replan=lambda name=plan.name: plan_of(name))
        progress(f"set {plan.name}: {made['shards_made']} of {made['shards_total']} shards made, "
                 f"{made['samples']} samples, {made['rejected']} rejected, "
                 f"{made['teacher_forward_samples']} teacher forward passes")
    return results


# ---------------------------------------------------------------- students


def locate_set(cfg: Config, out: str | Path, name: str) -> str:
    """Where set ``name`` lives: OUT/sets/NAME, or its ``out`` (``auto``: the shared cache, found
    by fingerprint, which needs the teachers' checkpoints)."""
    if cfg.sets[name].out is None:
        return set_dir(out, name)
    from pipeline.plan import plan_set

    return plan_set(set_name=name, set_cfg=cfg.sets[name], source_cfg=cfg.source, seed=cfg.seed,
                    teacher_paths=list(require_teachers(cfg, out)), out_dir=set_dir(out, name),
                    stage_cfg=cfg.teacher_stage, cache=cfg.cache_root,
                    generator_stage=cfg.generator_stage).out_dir


def student_sets(cfg: Config, out: Path, name: str, task: str = "classify") -> list[tuple[str, float]]:
    """The student's sets as (directory, weight), each checked to be generated and of ``task``
    (the task of the job's source)."""
    sets = []
    for set_name, weight in cfg.students[name].sets.items():
        if set_name == SOURCE_SET:
            sets.append((SOURCE_SET, weight))  # the real training split, read by the trainer
            continue
        directory = locate_set(cfg, out, set_name)
        index = read_index(directory)
        if index is None:
            raise UserError(f"students.{name}.sets: set {set_name!r} is not generated yet at {directory}; "
                            f"run `transferset generate CONFIG` first")
        if index.get("task", "classify") != task:  # the job's source decides what its students learn
            raise UserError(f"students.{name}.sets: set {set_name!r} at {directory} has task "
                            f"{index.get('task')!r}, the student is trained for {task!r}")
        sets.append((str(directory), weight))
    return sets


def train_student(cfg: Config, out: Path, name: str, train: Source, test: Source,
                  progress: Progress, force: bool = False) -> dict[str, Any]:
    from pipeline.report import score
    from student.train import train_model

    if name not in cfg.students:
        raise UserError(f"--student {name!r}: not one of {sorted(cfg.students)}")
    student = cfg.students[name]
    sets = student_sets(cfg, out, name, train.task) if student.objective == "kd" else []
    out_dir = out / "students" / name
    seed = derive_seed(cfg.seed, "student", name)
    spec = {"student": student.model_dump(), "source": cfg.source.model_dump(), "seed": seed,
            "sets": {storage.name_of(d): [w, read_index(d)["fingerprint"] if d != SOURCE_SET else None]
                     for d, w in sets}}
    if not force and _reusable(out_dir, spec, "result.json"):
        progress(f"student {name}: reused {out_dir}")
        return json.loads((out_dir / "result.json").read_text())
    progress(f"student {name}: training {student.model.arch} ({student.objective}) for {student.train.steps} steps")
    result = train_model(
        name=name, model_cfg=student.model, train_cfg=student.train, objective=student.objective,
        kd_cfg=student.kd, sets=sets, train_source=train, test_source=test, out_dir=out_dir,
        seed=seed, progress=progress,
    )
    _mark_done(out_dir, spec)
    progress(f"student {name}: {score(result)}")
    return result


# ---------------------------------------------------------------- the whole job


def load_splits(cfg: Config) -> tuple[Source, Source]:
    return load_source(cfg.source, "train"), load_source(cfg.source, "test")


def run_job(cfg: Config, out: Path, progress: Progress) -> dict[str, Any]:
    """The full chain; returns the report (also written to ``OUT/report.json``)."""
    from pipeline.report import build_report

    train, test = load_splits(cfg)
    teachers = train_teachers(cfg, out, train, test, progress)
    generate_sets(cfg, out, teachers, progress)
    students = {name: train_student(cfg, out, name, train, test, progress) for name in cfg.students}
    report = build_report(cfg, teachers, students, test, out)
    atomic_write(out / "report.json", json.dumps(report, indent=1).encode())
    return report
