"""The ensemble's member checkpoints: where they live, what each must have been made from, and
training one.

A job's own members live at ``OUT/teachers/member-<m>/model.pt`` beside a ``spec.json`` (trained
from the config's ``teachers.model``/``train``, or imported from ``teachers.models``); a config
may instead name existing ``teachers.checkpoints``. :mod:`pipeline.train.teachers` plans and
makes them; every step that reads the teachers asks :func:`require_teachers`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError
from core.progress import Progress
from core.seeds import part_seed
from core.sources import Source
from core.store import storage
from pipeline.generate.teacher_import import import_spec
from pipeline.train.step_spec import SPEC_NAME, first_difference
from student.train import TrainRequest, train_model


def teacher_paths(cfg: Config, out: str | Path) -> list[str | Path]:
    """Checkpoints of the ensemble: the config's own files (paths or fsspec URLs, kept as given),
    or the members this job trains (under ``out``, a path or, for ``generate``, a URL)."""
    if cfg.teachers.checkpoints:
        return list(cfg.teachers.checkpoints)
    count = len(cfg.teachers.models) if cfg.teachers.models else cfg.teachers.members
    parts = [("teachers", f"member-{m}", "model.pt") for m in range(count)]
    if storage.is_local(out):
        return [storage.local_path(out).joinpath(*p) for p in parts]
    return [storage.join(out, *p) for p in parts]


def require_teachers(cfg: Config, out: str | Path) -> list[str | Path]:
    """The ensemble's checkpoints, which must exist; the job's own members also must have been
    trained (or imported) from this config's ``teachers`` section (their ``spec.json``), never
    silently older ones."""
    paths = teacher_paths(cfg, out)
    missing = [str(p) for p in paths if not storage.is_file(p)]
    if missing:
        verb = "import" if cfg.teachers.models else "train"
        raise UserError(
            f"teachers: {len(missing)} checkpoint(s) missing ({missing[0]}); "
            f"{verb} them with `transferset train CONFIG --teachers` or set teachers.checkpoints"
        )
    if not cfg.teachers.checkpoints:
        for member, path in enumerate(paths):
            check_member_spec(cfg, member, path)
    return paths


def check_member_spec(cfg: Config, member: int, path: str | Path) -> None:
    """Refuse a member checkpoint that the config's ``teachers`` section did not make."""
    spec_path = path.parent / SPEC_NAME if isinstance(path, Path) else str(path).rsplit("/", 1)[0] + "/" + SPEC_NAME
    wanted = json.loads(json.dumps(wanted_member_spec(cfg, member)))
    verb = "import them again" if cfg.teachers.models else "retrain them"
    how = (f"{verb} with `transferset train CONFIG --teachers` (or `run`), use another --out, "
           "or name the old files in teachers.checkpoints")
    if not storage.is_file(spec_path):
        raise UserError(f"teachers: {path} has no {SPEC_NAME} saying what it was trained from; {how}")
    try:
        found = json.loads(storage.read_bytes(spec_path))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"teachers: {spec_path} is not valid JSON ({err}); {how}") from err
    if found != wanted:
        raise UserError(f"teachers: {path} was made with {first_difference(found, wanted)}; {how}")


def member_seed(cfg: Config, member: int) -> int:
    return part_seed(cfg.seed, "teacher", member)


def member_spec(cfg: Config, seed: int) -> dict[str, Any]:
    """What a trained member is made from."""
    assert cfg.teachers.model is not None and cfg.teachers.train is not None, "the config validated a training setup"
    return {"model": cfg.teachers.model.model_dump(), "train": cfg.teachers.train.model_dump(),
            "source": cfg.source.model_dump(exclude=cfg.source.unused_keys()), "seed": seed}


def wanted_member_spec(cfg: Config, member: int) -> dict[str, Any]:
    """The spec member ``member`` of this config must have been made from: imported or trained."""
    if cfg.teachers.models:
        return import_spec(cfg.teachers.models[member])
    return member_spec(cfg, member_seed(cfg, member))


def train_member(cfg: Config, member: int, member_dir: Path, seed: int, train: Source, test: Source,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Train teacher member ``member`` (ERM, in this process)."""
    assert cfg.teachers.model is not None and cfg.teachers.train is not None, "the config validated a training setup"
    request = TrainRequest(name=f"teacher-{member}", model=cfg.teachers.model, train=cfg.teachers.train,
                           out_dir=member_dir, seed=seed)
    return train_model(request, train, test, progress)
