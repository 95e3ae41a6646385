"""One class per kind of stored classification target: dense float16 log-probabilities
(``logp``), the top-k record (``topk``) and the sampled-class record (``sampled``).

Each kind says, in one place, what a set with it stores: the tar member and the index's
``target`` entry, how a record is made from the ensemble's log p̄ and read back, what the
fingerprint holds of its options, what ``verify`` checks in a record, and how a replay record
holds it as one column of its row (``column_*``: a pixel set's member becomes the column, a row
gives the member back, a shard's column becomes the dense targets a trainer learns from).
Callers look the kind up (:func:`stored_target` by the config's ``targets.kind``,
:func:`stored_kind` by the index's ``target.kind``) instead of branching on its name. The numerics are in
:mod:`core.records.target_codec` and :mod:`core.records.sampled_target`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from core.errors import FormatError
from core.options.target import TargetConfig
from core.records import sampled_target as sampled
from core.records import target_codec as codec
from core.records.packed_target import PackedTopk

INDEX_DTYPE = "float16"  # log-probabilities are stored as float16 whatever the kind
CONSTANT = "classes"  # the field of a compact record that every row shares (a replay row leaves it out)
Dense = tuple[np.ndarray, np.ndarray | None]  # float32 (N, C) targets and, for sampled classes, weights


class StoredTarget:
    """A kind of stored classification target (the dense one; the compact kinds override)."""

    name: ClassVar[str] = "dense"  # the config's targets.kind
    kind: ClassVar[str] = "logp"  # index.json's target.kind, a replay record's column
    noun: ClassVar[str] = "dense"
    temperature_free: ClassVar[bool] = True  # False: drawn at the set's temperature, a kd student must use it
    truncates: ClassVar[bool] = False  # keeps only the largest log-probabilities (its KL to p̄ is a bias)
    compact: ClassVar[bool] = False  # a record smaller than C log-probabilities (classification only)
    logp_dtype: ClassVar[type] = codec.LOGP_DTYPE  # of the log p̄ a reader gets back

    @property
    def member(self) -> str:
        """The tar member a record of this kind lives in."""
        return f"{self.kind}.npy"

    def slots(self, targets: TargetConfig, classes: int) -> int:
        """The k a record of this kind holds for ``classes`` classes (0: all of them)."""
        return 0

    def record_dtype(self, slots: int, classes: int) -> np.dtype:
        """The dtype of one stored record (the dense kind: of each of its C entries)."""
        return np.dtype("<f2")

    def payload_bytes(self, slots: int, classes: int) -> int:
        """Bytes of target data per sample, without the .npy header and tar framing."""
        return 2 * classes

    def identity(self, targets: TargetConfig) -> Any:
        """What the stored targets depend on (the fingerprint's ``targets``)."""
        return "dense"

    def spec(self, targets: TargetConfig, classes: int) -> dict[str, Any]:
        """index.json's ``target`` entry."""
        return {"kind": self.kind, "dtype": INDEX_DTYPE, "temperature_free": self.temperature_free,
                "payload_bytes": self.payload_bytes(0, classes)}

    def encode(self, logp: np.ndarray, targets: TargetConfig, identity: tuple[int, int, int]) -> np.ndarray:
        """The record of one sample's log p̄ (``identity``: its seed, shard and candidate)."""
        return codec.quantize_logp(logp)

    def estimate(self, record: np.ndarray) -> np.ndarray:
        """log p̄ as a reader gets it back from ``record``."""
        return record

    def weights(self, record: np.ndarray) -> np.ndarray | None:
        """What a kd student learns from instead of log p̄, when not log p̄ itself."""
        return None

    def loss(self, logp: np.ndarray, record: np.ndarray) -> float | None:
        """KL(p̄ ‖ what the record gives back), for the manifest's ``target_kl``; None when exact."""
        return None

    def problems(self, raw: np.ndarray, k: int, uniform: float, classes: int) -> list[str]:
        """What is wrong with a decoded record of a set whose index gives ``k`` and ``uniform``."""
        return []

    # ---- as a replay record's column (core.records.replay), named by ``kind``

    def column_field(self, slots: int, classes: int) -> tuple[str, Any, tuple[int, ...]]:
        """The column's (name, dtype, shape) in a replay record."""
        return self.kind, "<f2", (classes,)

    def check_member(self, key: str, member: np.ndarray, slots: int, classes: int) -> None:
        """A sample's member must fit the set's records."""
        if member.dtype != self.record_dtype(slots, classes) or member.shape != (classes,):
            raise FormatError(f"sample {key}: target {member.dtype} {member.shape} does not fit the set's "
                              f"{self.kind} records")

    def store_column(self, out: np.ndarray, members: list[np.ndarray]) -> None:
        """Fill the column of ``out`` from each sample's member, in order."""
        out[self.kind] = np.stack(members)

    def member_of_row(self, row: Any, slots: int, classes: int) -> np.ndarray:
        """The member a pixel set's tar holds for the replay record ``row``."""
        return np.asarray(row[self.kind], dtype="<f2")

    def column_targets(self, column: np.ndarray, classes: int) -> Dense:
        """A shard's column as the dense targets (and weights) a trainer learns from."""
        return column.astype(np.float32), None


class _Compact(StoredTarget):
    """A structured record of k slots and the log of the remaining mass."""

    compact = True
    logp_dtype = np.float32

    def payload_bytes(self, slots: int, classes: int) -> int:
        return self.record_dtype(slots, classes).itemsize

    def loss(self, logp: np.ndarray, record: np.ndarray) -> float | None:
        return max(float(codec.kl_divergence(logp, self.estimate(record))), 0.0)

    def problems(self, raw: np.ndarray, k: int, uniform: float, classes: int) -> list[str]:
        if raw.dtype != self.record_dtype(k, classes):
            return [f"{self.member} is not a {self.noun} record of k={k} for {classes} classes"]
        return []

    def column_field(self, slots: int, classes: int) -> tuple[str, Any, tuple[int, ...]]:
        dtype = self.record_dtype(slots, classes)
        return self.kind, np.dtype([(n, dtype.fields[n][0]) for n in dtype.names if n != CONSTANT]), ()

    def check_member(self, key: str, member: np.ndarray, slots: int, classes: int) -> None:
        if member.dtype != self.record_dtype(slots, classes):
            raise FormatError(f"sample {key}: target {member.dtype} {member.shape} does not fit the set's "
                              f"{self.kind} records")

    def store_column(self, out: np.ndarray, members: list[np.ndarray]) -> None:
        stacked = np.concatenate([member.reshape(-1) for member in members])
        if len(stacked) != len(out):
            raise FormatError(f"{self.kind} targets hold {len(stacked)} records for {len(out)} samples")
        for name in out[self.kind].dtype.names:
            out[self.kind][name] = stacked[name]

    def member_of_row(self, row: Any, slots: int, classes: int) -> np.ndarray:
        member = np.zeros(1, dtype=self.record_dtype(slots, classes))  # a tar's member holds a one-record array
        for name in row[self.kind].dtype.names:
            member[name] = row[self.kind][name]
        member[CONSTANT] = classes
        return member


class TopK(_Compact):
    """The k largest log-probabilities, their classes and the log of the rest (temperature-free)."""

    name = kind = "topk"
    noun = "top-k"
    truncates = True

    def slots(self, targets: TargetConfig, classes: int) -> int:
        return min(targets.k, classes)

    def record_dtype(self, slots: int, classes: int) -> np.dtype:
        return codec.topk_dtype(slots, classes)

    def identity(self, targets: TargetConfig) -> Any:
        return {"kind": self.kind, "k": targets.k, **({"bits": targets.bits} if targets.bits else {})}

    def spec(self, targets: TargetConfig, classes: int) -> dict[str, Any]:
        k = self.slots(targets, classes)
        return {"kind": self.kind, "dtype": INDEX_DTYPE, "temperature_free": self.temperature_free, "k": k,
                "index_dtype": self.record_dtype(k, classes)["index"].base.name,
                "payload_bytes": self.payload_bytes(k, classes)}

    def encode(self, logp: np.ndarray, targets: TargetConfig, identity: tuple[int, int, int]) -> np.ndarray:
        if not targets.bits:
            return codec.compress_topk(logp, targets.k)
        classes = int(np.size(logp))
        grid = PackedTopk(classes, targets.k, targets.bits).quantised(np.reshape(logp, (1, classes)))
        record = np.zeros((), dtype=codec.topk_dtype(min(targets.k, classes), classes))
        for name, values in grid.items():
            record[name] = values[0]
        record["classes"] = classes
        return record

    def estimate(self, record: np.ndarray) -> np.ndarray:
        if record.dtype.names is None or set(record.dtype.names) != set(codec.topk_dtype(1, 2).names):
            raise FormatError(f"{self.member} has dtype {record.dtype}, not a top-k record")
        return codec.reconstruct_logp(record)

    def column_targets(self, column: np.ndarray, classes: int) -> Dense:
        return codec.reconstruct_logp_rows(column, classes), None


class Sampled(_Compact):
    """k classes drawn at the set's temperature with importance weights (not temperature-free)."""

    name = kind = "sampled"
    noun = "sampled-class"
    temperature_free = False

    def slots(self, targets: TargetConfig, classes: int) -> int:
        return targets.k

    def record_dtype(self, slots: int, classes: int) -> np.dtype:
        return sampled.sampled_dtype(slots, classes)

    def identity(self, targets: TargetConfig) -> Any:
        return {"kind": self.kind, "k": targets.k, "temperature": targets.draw_temperature,
                "uniform": targets.draw_uniform}

    def spec(self, targets: TargetConfig, classes: int) -> dict[str, Any]:
        record = self.record_dtype(targets.k, classes)
        return {"kind": self.kind, "dtype": INDEX_DTYPE, "temperature_free": self.temperature_free, "k": targets.k,
                "index_dtype": record["index"].base.name, "temperature": targets.draw_temperature,
                "uniform": targets.draw_uniform, "payload_bytes": record.itemsize}

    def encode(self, logp: np.ndarray, targets: TargetConfig, identity: tuple[int, int, int]) -> np.ndarray:
        return sampled.sample_target(logp, targets.k, targets.draw_temperature, targets.draw_uniform,
                                     sampled.target_rng(*identity))

    def estimate(self, record: np.ndarray) -> np.ndarray:
        return sampled.reconstruct_sampled(record)

    def weights(self, record: np.ndarray) -> np.ndarray | None:
        return sampled.dense_weights(record)

    def column_targets(self, column: np.ndarray, classes: int) -> Dense:
        return sampled.reconstruct_sampled_rows(column, classes), sampled.dense_weights_rows(column, classes)

    def problems(self, raw: np.ndarray, k: int, uniform: float, classes: int) -> list[str]:
        return super().problems(raw, k, uniform, classes) or [
            f"{self.member}: {p}" for p in sampled.record_problems(raw, k, uniform)]


DENSE = StoredTarget()
STORED_TARGETS: dict[str, StoredTarget] = {t.name: t for t in (DENSE, TopK(), Sampled())}
_BY_KIND = {t.kind: t for t in STORED_TARGETS.values()}


def stored_target(targets: TargetConfig) -> StoredTarget:
    """The kind of stored target a set's ``targets`` options ask for."""
    return STORED_TARGETS[targets.kind]


def stored_kind(kind: str | None) -> StoredTarget:
    """The kind of stored target an index's ``target.kind`` names (an index without one: dense)."""
    found = _BY_KIND.get(kind or DENSE.kind)
    if found is None:
        raise FormatError(f"target kind {kind!r} is not a classification target ({sorted(_BY_KIND)})")
    return found


def stored_in(fields: dict[str, bytes]) -> StoredTarget:
    """The kind of stored target whose member a record holds (dense when none is there)."""
    return next((t for t in STORED_TARGETS.values() if t.member in fields), DENSE)
