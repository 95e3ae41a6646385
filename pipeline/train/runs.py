"""Where a job's sets and students live, and the runs a student is trained in.

Output layout under ``OUT``::

    teachers/member-<m>/model.pt     sets/<name>/     students/<name>/seed-<s>/     report.json

The teachers' checkpoints are in :mod:`pipeline.train.members`. Each finished run leaves a
``spec.json`` (:mod:`pipeline.train.step_spec`) that a rerun is reused by. :mod:`pipeline.chain`
runs the steps in order; :mod:`pipeline.train.ray_train` trains the same runs as Ray tasks; the
reports find the students' models here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.config import SOURCE_SET, Config, KDConfig, StudentConfig, TrainConfig, recipes_of
from core.errors import UserError
from core.options.objective import objective_named
from core.seeds import part_seed
from core.sets.index import read_index
from core.store import storage
from core.tasks import Task, score
from pipeline.generate.plan import plan_set
from pipeline.train.job import Job
from pipeline.train.members import require_teachers
from pipeline.train.step_spec import mark_done
from student.pruning.shaping import Shaping
from student.train import TrainRequest, train_model

# ---------------------------------------------------------------- sets


def set_dir(out: str | Path, name: str) -> str:
    return storage.join(out, "sets", name)


def locate_set(cfg: Config, out: str | Path, name: str) -> str:
    """Where set ``name`` lives: OUT/sets/NAME, or its ``out`` (``auto``: the shared cache, found
    by fingerprint, which needs the teachers' checkpoints)."""
    if cfg.sets[name].out is None:
        return set_dir(out, name)
    return plan_set(cfg, name, set_dir(out, name), require_teachers(cfg, out)).spec.out_dir


# ---------------------------------------------------------------- students


def student_sets(cfg: Config, out: Path, name: str, task: Task,
                 weights: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """The student's sets (or ``weights``: a pruned student's fine-tuning sets) as (directory,
    weight), each checked to be generated and of ``task`` (the task of the job's source)."""
    sets = []
    for set_name, weight in (cfg.students[name].sets if weights is None else weights).items():
        if set_name == SOURCE_SET:
            sets.append((SOURCE_SET, weight))  # the real training split, read by the trainer
            continue
        directory = locate_set(cfg, out, set_name)
        index = read_index(directory)
        if index is None:
            raise UserError(f"students.{name}.sets: set {set_name!r} is not generated yet at {directory}; "
                            f"run `transferset generate CONFIG` first")
        if index.kind.name != task.name:  # the job's source decides what its students learn
            raise UserError(f"students.{name}.sets: set {set_name!r} at {directory} has task "
                            f"{index.task!r}, the student is trained for {task.name!r}")
        sets.append((str(directory), weight))
    return sets


def student_dir(out: Path, name: str, seed_index: int) -> Path:
    """Where run ``seed_index`` of student ``name`` lives: ``OUT/students/NAME/seed-S``."""
    return Path(out) / "students" / name / f"seed-{seed_index}"


def _file_sha256(path: str | Path) -> str:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def set_identity(set_dir: str) -> list[Any] | None:
    """A set as a student's reuse spec sees it: its fingerprint and its sample count (a set grows
    in place under the same fingerprint, and a student of the grown set is another student)."""
    index = read_index(set_dir)
    return None if index is None else [index.fingerprint, index.totals.samples]


def _student_spec(cfg: Config, out: Path, name: str, seed: int, sets: list[tuple[str, float]]) -> dict[str, Any]:
    """What one run of a student is made from; its seed list is not part of it, so adding a seed
    reuses the runs already made. Nor is its ``prune`` section (pruning comes after the run),
    except the slimming penalty its pre-training adds."""
    student = cfg.students[name]
    source = cfg.source.model_dump(exclude=cfg.source.unused_keys())
    spec = {"student": student.model_dump(exclude={"seeds", "prune"}), "source": source, "seed": seed,
            "sets": {storage.name_of(d): [w, set_identity(d) if d != SOURCE_SET else None] for d, w in sets}}
    penalty = slimming_penalty(student)
    if penalty:
        spec["slimming_l1"] = penalty
    if student.objective_kind.teachers_in_loop:
        spec["teachers"] = [_file_sha256(path) for path in require_teachers(cfg, out)]
    return spec


@dataclass(frozen=True)
class StudentRun:
    """One run of a student (one seed), or one fine-tuning phase of a pruned student: what it
    trains, from which sets, where it lives, and the ``spec.json`` a rerun is reused by."""

    name: str
    seed_index: int
    seed: int
    out_dir: Path
    sets: list[tuple[str, float]]  # (directory, weight); ``source`` is the real split
    spec: dict[str, Any]
    objective: str
    train: TrainConfig
    kd: KDConfig
    label: str  # how progress lines and the pruning report name it
    shaping: Shaping | None = None

    def to_json(self) -> str:
        """The run as a Ray task receives it: plain JSON, read back by :meth:`from_json`."""
        return json.dumps({**{f.name: getattr(self, f.name) for f in fields(self)}, "out_dir": str(self.out_dir),
                           "train": self.train.model_dump(), "kd": self.kd.model_dump(),
                           "shaping": None if self.shaping is None else self.shaping.as_dict()})

    @classmethod
    def from_json(cls, text: str) -> StudentRun:
        raw = json.loads(text)
        return cls(**{**raw, "out_dir": Path(raw["out_dir"]), "sets": [(d, w) for d, w in raw["sets"]],
                      "train": TrainConfig.model_validate(raw["train"]), "kd": KDConfig.model_validate(raw["kd"]),
                      "shaping": None if raw["shaping"] is None else Shaping(**raw["shaping"])})


def read_back(train: TrainConfig) -> TrainConfig:
    """``train`` read back from its plain form, where a float field holds a float (``cache_mb``'s
    default 1024 becomes 1024.0). A pruned student's phases and the runs on Ray train with their
    section in this form, and their checkpoints record it so."""
    return TrainConfig.model_validate(train.model_dump())


def student_runs(cfg: Config, out: Path, name: str, task: Task, seeds: list[int] | None = None) -> list[StudentRun]:
    """The runs of student ``name`` (one per seed), each checked for its inputs."""
    if name not in cfg.students:
        raise UserError(f"--student {name!r}: not one of {sorted(cfg.students)}")
    student = cfg.students[name]
    unknown = sorted(set(seeds or []) - set(student.seeds))
    if unknown:
        raise UserError(f"--seed {unknown[0]}: student {name!r} has seeds {student.seeds}")
    sets = student_sets(cfg, out, name, task) if student.objective_kind.reads_sets else []
    penalty = slimming_penalty(student)
    runs = []
    for seed_index in seeds or student.seeds:
        seed = part_seed(cfg.seed, "student", name, seed_index)
        runs.append(StudentRun(
            name=name, seed_index=seed_index, seed=seed, out_dir=student_dir(out, name, seed_index), sets=sets,
            spec=_student_spec(cfg, out, name, seed, sets), objective=student.objective, train=student.train,
            kd=student.kd, label=f"{name}/seed-{seed_index}", shaping=Shaping(bn_l1=penalty) if penalty else None))
    return runs


def slimming_penalty(student: StudentConfig) -> float:
    """λ of the L1 penalty on batch-norm scales in the student's training (its slimming recipes')."""
    return max([recipe.slimming_l1 for recipe in recipes_of(student.prune)], default=0.0)


def train_student_run(job: Job, run: StudentRun) -> dict[str, Any]:
    """Train one run of :func:`student_runs` (or a pruned student's fine-tuning phase) and mark it done."""
    cfg, progress = job.cfg, job.progress
    student = cfg.students[run.name]
    progress(f"student {run.label}: training {student.model.arch} ({run.objective}) for {run.train.steps} steps")
    teachers = list(require_teachers(cfg, job.out)) if objective_named(run.objective).teachers_in_loop else None
    request = TrainRequest(
        name=run.name, model=student.model, train=run.train, out_dir=run.out_dir, seed=run.seed,
        objective=run.objective, kd=run.kd, sets=run.sets, teachers=teachers, factories=cfg.factories,
        shaping=run.shaping, views_seen_warning=cfg.student_stage.views_seen_warning)
    result = train_model(request, job.train, job.test, progress)
    result["seed_index"] = run.seed_index
    mark_done(run.out_dir, run.spec)
    progress(f"student {run.label}: {score(result)}")
    return result
