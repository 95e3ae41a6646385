"""How many rows of each member (set, or the real split) a reader's k-th batch holds.

Fixed per-batch quotas instead of a weighted draw per row: member ``m`` of share ``p_m`` has
given ``⌊k·B·p_m + ½⌋`` rows to the reader's first ``k`` batches (the largest member takes what
the others leave, so a batch is always ``B`` rows). A batch then holds ⌊B·p_m⌋ or ⌈B·p_m⌉ rows
of each member — stratified, the lowest-variance mix — and, what resuming needs, the rows a
member has given so far are a closed-form function of ``k``: each member's position in its own
epoch order is known at any batch without replaying the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import UserError

__all__ = ["Quotas"]


class Quotas:
    """Rows per member in a reader's batches of ``batch`` rows, by the members' ``weights``."""

    def __init__(self, weights: Sequence[float], batch: int) -> None:
        total = float(sum(weights))
        if not weights or total <= 0 or min(weights) < 0:
            raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {list(weights)}")
        self.shares = np.asarray(weights, dtype=np.float64) / total
        self.batch = int(batch)
        self.largest = int(np.argmax(self.shares))
        others = np.delete(np.arange(len(self.shares)), self.largest)
        if len(others) and self.batch - np.ceil(self.batch * self.shares[others]).sum() < 1:
            raise UserError(f"a batch of {batch} rows cannot hold a row of each of {len(weights)} mixed sets "
                            f"at shares {np.round(self.shares, 3).tolist()}; raise train.batch_size")

    def given(self, k: int) -> np.ndarray:
        """Rows each member gave to batches ``0 … k − 1`` (int64, one per member)."""
        rows = np.floor(k * self.batch * self.shares + 0.5).astype(np.int64)
        rows[self.largest] = 0
        rows[self.largest] = k * self.batch - rows.sum()
        return rows

    def counts(self, k: int) -> np.ndarray:
        """Rows each member gives to batch ``k``."""
        return self.given(k + 1) - self.given(k)
