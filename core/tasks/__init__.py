"""One :class:`~core.tasks.base.Task` per kind of transfer set, registered by name.

The source decides the task (float targets: regression, labels: classification); everything that
differs between the two kinds asks the task instead of branching on it: the records and their tar
members, the manifest columns, the index's target spec and statistics, the ensemble's targets and
the score ``select`` ranks by, checkpoint heads, the options a student of that kind refuses and the
headline of a trained model.

A new kind (say, multi-label) is a module here with a ``Task`` subclass, registered in
:data:`TASKS`; its student objectives and evaluation are registered in :mod:`student.tasks`, its
report, ``inspect`` and ``verify`` in the ``pipeline`` modules of those names.
"""

from __future__ import annotations

from typing import Any

from core.errors import FormatError
from core.tasks.base import Record, Task
from core.tasks.classification import CLASSIFY
from core.tasks.regression import REGRESS

__all__ = ["CLASSIFY", "REGRESS", "TASKS", "Record", "Task", "decode_fields", "score", "task_named", "task_of_result"]

TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFY, REGRESS)}


def task_named(task: str | Task) -> Task:
    """The task of that name (a task is returned as it is)."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise FormatError(f"task {task!r}: not one of {sorted(TASKS)}") from None


def task_of_fields(fields: dict[str, bytes]) -> Task:
    """The kind of a record, by the target members it has (classification when it has none of any
    kind, so the missing member is what its decoder reports)."""
    return next((task for task in TASKS.values() if any(m in fields for m in task.members)), CLASSIFY)


def decode_fields(fields: dict[str, bytes], task: str | Task | None = None) -> Record:
    """Decode one sample's raw members without pickle (see each task's ``decode``): always
    ``image``, ``meta``, ``target`` (the stream's row) and ``label`` (−1 if none)."""
    return (task_of_fields(fields) if task is None else task_named(task)).decode(fields)


def task_of_result(result: dict[str, Any]) -> Task:
    """The kind of model a result (``result.json``) describes, by its headline key."""
    return next((task for task in TASKS.values() if task.headline in result), CLASSIFY)


def score(result: dict[str, Any]) -> str:
    """A trained model's headline for a progress line: accuracy, or the regression error."""
    return task_of_result(result).score(result)
