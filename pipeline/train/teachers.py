"""The ensemble's step: which members a job has, which of them are ready, how the others are made.

The config gives its teachers one of three ways — existing ``checkpoints``, ``models`` imported
from elsewhere, or a ``model`` the job trains — one class each. :func:`plan_teachers` reads
``OUT`` once into a :class:`TeacherPlan`; the chain makes its pending members
(:func:`make_teachers`) and ``transferset plan`` stands in for them in a scratch directory
(:meth:`Ensemble.stand_in`), so the two can never disagree on what a run would do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core.config import Config
from core.errors import UserError
from core.models import build_model, input_spec, read_checkpoint, save_checkpoint
from core.progress import Progress
from core.sources import Source
from core.store import storage
from core.tasks import CLASSIFY, score
from pipeline.generate.teacher_import import import_spec, prepare_teacher
from pipeline.train.job import Job
from pipeline.train.members import (
    check_member_spec,
    member_seed,
    member_spec,
    require_teachers,
    teacher_paths,
    train_member,
)
from pipeline.train.ray_train import train_members, use_ray_for_members
from pipeline.train.step_spec import mark_done, reusable

STATS_IMAGES = 4096  # images a stand-in teacher's mean/std are computed from (evenly spaced)


@dataclass(frozen=True)
class Member:
    """One member of the ensemble: where its checkpoint is (or will be) and whether it is there."""

    index: int
    path: str | Path
    ready: bool


class Ensemble(ABC):
    """How a config gives its teachers; ``weights`` says so in ``transferset plan``'s table."""

    weights: ClassVar[str]
    made_by_the_job: ClassVar[bool] = True  # its ready members are said to be reused
    exact_stand_ins: ClassVar[bool] = False  # a stand-in has the bytes the run will make

    def __init__(self, cfg: Config, out: str | Path) -> None:
        self.cfg, self.out = cfg, out

    @abstractmethod
    def members(self, source: Source) -> list[Member]:
        """The members as ``OUT`` holds them (read only)."""

    @abstractmethod
    def make(self, pending: list[Member], train: Source, test: Source, progress: Progress) -> None:
        """Make the pending members at their paths."""

    @abstractmethod
    def stand_in(self, members: list[Member], source: Source, scratch: Path) -> list[Path]:
        """Checkpoints in ``scratch`` with the pending members' arch, head and input contract."""

    def archs(self) -> str | None:
        return None


class GivenTeachers(Ensemble):
    """``teachers.checkpoints``: files made elsewhere, which must exist."""

    weights = "trained"  # elsewhere
    made_by_the_job = False

    def members(self, source: Source) -> list[Member]:
        return [Member(index, path, True) for index, path in enumerate(require_teachers(self.cfg, self.out))]

    def make(self, pending: list[Member], train: Source, test: Source, progress: Progress) -> None:
        assert not pending, "given checkpoints are never pending"

    def stand_in(self, members: list[Member], source: Source, scratch: Path) -> list[Path]:
        assert not members, "given checkpoints are never pending"
        return []


class ImportedTeachers(Ensemble):
    """``teachers.models``: each member imported (built, weights fitted, one forward checked)
    unless its ``spec.json`` — arch, weights sha256, input — is this config's and it predicts the
    source's classes. An import is deterministic: a stand-in is the very checkpoint a run makes."""

    weights = "imported"
    exact_stand_ins = True

    def members(self, source: Source) -> list[Member]:
        if source.task.name != CLASSIFY.name:
            raise UserError(f"teachers.models: imported teachers are classifiers; source {source.name} has a "
                            f"{source.task.name!r} task (train its teachers with teachers.model and teachers.train)")
        entries = self.cfg.teachers.models or []
        return [Member(index, path, self._ready(entry, path, source))
                for index, (entry, path) in enumerate(zip(entries, teacher_paths(self.cfg, self.out), strict=True))]

    @staticmethod
    def _ready(entry: Any, path: str | Path, source: Source) -> bool:
        return (isinstance(path, Path) and reusable(path.parent, import_spec(entry), "model.pt")
                and read_checkpoint(path).get("num_classes") == source.num_classes)

    def _prepare(self, member: Member, source: Source) -> Any:
        entry = (self.cfg.teachers.models or [])[member.index]
        return prepare_teacher(entry, source.num_classes, default_channels=source.shape[2],
                               where=f"teachers.models[{member.index}] ({entry.arch})",
                               allowed_factories=self.cfg.factories)

    def make(self, pending: list[Member], train: Source, test: Source, progress: Progress) -> None:
        prepared = [(member, self._prepare(member, train)) for member in pending]  # all checked first
        for member, teacher in prepared:
            sha = teacher.save(member.path)
            mark_done(Path(member.path).parent, import_spec(teacher.entry))
            progress(f"teacher {member.index}: imported {teacher.entry.arch} from {teacher.entry.weights} "
                     f"(input {teacher.contract['size'][0]}×{teacher.contract['size'][1]}, "
                     f"{teacher.contract['interpolation']}) → {member.path} (sha256 {sha[:12]})")

    def stand_in(self, members: list[Member], source: Source, scratch: Path) -> list[Path]:
        paths = []
        for member in members:
            path = scratch / f"member-{member.index}.pt"
            self._prepare(member, source).save(path)
            paths.append(path)
        return paths

    def archs(self) -> str | None:
        return ", ".join(m.arch for m in self.cfg.teachers.models or [])


