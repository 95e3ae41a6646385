"""The chain of a job: teachers → transfer sets → students → report, each step reused when done.

Output layout under ``OUT``::

    teachers/member-<m>/model.pt     sets/<name>/     students/<name>/seed-<s>/     report.json

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


def student_dir(out: Path, name: str, seed_index: int) -> Path:
    """Where run ``seed_index`` of student ``name`` lives: ``OUT/students/NAME/seed-S``."""
    return Path(out) / "students" / name / f"seed-{seed_index}"


def _file_sha256(path: str | Path) -> str:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def _student_spec(cfg: Config, out: Path, name: str, seed: int, sets: list[tuple[str, float]]) -> dict[str, Any]:
    """What one run of a student is made from; its seed list is not part of it, so adding a seed
    reuses the runs already made."""
    student = cfg.students[name]
    spec = {"student": student.model_dump(exclude={"seeds"}), "source": cfg.source.model_dump(), "seed": seed,
            "sets": {storage.name_of(d): [w, read_index(d)["fingerprint"] if d != SOURCE_SET else None]
                     for d, w in sets}}
    if student.objective == "kd_online":
        spec["teachers"] = [_file_sha256(path) for path in require_teachers(cfg, out)]
    return spec


def student_runs(cfg: Config, out: Path, name: str, task: str = "classify",
                 seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """The runs of student ``name`` (one per seed), each checked for its inputs: ``{seed_index,
    seed, out_dir, sets, spec}``."""
    if name not in cfg.students:
        raise UserError(f"--student {name!r}: not one of {sorted(cfg.students)}")
    student = cfg.students[name]
    unknown = sorted(set(seeds or []) - set(student.seeds))
    if unknown:
        raise UserError(f"--seed {unknown[0]}: student {name!r} has seeds {student.seeds}")
    sets = student_sets(cfg, out, name, task) if student.objective == "kd" else []
    runs = []
    for seed_index in seeds or student.seeds:
        seed = derive_seed(cfg.seed, "student", name, seed_index)
        runs.append({"name": name, "seed_index": seed_index, "seed": seed, "sets": sets,
                     "out_dir": student_dir(out, name, seed_index),
                     "spec": _student_spec(cfg, out, name, seed, sets)})
    return runs


def train_student_run(cfg: Config, out: Path, run: dict[str, Any], train: Source, test: Source,
                      progress: Progress) -> dict[str, Any]:
    """Train one run of :func:`student_runs` and mark it done."""
    from pipeline.report import score
    from student.train import train_model

    name, student, label = run["name"], cfg.students[run["name"]], f"{run['name']}/seed-{run['seed_index']}"
    progress(f"student {label}: training {student.model.arch} ({student.objective}) for {student.train.steps} steps")
    teachers = list(require_teachers(cfg, out)) if student.objective == "kd_online" else None
    result = train_model(
        name=name, model_cfg=student.model, train_cfg=student.train, objective=student.objective,
        kd_cfg=student.kd, sets=run["sets"], train_source=train, test_source=test, out_dir=run["out_dir"],
        seed=run["seed"], progress=progress, teachers=teachers,
    )
    result["seed_index"] = run["seed_index"]
    _mark_done(run["out_dir"], run["spec"])
    progress(f"student {label}: {score(result)}")
    return result


def train_students(cfg: Config, out: Path, names: list[str], train: Source, test: Source, progress: Progress,
                   force: bool = False, seeds: list[int] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Every run (student × seed) of ``names``: reused when done, else trained — as parallel Ray
    tasks when the CPUs allow (``student_stage.parallel``), else one after the other here.
    Returns ``{name: {seed_index: result}}``."""
    from pipeline.ray_train import train_runs_on_ray, use_ray_for_runs

    runs = [run for name in names for run in student_runs(cfg, out, name, train.task, seeds)]
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
    pending = []
    for run in runs:
        if not force and _reusable(run["out_dir"], run["spec"], "result.json"):
            progress(f"student {run['name']}/seed-{run['seed_index']}: reused {run['out_dir']}")
            results[run["name"]][run["seed_index"]] = {
                **json.loads((run["out_dir"] / "result.json").read_text()), "seed_index": run["seed_index"]}
        else:
            pending.append(run)
    if use_ray_for_runs(cfg, len(pending)):
        for run, result in zip(pending, train_runs_on_ray(cfg, out, pending, progress), strict=True):
            results[run["name"]][run["seed_index"]] = result
    else:
        for run in pending:
            results[run["name"]][run["seed_index"]] = train_student_run(cfg, out, run, train, test, progress)
    return {name: dict(sorted(by_seed.items())) for name, by_seed in results.items()}


# ---------------------------------------------------------------- the whole job


def load_splits(cfg: Config) -> tuple[Source, Source]:
    return load_source(cfg.source, "train"), load_source(cfg.source, "test")


def run_job(cfg: Config, out: Path, progress: Progress) -> dict[str, Any]:
    """The full chain; returns the report (also written to ``OUT/report.json``)."""
    from pipeline.report import build_report

    train, test = load_splits(cfg)
    teachers = train_teachers(cfg, out, train, test, progress)
    generate_sets(cfg, out, teachers, progress)
    students = train_students(cfg, out, list(cfg.students), train, test, progress)
    report = build_report(cfg, teachers, students, test, out, train)
    atomic_write(out / "report.json", json.dumps(report, indent=1).encode())
    return report
