"""Which real images a stored sample is made from, read off its parameters.

Two floors ask: the trainer counts the distinct source images of each batch and of a run (how
random its batches are, how much of the split a student saw), and ``verify`` checks a replay
record's indices against the source's size. A sample names at most two images; the second
slot is −1 for a one-image sample, both are −1 for a sample made without a real image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PAIRED = frozenset({"mix", "mixup", "cutmix"})  # kinds that read two real images
UNSOURCED = frozenset({"gaussian_image", "gan"})  # kinds made without a real image
NO_IMAGE = -1


def source_indices(kind: str, params: dict[str, Any]) -> tuple[int, int]:
    """The real images of a sample of sampler ``kind`` with stored ``params``, as two slots."""
    if kind in PAIRED:
        return int(params["i"]), int(params["j"])
    if kind in UNSOURCED:
        return NO_IMAGE, NO_IMAGE
    return int(params["image"]), NO_IMAGE


def record_sources(kinds: Sequence[str], codes: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
    """:func:`source_indices` of many stored samples at once, int64 (N, 2): ``codes`` is each
    sample's position in ``kinds``, ``columns`` the ``image``, ``i`` and ``j`` columns it has."""
    out = np.full((len(codes), 2), NO_IMAGE, dtype=np.int64)
    for code, kind in enumerate(kinds):
        rows = codes == code
        if kind in PAIRED:
            out[rows, 0], out[rows, 1] = columns["i"][rows], columns["j"][rows]
        elif kind not in UNSOURCED:
            out[rows, 0] = columns["image"][rows]
    return out
