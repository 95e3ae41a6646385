"""Sources of many classes made from the bundled digits: a number of ``width`` digits side by
side is one class (10**width classes), each digit an image of that digit from one split.

Three digits give 1 000 classes of 8×24 images: a CPU-sized stand-in for ImageNet's class count
whose teachers still learn peaked distributions (a triple is right when its three digits are),
so a top-10 of 1 000 stores what it stores on real data: a few plausible numbers and a long tail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digit_numbers(out: Path, width: int, train: int, test: int, seed: int = 0) -> Path:
    """An ``.npz`` source (``images``, ``labels``, ``test_*``, ``classes``) of ``width``-digit
    numbers: uint8 (N, 8, 8·width, 1) images; every number equally often in each split."""
    from core.config import SourceConfig
    from core.sources import load_source

    path = out / f"digit_numbers_{width}_{train}_{test}_{seed}.npz"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    classes = 10 ** width
    arrays: dict[str, np.ndarray] = {}
    for split, prefix, count in (("train", "", train), ("test", "test_", test)):
        source = load_source(SourceConfig(kind="digits"), split)
        images, labels = source.images(), source.labels
        by_digit = [np.flatnonzero(labels == d) for d in range(10)]
        numbers = rng.permutation(np.arange(count) % classes)
        places = [(numbers // 10 ** (width - 1 - p)) % 10 for p in range(width)]
        picked = [np.array([rng.choice(by_digit[d]) for d in digits]) for digits in places]
        arrays[f"{prefix}images"] = np.concatenate([images[p] for p in picked], axis=2)
        arrays[f"{prefix}labels"] = numbers
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays, classes=np.array([f"{c:0{width}d}" for c in range(classes)]))
    return path
