"""Which real images a stored sample is made from, read off its parameters.

Two floors ask: the trainer counts the distinct source images of each batch and of a run (how
random its batches are, how much of the split a student saw), and ``verify`` checks a replay
record's indices against the source's size. A sample names at most two images; the second
slot is −1 for a one-image sample, both are −1 for a sample made without a real image.
"""

from __future__ import annotations

from typing import Any

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
