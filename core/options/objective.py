"""What a student learns from, one class per objective: ``erm`` (the real split's labels), ``kd``
(stored transfer sets) and ``kd_online`` (the teachers in the loop on fresh augmentations).

Each class says what its runs read, which config sections they need, how the config is checked
for it, how an epoch is counted and what a run's spec and checkpoint record of it. The config,
the trainer and the pipeline ask it instead of comparing names; the losses themselves are built
in :mod:`student.tasks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import UserError
from core.options.train import SOURCE_SET, KDConfig, PruneConfig, TrainConfig

if TYPE_CHECKING:
    from core.options.student import StudentConfig


class TrainingObjective:
    """The objective every run has: ERM on the real split, no teachers, no kd section."""

    name: ClassVar[str]
    reads_sets: ClassVar[bool] = False  # the run trains on stored transfer sets
    teachers_in_loop: ClassVar[bool] = False  # the run loads the ensemble's checkpoints and labels each batch
    distils: ClassVar[bool] = False  # the run learns the teachers' targets, its loss set by the kd section
    label_loss: ClassVar[bool] = True  # the run's loss is CE (or ERM's regression loss) on real labels

    def reads_real(self, real_weight: float) -> bool:
        """Whether the run reads the real training split (``real_weight``: the weight of set ``source``)."""
        return True

    def draws_labelled_real(self, real_weight: float) -> bool:
        """Whether the run draws real images for their labels (what ``train.class_balanced`` reweights)."""
        return True

    def epoch_samples(self, real: int, stored: list[int]) -> int:
        """The samples of one epoch: the real split's, or the transfer sets' (``stored``)."""
        return real

    def check(self, student: StudentConfig) -> None:
        """Refuse a student config this objective cannot train (a ``ValueError`` for pydantic)."""
        if student.kd.online_mix:
            raise ValueError("kd.online_mix is for objective 'kd_online'; a 'kd' student mixes stored sets by weight")

    def check_recipes(self, recipes: list[PruneConfig]) -> None:
        """Refuse pruning recipes where this objective cannot pre-train a pruned student."""

    def kd_record(self, kd: KDConfig | None) -> dict[str, Any] | None:
        """The kd section as a run's spec and checkpoint record it (None: the run has no kd loss)."""
        return kd.model_dump() if self.distils and kd is not None else None

    def teachers_record(self, teachers: list[Any] | None) -> list[str]:
        """The teachers' checkpoints as a run's spec records them (those in the loop only)."""
        return [str(t) for t in teachers or []] if self.teachers_in_loop else []

    def regression_loss(self, train: TrainConfig, kd: KDConfig) -> str:
        """The loss a regression student of this objective minimises."""
        return train.regression_loss

    def regression_method(self, train: TrainConfig, kd: KDConfig) -> str:
        """How a regression student learned, in the words of XCL Table 3's rows."""
        mixes = [name for name in ("mixup", "cutmix") if getattr(train, name) > 0]
        return "+".join([f"erm {train.regression_loss}", *mixes])


class ERM(TrainingObjective):
    name = "erm"


class KD(TrainingObjective):
    """Distillation from stored transfer sets, the real split beside them where set ``source`` has a weight."""

    name = "kd"
    reads_sets = True
    distils = True
    label_loss = False  # (1 − alpha)·CE on labelled rows, plain: no smoothing, no mixing

    def reads_real(self, real_weight: float) -> bool:
        return real_weight > 0

    def draws_labelled_real(self, real_weight: float) -> bool:
        return real_weight > 0

    def epoch_samples(self, real: int, stored: list[int]) -> int:
        return sum(stored)

    def check(self, student: StudentConfig) -> None:
        super().check(student)
        if not student.sets:
            raise ValueError("a 'kd' student needs sets: {name: weight}")
        if any(w < 0 for w in student.sets.values()) or sum(student.sets.values()) <= 0:
            raise ValueError("set weights must be >= 0 and sum to more than 0")
        if set(student.sets) == {SOURCE_SET}:
            raise ValueError(f"a 'kd' student needs a transfer set besides {SOURCE_SET!r}")
        if student.sets.get(SOURCE_SET, 0) > 0 and student.kd.alpha >= 1:
            raise ValueError(f"set {SOURCE_SET!r} carries labels only, which kd.alpha = 1 ignores; "
                             f"lower kd.alpha or drop it")

    def regression_loss(self, train: TrainConfig, kd: KDConfig) -> str:
        return kd.regression_loss

    def regression_method(self, train: TrainConfig, kd: KDConfig) -> str:
        return f"kd {kd.regression_loss}"


class OnlineKD(KD):
    """The ensemble in the loop on fresh augmentations of the real split: the reference the
    offline sets are measured against."""

    name = "kd_online"
    reads_sets = False
    teachers_in_loop = True

    def reads_real(self, real_weight: float) -> bool:
        return True

    def draws_labelled_real(self, real_weight: float) -> bool:
        return False  # the teachers label every image

    def epoch_samples(self, real: int, stored: list[int]) -> int:
        return real

    def check(self, student: StudentConfig) -> None:
        if student.sets:
            raise ValueError("a 'kd_online' student reads the real split with the teachers in the loop; "
                             "drop its sets")

    def check_recipes(self, recipes: list[PruneConfig]) -> None:
        if recipes:
            raise ValueError("prune: a pruned student is pre-trained by objective erm or kd")


OBJECTIVES: dict[str, TrainingObjective] = {cls.name: cls() for cls in (ERM, KD, OnlineKD)}


def objective_named(name: str) -> TrainingObjective:
    """The objective called ``name``; a name the config schema would have refused is a user error."""
    if name not in OBJECTIVES:
        names = [repr(n) for n in OBJECTIVES]
        raise UserError(f"objective {name!r}: expected {', '.join(names[:-1])} or {names[-1]}")
    return OBJECTIVES[name]
