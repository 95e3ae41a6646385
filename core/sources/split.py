"""The stratified train/test split and scikit-learn's digits, without importing scikit-learn.

Importing ``sklearn`` costs about 2 s of CPU (it pulls in scipy.stats and more), and every
process that opens a digits or npz source paid it: the driver, and each Ray worker that draws
samples. The split is scikit-learn's ``train_test_split(..., stratify=labels,
random_state=seed)`` step for step (``StratifiedShuffleSplit._iter_indices`` and
``_approximate_mode`` of scikit-learn 1.x: the same RandomState calls in the same order), so
every existing set keeps its bytes; ``tests/test_sources.py`` checks it index for index against
scikit-learn itself. The digits are read from the CSV that scikit-learn ships, as
``load_digits`` reads it.
"""

from __future__ import annotations

import gzip
import importlib.util
from math import ceil
from pathlib import Path

import numpy as np

from core.errors import UserError


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``labels``, as ``train_test_split`` returns them (unsorted)."""
    n_samples = len(labels)
    n_test = ceil(test_fraction * n_samples)
    n_train = n_samples - n_test
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min(initial=2) < 2:
        raise UserError(f"{where}: classes {classes[counts < 2].tolist()} have one image each; a stratified split "
                        "needs two of every class (add images, or give test_images)")
    if min(n_train, n_test) < len(classes):
        raise UserError(f"{where}: a split of {n_samples} images at test_fraction {test_fraction} leaves fewer "
                        f"images than the {len(classes)} classes on one side; change source.test_fraction")
    class_indices = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(members[: train_counts[i]])
        test.extend(members[train_counts[i]: train_counts[i] + test_counts[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Draws per class: the floored proportional share, the rest to the largest remainders
    (ties broken by ``rng``) — scikit-learn's ``utils.extmath._approximate_mode``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (indices,) = np.where(remainder == value)
            add_now = min(len(indices), need_to_add)
            floored[rng.choice(indices, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def digits_file() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing the package."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("source.kind: digits needs scikit-learn installed (its bundled digits); "
                        "pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 0..16 of shape (1797, 8, 8), labels int64), as ``sklearn.datasets.load_digits``."""
    with gzip.open(digits_file(), mode="rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
