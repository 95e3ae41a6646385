"""Range checks of replay records: one set of rules for everything that rebuilds their images.

A replay record is numbers, and numbers out of range rebuild *some* image without an error:
numpy clips a blend at λ = 7.5, slicing shortens a CutMix box past the image's edge, PIL pads a
view box outside the image with black, a crop offset past ``2·pad`` reads the wrong pixels. The
teachers never labelled those images, so a student must never train on them. ``verify``,
``inspect`` and the trainer (``core.records.replay.decode_columns``, ``core.sets.replay_read``) all
call :func:`record_problems` — the trainer through :func:`first_problem` — so what ``verify``
rejects is exactly what the others refuse. The checks are column-wise (a shard at once, a few
numpy comparisons a column): the trainer runs them on every shard it decodes.

A random-resized-crop view's box must lie within *its own* image, whose size only the image
file tells; :func:`view_box_problem` checks one, where the caller knows the size without extra
reads (``verify`` and ``inspect`` read image headers; the trainer checks as it rebuilds, on
the image it decoded anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import RecordError
from core.records.replay_params import ParamLayout
from core.samplers import SAMPLERS
from core.samplers.base import Problem
from core.samplers.columns import RawSize, flag, view_box_problem

__all__ = ["Problem", "RawSize", "first_problem", "record_problems", "record_views", "sample_box_problem",
           "view_box_problem"]


def record_views(params: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """``(view parameters, real image)`` of each real image a decoded sample reads."""
    if "aug" in params:
        return [(params["aug"], int(params["image"]))]
    return [(params[f"aug_{p}"], int(params[p])) for p in ("i", "j") if f"aug_{p}" in params]


def sample_box_problem(params: dict[str, Any], size: RawSize) -> str | None:
    """The first view box of a decoded sample that lies outside its image (``size`` gives the
    image's (height, width)), or None."""
    for aug, image in record_views(params):
        if "box" in aug:
            problem = view_box_problem(aug["box"], image, size(image))
            if problem is not None:
                return problem
    return None


def record_problems(params: ParamLayout, records: np.ndarray, classes: int = 0,
                    raw_size: RawSize | None = None) -> list[Problem]:
    """Every ``(row, problem)`` of a shard's ``records`` (structured, the set's dtype), by row:
    sampler codes, real-image indices, view offsets or boxes and flips, λ, Cutout/CutMix boxes,
    noise and Gaussian parameters, AutoAugment policy and op codes and magnitudes, view numbers,
    and — given the set's ``classes`` — real labels. ``raw_size`` checks each view box against
    its image's stored size (see the module docstring)."""
    found: list[Problem] = []
    kinds = params.kinds
    codes = records["sampler"].astype(np.int64) if len(kinds) > 1 else np.zeros(len(records), np.int64)
    flag(found, codes >= len(kinds), lambda r: f"sampler {codes[r]} is not one of the set's {len(kinds)} kinds")
    for code, kind in enumerate(kinds):
        rows = codes == code
        if rows.any():
            SAMPLERS[kind].problems(found, params, records, rows, raw_size)
    if classes and records.dtype.names is not None and "label" in records.dtype.names:
        label = records["label"].astype(np.int64)
        flag(found, (label < -1) | (label >= classes), lambda r: f"label {label[r]} is not one of {classes} classes")
    return sorted(found)


def first_problem(params: ParamLayout, records: np.ndarray, classes: int = 0) -> None:
    """Raise :class:`RecordError` for the first row :func:`record_problems` finds (the trainer's
    and ``decode_columns``' check: one bad record stops the shard, named by its row)."""
    found = record_problems(params, records, classes)
    if found:
        raise RecordError(*found[0])
