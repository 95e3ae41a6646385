"""Replay columns the sampler kinds share: a real image's index and its view, and their checks.

A view is stored under a prefix (``aug_`` for one image, ``aug_i_`` / ``aug_j_`` for a pair):
``dx``, ``dy``, ``flip`` (uint8) for pad-and-crop views; ``box`` uint16 (4,) ``[top, left, h, w]``
and ``flip`` for random-resized-crop views, ``h = 0`` meaning the evaluation image. Image
indices are uint16 for sources up to 65 536 images, else uint32. The checks are column-wise (a
shard at once, a few numpy comparisons a column): the trainer runs them on every shard it decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.samplers.base import Params, Problem, ReplayField

if TYPE_CHECKING:
    from core.records.replay_params import ParamLayout

RawSize = Callable[[int], tuple[int, int]]  # real image i's (height, width) as stored


def index_dtype(count: int) -> str:
    """The narrowest unsigned dtype that indexes ``count`` items."""
    return "u2" if count <= 1 << 16 else "u4"


def view_fields(layout: ParamLayout, prefix: str) -> list[ReplayField]:
    if layout.box_views:
        return [(f"{prefix}box", "u2", (4,)), (f"{prefix}flip", "u1", ())]
    offset = "u1" if 2 * layout.pad <= 255 else "u2"
    return [(f"{prefix}dx", offset, ()), (f"{prefix}dy", offset, ()), (f"{prefix}flip", "u1", ())]


def put_view(layout: ParamLayout, row: dict[str, Any], prefix: str, aug: Params) -> None:
    if layout.box_views:
        row[f"{prefix}box"] = [0, 0, 0, 0] if "eval" in aug else [int(v) for v in aug["box"]]
    else:
        row[f"{prefix}dx"], row[f"{prefix}dy"] = int(aug["dx"]), int(aug["dy"])
    row[f"{prefix}flip"] = int(aug["flip"])


def get_view(layout: ParamLayout, row: Any, prefix: str) -> Params:
    flip = int(row[f"{prefix}flip"])
    if layout.box_views:
        box = [int(v) for v in row[f"{prefix}box"]]
        return {"eval": 1, "flip": flip} if box[2] == 0 else {"box": box, "flip": flip}
    return {"dx": int(row[f"{prefix}dx"]), "dy": int(row[f"{prefix}dy"]), "flip": flip}


# ---------------------------------------------------------------- checks


def flag(found: list[Problem], bad: np.ndarray, describe: Callable[[int], str]) -> None:
    found += [(int(row), describe(int(row))) for row in np.flatnonzero(bad)]


def in_unit(values: np.ndarray) -> np.ndarray:
    return (values >= 0.0) & (values <= 1.0)  # NaN fails both


def view_box_problem(box: Sequence[int], image: int, size: tuple[int, int]) -> str | None:
    """A random-resized-crop box ``[top, left, height, width]`` that does not lie within image
    ``image`` of ``size`` (height, width); None when it does."""
    top, left, height, width = (int(v) for v in box)
    if height > 0 and width > 0 and top + height <= size[0] and left + width <= size[1]:
        return None
    return f"view box {[top, left, height, width]} outside image {image} ({size[0]}×{size[1]})"


def image_problems(found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                   name: str) -> None:
    values = records[name].astype(np.int64)
    flag(found, rows & (values >= layout.images),
         lambda r: f"real image {values[r]} outside the source's {layout.images} images")


def view_problems(found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray,
                  prefix: str, image: str, raw_size: RawSize | None) -> None:
    """The stored view of column ``image``: offsets within [0, 2·pad], or a box within its image."""
    flip = records[f"{prefix}flip"]
    flag(found, rows & (flip > 1), lambda r: f"flip {int(flip[r])} is neither 0 nor 1")
    if not layout.box_views:
        dx, dy, limit = records[f"{prefix}dx"], records[f"{prefix}dy"], 2 * layout.pad
        flag(found, rows & ((dx > limit) | (dy > limit)),
             lambda r: f"view offset ({int(dx[r])}, {int(dy[r])}) outside [0, {limit}]")
        return
    box = records[f"{prefix}box"].astype(np.int64)
    boxed = rows & (box[:, 2] > 0)  # height 0: the evaluation image, no box
    flag(found, boxed & (box[:, 3] == 0), lambda r: f"view box {box[r].tolist()} is empty")
    if raw_size is None:
        return
    indices = records[image].astype(np.int64)
    for row in np.flatnonzero(boxed & (box[:, 3] > 0) & (indices < layout.images)):
        problem = view_box_problem(box[row], int(indices[row]), raw_size(int(indices[row])))
        if problem is not None:
            found.append((int(row), problem))


def pixel_box_problems(found: list[Problem], layout: ParamLayout, records: np.ndarray, rows: np.ndarray) -> None:
    """A Cutout or CutMix box ``[y0, y1, x0, x1]`` within the view image (the source's shape)."""
    if layout.shape == (0, 0):
        return
    height, width = layout.shape
    box = records["box"].astype(np.int64)
    inside = (box[:, 0] <= box[:, 1]) & (box[:, 1] <= height) & (box[:, 2] <= box[:, 3]) & (box[:, 3] <= width)
    flag(found, rows & ~inside, lambda r: f"box {box[r].tolist()} outside the {height}×{width} image")
