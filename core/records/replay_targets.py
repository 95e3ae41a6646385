"""The target column of a replay record, one class per stored target kind.

A pixel set's tar holds a sample's target as a ``.npy`` member: a float16 log-probability vector
(``logp``), or a one-record top-k or sampled-class array. A replay record holds the same values
in one column of its row; each class here knows its column's dtype, how the members a pixel set
would write become that column, how a row gives the member back, and how a shard's column
becomes the dense targets a trainer learns from. Registered by the config's ``targets.kind``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from core.errors import FormatError
from core.records.sampled_target import dense_weights_rows, reconstruct_sampled_rows, sampled_dtype
from core.records.target_codec import reconstruct_logp_rows, topk_dtype

CONSTANT = "classes"  # the field of a top-k or sampled record that every row shares
Dense = tuple[np.ndarray, np.ndarray | None]  # float32 (N, C) targets and, for sampled classes, weights


class TargetColumn:
    """Dense float16 log-probabilities over the classes: the member is the vector itself."""

    name: ClassVar[str] = "logp"
    member_name: ClassVar[str] = "logp.npy"  # the tar member a pixel set writes
    keeps_kl: ClassVar[bool] = False  # a compressed target records its KL to the teachers' p̄

    @staticmethod
    def slots(k: int, classes: int) -> int:
        """The k a layout keeps (0: every class)."""
        return 0

    def member_dtype(self, k: int, classes: int) -> np.dtype:
        return np.dtype("<f2")

    def field(self, k: int, classes: int) -> tuple[str, Any, tuple[int, ...]]:
        return self.name, "<f2", (classes,)

    def check(self, key: str, member: np.ndarray, k: int, classes: int) -> None:
        """A sample's member must fit the set's records."""
        if member.dtype != self.member_dtype(k, classes) or member.shape != (classes,):
            raise FormatError(f"sample {key}: target {member.dtype} {member.shape} does not fit the set's "
                              f"{self.name} records")

    def store(self, out: np.ndarray, targets: list[np.ndarray]) -> None:
        """Fill the column of ``out`` from each sample's member, in order."""
        out[self.name] = np.stack(targets)

    def member(self, row: Any, k: int, classes: int) -> np.ndarray:
        """The member a pixel set's tar holds for ``row``."""
        return np.asarray(row[self.name], dtype="<f2")

    def dense(self, column: np.ndarray, classes: int) -> Dense:
        return column.astype(np.float32), None


class RecordTargetColumn(TargetColumn):
    """A compressed target: a one-record array in the tar, its fields (without the constant
    class count, which the index has) in the row."""

    keeps_kl = True

    def field(self, k: int, classes: int) -> tuple[str, Any, tuple[int, ...]]:
        dtype = self.member_dtype(k, classes)
        return self.name, np.dtype([(n, dtype.fields[n][0]) for n in dtype.names if n != CONSTANT]), ()

    def check(self, key: str, member: np.ndarray, k: int, classes: int) -> None:
        if member.dtype != self.member_dtype(k, classes):
            raise FormatError(f"sample {key}: target {member.dtype} {member.shape} does not fit the set's "
                              f"{self.name} records")

    def store(self, out: np.ndarray, targets: list[np.ndarray]) -> None:
        stacked = np.concatenate([target.reshape(-1) for target in targets])
        if len(stacked) != len(out):
            raise FormatError(f"{self.name} targets hold {len(stacked)} records for {len(out)} samples")
        for name in out[self.name].dtype.names:
            out[self.name][name] = stacked[name]

    def member(self, row: Any, k: int, classes: int) -> np.ndarray:
        target = np.zeros(1, dtype=self.member_dtype(k, classes))  # a tar's member holds a one-record array
        for name in row[self.name].dtype.names:
            target[name] = row[self.name][name]
        target[CONSTANT] = classes
        return target


class TopkColumn(RecordTargetColumn):
    """The k largest log-probabilities, their classes and the log of the rest."""

    name, member_name = "topk", "topk.npy"

    @staticmethod
    def slots(k: int, classes: int) -> int:
        return min(int(k), classes)

    def member_dtype(self, k: int, classes: int) -> np.dtype:
        return topk_dtype(k, classes)

    def dense(self, column: np.ndarray, classes: int) -> Dense:
        return reconstruct_logp_rows(column, classes), None


class SampledColumn(RecordTargetColumn):
    """k classes drawn from the teachers, with their importance weights."""

    name, member_name = "sampled", "sampled.npy"

    @staticmethod
    def slots(k: int, classes: int) -> int:
        return int(k)

    def member_dtype(self, k: int, classes: int) -> np.dtype:
        return sampled_dtype(k, classes)

    def dense(self, column: np.ndarray, classes: int) -> Dense:
        return reconstruct_sampled_rows(column, classes), dense_weights_rows(column, classes)


# the config's targets.kind → its column
TARGET_COLUMNS: dict[str, TargetColumn] = {"dense": TargetColumn(), "topk": TopkColumn(), "sampled": SampledColumn()}
COLUMNS_BY_NAME: dict[str, TargetColumn] = {column.name: column for column in TARGET_COLUMNS.values()}
