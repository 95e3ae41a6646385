"""The teacher stage's output as plain numpy arrays (no torch), so the shard writer and the
Ray write step can handle it without importing torch (it costs seconds per worker process)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FIELDS = ("logp", "entropy", "disagreement", "argmax", "valid")


@dataclass(frozen=True)
class EnsembleOutput:
    """Per-sample targets of a batch. Rows where ``valid`` is False must never be written."""

    logp: np.ndarray  # float32 (N, C): log of the ensemble-mean probabilities
    entropy: np.ndarray  # float32 (N,): normalised entropy of p̄, in [0, 1]
    disagreement: np.ndarray  # float32 (N,): normalised mutual information, in [0, 1]
    argmax: np.ndarray  # int64 (N,)
    valid: np.ndarray  # bool (N,): False where any member output was NaN/Inf

    def __len__(self) -> int:
        return len(self.valid)

    @staticmethod
    def concat(parts: Sequence[EnsembleOutput], num_classes: int) -> EnsembleOutput:
        if not parts:
            return EnsembleOutput(
                np.zeros((0, num_classes), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                np.zeros(0, np.int64), np.zeros(0, bool),
            )
        return EnsembleOutput(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))
