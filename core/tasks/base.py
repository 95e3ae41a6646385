"""The interface every kind of transfer set implements (:class:`Task`); see :mod:`core.tasks`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made: reading a set (verify, gc, inspect) needs none
    import torch

from core.config import KDConfig, ModelConfig, SetConfig, TargetConfig, TrainConfig
from core.options.objective import TrainingObjective
from core.records.format import Sample

Record = dict[str, Any]  # a decoded sample: image, meta, target (the stream's row), label, and the task's own fields


class Task(ABC):
    """What one kind of transfer set (classification, regression, …) is: its records, manifest,
    index, statistics, ensemble targets, checkpoint heads and what its students may be asked.

    ``outputs`` is always "what the teachers predict": the number of classes, or the dimension D
    of a regression target. ``width`` is the number of values a sample carries in the stream's
    ``target`` slot (C log-probabilities, or μ and log σ²: 2·D).
    """

    name: ClassVar[str]  # "classify" | "regress": index.json's and a checkpoint's ``task``
    headline: ClassVar[str]  # the result key a trained model is judged by ("accuracy" | "error")
    members: ClassVar[tuple[str, ...]]  # tar members of which every record of this kind has one
    manifest_columns: ClassVar[tuple[str, ...]]
    report_keys: ClassVar[tuple[str, ...]]  # result keys a report averages over a student's seeds
    result_keys: ClassVar[tuple[str, ...]]  # keys of the last evaluation that result.json keeps
    outputs_noun: ClassVar[str]  # what ``outputs`` counts, in an error message

    def __str__(self) -> str:
        return self.name

    # ------------------------------------------------------------ the job's outputs

    @abstractmethod
    def outputs(self, source: Any) -> int:
        """What the teachers of a job on ``source`` predict (classes, or target dimension)."""

    def width(self, outputs: int) -> int:
        """Values per sample in the stream's target slot."""
        return outputs

    @abstractmethod
    def index_outputs(self, classes: Sequence[str], outputs: int) -> dict[str, Any]:
        """The index.json fields that say what the set's targets predict (``task`` included)."""

    @abstractmethod
    def outputs_of_index(self, num_classes: int | None, classes: Sequence[str] | None,
                         out_dim: int | None) -> int:
        """``outputs`` read back from an index's fields (0 when the index does not say)."""

    @abstractmethod
    def missing_outputs(self) -> str:
        """What a reader says about an index that does not give ``outputs``."""

    def check_source(self, source: Any, cfg: Any) -> None:
        """Refuse source options (``SourceConfig``) that have no meaning for this kind."""
        return None

    # ------------------------------------------------------------ planning a set

    @abstractmethod
    def resolve_targets(self, set_cfg: SetConfig) -> SetConfig:
        """The set's target options resolved for this kind (refusing those it cannot store)."""

    @abstractmethod
    def target_spec(self, targets: TargetConfig, outputs: int) -> dict[str, Any]:
        """index.json's description of the stored targets."""

    @abstractmethod
    def statistics(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """index.json's ``statistics`` from the manifest rows."""

    # ------------------------------------------------------------ labelling (the teacher stage)

    def member_row(self, output: torch.Tensor, outputs: int) -> torch.Tensor:
        """One member's raw output ``[N, *]`` as a row of ``width`` values, so members stack."""
        return output

    @abstractmethod
    def combine(self, member_outputs: torch.Tensor, outputs: int) -> Any:
        """The ensemble's targets (numpy arrays, one row per sample, with ``valid``) from the
        stacked member rows ``[M, N, width]``."""

    @abstractmethod
    def uncertainty(self, output: Any, by: str) -> np.ndarray:
        """The score ``select`` ranks candidates by (``by``: entropy | disagreement)."""

    @abstractmethod
    def real_labels(self, images: Sequence[int | None], source: Any) -> np.ndarray:
        """The real label of each candidate: ``images[n]`` is the real image a label-preserving
        sample shows, None for mixes and synthetic images."""

    @abstractmethod
    def labelled(self, key: str, image: np.ndarray, meta: dict[str, Any], output: Any, candidate: int,
                 label: Any, targets: TargetConfig, *, identity: tuple[int, int, int]) -> Sample:
        """The record of candidate ``candidate``: its target and statistics from ``output``.
        ``identity`` is ``(seed, shard, candidate)``: the seed of anything random in the target
        (a sampled-class draw)."""

    # ------------------------------------------------------------ records

    @abstractmethod
    def decode(self, fields: dict[str, bytes]) -> Record:
        """A record of this kind from its raw tar members (no pickle)."""

    @abstractmethod
    def manifest_row(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A sample's manifest row, derived from its stored metadata."""

    # ------------------------------------------------------------ models

    @abstractmethod
    def checkpoint_outputs(self, num_classes: int, head: dict[str, int] | None) -> dict[str, int]:
        """The fields of a checkpoint that say what its model predicts."""

    @abstractmethod
    def model_width(self, payload: dict[str, Any]) -> int:
        """Width of a checkpoint's last layer."""

    @abstractmethod
    def check_checkpoint(self, path: Any, payload: dict[str, Any], outputs: int | None) -> None:
        """Refuse a checkpoint whose head does not fit ``outputs`` (None: any)."""

    @abstractmethod
    def head(self, model_cfg: ModelConfig, source: Any) -> dict[str, int]:
        """A new model's head for ``source``: what its checkpoint will say it predicts."""

    def head_width(self, head: dict[str, int]) -> int:
        """Width of the last layer of a model with ``head``."""
        return sum(head.values())

    # ------------------------------------------------------------ students

    def check_student(self, name: str, objective: TrainingObjective, train_cfg: TrainConfig, kd_cfg: KDConfig | None,
                      real_weight: float) -> None:
        """Refuse options this kind does not define, before anything is written."""
        return None

    def score(self, result: dict[str, Any]) -> str:
        """A trained model's headline for a progress line."""
        return f"{self.headline} {result[self.headline]:.4f}"


def significant(value: float) -> float:
    """A statistic for the JSON metadata: 6 significant digits (no pretended float64 precision)."""
    return float(f"{float(value):.6g}")


def row_start(meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest columns every kind of set starts with: key, shard, index, sampler, λ."""
    lam = meta.get("params", {}).get("lam")
    return {"key": meta["key"], "shard": int(meta["shard"]), "index": int(meta["index"]),
            "sampler": meta["sampler"], "lam": float("nan") if lam is None else float(lam)}


def per_sampler(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Samples per sampler kind (index.json's ``statistics.per_sampler``)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["sampler"]] = counts.get(row["sampler"], 0) + 1
    return counts