class TrainedTeachers(Ensemble):
    """``teachers.model`` + ``teachers.train``: members trained by the job (ERM, seeded by their
    index), in parallel Ray tasks when the CPUs allow (``teachers.parallel``)."""

    weights = "trained"

    def members(self, source: Source) -> list[Member]:
        return [Member(index, path, self._ready(index, path))
                for index, path in enumerate(teacher_paths(self.cfg, self.out))]

    def _ready(self, index: int, path: str | Path) -> bool:
        """A URL (``generate --out s3://…``) is read through fsspec."""
        if isinstance(path, Path):
            return reusable(path.parent, member_spec(self.cfg, member_seed(self.cfg, index)), "model.pt")
        try:
            check_member_spec(self.cfg, index, path)
        except UserError:
            return False
        return storage.is_file(path)

    def make(self, pending: list[Member], train: Source, test: Source, progress: Progress) -> None:
        cfg = self.cfg
        assert cfg.teachers.model is not None and cfg.teachers.train is not None
        jobs = [(m.index, Path(m.path).parent, member_seed(cfg, m.index)) for m in pending]
        if use_ray_for_members(cfg, len(jobs)):
            train_members(cfg, jobs, progress)
            for _, member_dir, seed in jobs:
                mark_done(member_dir, member_spec(cfg, seed))
            return
        for index, member_dir, seed in jobs:
            progress(f"teacher {index}: training {cfg.teachers.model.arch} for {cfg.teachers.train.steps} steps")
            result = train_member(cfg, index, member_dir, seed, train, test, progress)
            progress(f"teacher {index}: {score(result)}")
            mark_done(member_dir, member_spec(cfg, seed))

    def stand_in(self, members: list[Member], source: Source, scratch: Path) -> list[Path]:
        """Random weights: counts and bytes do not depend on them, nor does a forward's time."""
        if not members:
            return []
        contract = sampled_input_spec(source)
        paths = [scratch / f"member-{member.index}.pt" for member in members]
        for member, path in zip(members, paths, strict=True):
            self._save_random(member.index, source, path, contract)
        return paths

    def _save_random(self, index: int, source: Source, path: Path, contract: dict[str, Any]) -> None:
        model_cfg, task = self.cfg.teachers.model, source.task
        assert model_cfg is not None
        head = task.head(model_cfg, source)
        torch.manual_seed(member_seed(self.cfg, index))
        model = build_model(model_cfg.arch, source.shape[2], task.head_width(head), model_cfg.arch_kwargs,
                            [model_cfg.factory] if model_cfg.factory else [])
        save_checkpoint(path, model.eval(), arch=model_cfg.arch, arch_kwargs=model_cfg.arch_kwargs,
                        num_classes=source.num_classes, input=contract, task=task.name, head=head)

    def archs(self) -> str | None:
        return self.cfg.teachers.model.arch if self.cfg.teachers.model is not None else None


def sampled_input_spec(source: Source, limit: int = STATS_IMAGES) -> dict[str, Any]:
    """The input contract a member trained on ``source`` gets (its shape and per-channel
    mean/std), the statistics taken from at most ``limit`` evenly spaced images: a plan must not
    decode a large source whole."""
    height, width, channels = source.shape
    indices = np.unique(np.linspace(0, len(source) - 1, min(len(source), limit)).astype(np.int64))
    pixels = source.images(indices).reshape(-1, channels).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return input_spec(height, width, channels, [float(m) for m in mean], [float(s) for s in std])


@dataclass(frozen=True)
class TeacherPlan:
    """The ensemble of a job as ``OUT`` holds it: what is ready and what a run would make."""

    ensemble: Ensemble
    members: list[Member]

    @property
    def paths(self) -> list[str | Path]:
        return [member.path for member in self.members]

    @property
    def pending(self) -> list[Member]:
        return [member for member in self.members if not member.ready]

    @property
    def to_train(self) -> int:
        """Members whose weights a run makes differently from their stand-ins (so the sets'
        fingerprints are not known yet)."""
        return 0 if self.ensemble.exact_stand_ins else len(self.pending)

    def stand_in(self, source: Source, scratch: Path) -> list[str | Path]:
        """The checkpoints the run would use: the ready ones, and stand-ins in ``scratch``."""
        made = iter(self.ensemble.stand_in(self.pending, source, scratch))
        return [member.path if member.ready else next(made) for member in self.members]


def plan_teachers(cfg: Config, out: str | Path, source: Source) -> TeacherPlan:
    section = cfg.teachers
    kind = GivenTeachers if section.checkpoints else ImportedTeachers if section.models else TrainedTeachers
    ensemble = kind(cfg, out)
    return TeacherPlan(ensemble, ensemble.members(source))


def make_teachers(job: Job) -> list[str | Path]:
    """Every member ready: the reused ones said so, the pending ones made. Returns the paths."""
    plan = plan_teachers(job.cfg, job.out, job.train)
    for member in plan.members:
        if member.ready and plan.ensemble.made_by_the_job:
            job.progress(f"teacher {member.index}: reused {member.path}")
    plan.ensemble.make(plan.pending, job.train, job.test, job.progress)
    return plan.paths
