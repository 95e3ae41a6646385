"""Range checks of replay records: one set of rules for everything that rebuilds their images.

A replay record is numbers, and numbers out of range rebuild *some* image without an error:
numpy clips a blend at λ = 7.5, slicing shortens a CutMix box past the image's edge, PIL pads a
view box outside the image with black, a crop offset past ``2·pad`` reads the wrong pixels. The
teachers never labelled those images, so a student must never train on them. ``verify``,
``inspect`` and the trainer (``core.replay_record.decode_columns``, ``student.replay_read``) all
call :func:`record_problems` — the trainer through :func:`first_problem` — so what ``verify``
rejects is exactly what the others refuse. The checks are column-wise (a shard at once, a few
numpy comparisons a column): the trainer runs them on every shard it decodes.

A random-resized-crop view's box must lie within *its own* image, whose size only the image
file tells; :func:`view_box_problem` checks one, where the caller knows the size without extra
reads (``verify`` and ``inspect`` read image headers; the trainer checks as it rebuilds, on
the image it decoded anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import RecordError
from core.replay_params import NO_OP, OPS, POLICIES, ParamLayout
from core.sample_sources import PAIRED, UNSOURCED

RawSize = Callable[[int], tuple[int, int]]  # real image i's (height, width) as stored
Problem = tuple[int, str]  # (row, what is wrong with it)


def view_box_problem(box: Sequence[int], image: int, size: tuple[int, int]) -> str | None:
    """A random-resized-crop box ``[top, left, height, width]`` that does not lie within image
    ``image`` of ``size`` (height, width); None when it does."""
    top, left, height, width = (int(v) for v in box)
    if height > 0 and width > 0 and top + height <= size[0] and left + width <= size[1]:
        return None
    return f"view box {[top, left, height, width]} outside image {image} ({size[0]}×{size[1]})"


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


def _flag(found: list[Problem], bad: np.ndarray, describe: Callable[[int], str]) -> None:
    found += [(int(row), describe(int(row))) for row in np.flatnonzero(bad)]


def _in_unit(values: np.ndarray) -> np.ndarray:
    return (values >= 0.0) & (values <= 1.0)  # NaN fails both


def _image_problems(found: list[Problem], params: ParamLayout, records: np.ndarray, rows: np.ndarray,
                    name: str) -> None:
    values = records[name].astype(np.int64)
    _flag(found, rows & (values >= params.images),
          lambda r: f"real image {values[r]} outside the source's {params.images} images")


def _view_problems(found: list[Problem], params: ParamLayout, records: np.ndarray, rows: np.ndarray,
                   prefix: str, image: str, raw_size: RawSize | None) -> None:
    """The stored view of column ``image``: offsets within [0, 2·pad], or a box within its image."""
    flip = records[f"{prefix}flip"]
    _flag(found, rows & (flip > 1), lambda r: f"flip {int(flip[r])} is neither 0 nor 1")
    if not params.box_views:
        dx, dy, limit = records[f"{prefix}dx"], records[f"{prefix}dy"], 2 * params.pad
        _flag(found, rows & ((dx > limit) | (dy > limit)),
              lambda r: f"view offset ({int(dx[r])}, {int(dy[r])}) outside [0, {limit}]")
        return
    box = records[f"{prefix}box"].astype(np.int64)
    boxed = rows & (box[:, 2] > 0)  # height 0: the evaluation image, no box
    _flag(found, boxed & (box[:, 3] == 0), lambda r: f"view box {box[r].tolist()} is empty")
    if raw_size is None:
        return
    indices = records[image].astype(np.int64)
    for row in np.flatnonzero(boxed & (box[:, 3] > 0) & (indices < params.images)):
        problem = view_box_problem(box[row], int(indices[row]), raw_size(int(indices[row])))
        if problem is not None:
            found.append((int(row), problem))


def _pixel_box_problems(found: list[Problem], params: ParamLayout, records: np.ndarray, rows: np.ndarray) -> None:
    """A Cutout or CutMix box ``[y0, y1, x0, x1]`` within the view image (the source's shape)."""
    if params.shape == (0, 0):
        return
    height, width = params.shape
    box = records["box"].astype(np.int64)
    inside = (box[:, 0] <= box[:, 1]) & (box[:, 1] <= height) & (box[:, 2] <= box[:, 3]) & (box[:, 3] <= width)
    _flag(found, rows & ~inside, lambda r: f"box {box[r].tolist()} outside the {height}×{width} image")


def _kind_problems(found: list[Problem], params: ParamLayout, kind: str, records: np.ndarray, rows: np.ndarray,
                   raw_size: RawSize | None) -> None:
    """The checks of the columns sampler ``kind`` uses, on its ``rows`` (the others hold zeros)."""
    if kind in PAIRED:
        views = [("aug_i_", "i"), ("aug_j_", "j")]
        lam = records["lam"]
        _flag(found, rows & ~_in_unit(lam), lambda r: f"lam {float(lam[r])} outside [0, 1]")
    else:
        views = [] if kind in UNSOURCED else [("aug_", "image")]
    for prefix, image in views:
        _image_problems(found, params, records, rows, image)
        _view_problems(found, params, records, rows, prefix, image, raw_size)
    if kind == "cutmix":
        drawn = records["lam_drawn"]
        _flag(found, rows & ~_in_unit(drawn), lambda r: f"lam_drawn {float(drawn[r])} outside [0, 1]")
    if kind in ("cutout", "cutmix"):
        _pixel_box_problems(found, params, records, rows)
    if kind == "views" and params.enumerated:
        view = records["view"]
        _flag(found, rows & (view >= params.views), lambda r: f"view {int(view[r])} beyond the {params.views} views")
    if kind == "noise":
        sigma = records["sigma"]
        _flag(found, rows & ~(np.isfinite(sigma) & (sigma >= 0)), lambda r: f"sigma {float(sigma[r])} is not ≥ 0")
    if kind == "gaussian_image":
        _gaussian_problems(found, records, rows)
    if kind == "autoaugment":
        _autoaugment_problems(found, records, rows)


def _gaussian_problems(found: list[Problem], records: np.ndarray, rows: np.ndarray) -> None:
    mean, std = records["mean"], records["std"]  # NaN-padded to three channels
    given = ~np.isnan(std)
    sound = given[:, 0] & np.all(np.isnan(mean) == ~given, axis=1) & np.all(
        ~given | (np.isfinite(mean) & np.isfinite(std) & (std > 0)), axis=1)
    _flag(found, rows & ~sound, lambda r: f"mean {mean[r].tolist()} / std {std[r].tolist()} are not finite "
                                          f"values (std > 0)")


def _autoaugment_problems(found: list[Problem], records: np.ndarray, rows: np.ndarray) -> None:
    policy, op, magnitude = records["policy"], records["op"].astype(np.int64), records["magnitude"]
    _flag(found, rows & (policy >= len(POLICIES)),
          lambda r: f"policy code {int(policy[r])} is not one of the {len(POLICIES)} policies")
    unknown = (op >= len(OPS)) & (op != NO_OP)
    _flag(found, rows & unknown.any(axis=1),
          lambda r: f"op code {int(op[r][unknown[r]][0])} is not one of the {len(OPS)} ops")
    _flag(found, rows & ~np.isfinite(magnitude).all(axis=1),
          lambda r: f"magnitudes {magnitude[r].tolist()} are not finite")


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
    _flag(found, codes >= len(kinds), lambda r: f"sampler {codes[r]} is not one of the set's {len(kinds)} kinds")
    for code, kind in enumerate(kinds):
        rows = codes == code
        if rows.any():
            _kind_problems(found, params, kind, records, rows, raw_size)
    if classes and records.dtype.names is not None and "label" in records.dtype.names:
        label = records["label"].astype(np.int64)
        _flag(found, (label < -1) | (label >= classes), lambda r: f"label {label[r]} is not one of {classes} classes")
    return sorted(found)


def first_problem(params: ParamLayout, records: np.ndarray, classes: int = 0) -> None:
    """Raise :class:`RecordError` for the first row :func:`record_problems` finds (the trainer's
    and ``decode_columns``' check: one bad record stops the shard, named by its row)."""
    found = record_problems(params, records, classes)
    if found:
        raise RecordError(*found[0])
