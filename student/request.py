"""What one training run is asked to make: the model, its objective and training, what it
learns from and where it goes. :func:`student.train.train_model` takes one of these and the splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.config import SOURCE_SET, KDConfig, ModelConfig, TrainConfig
from core.options.objective import TrainingObjective, objective_named
from core.options.train import DEFAULT_VIEWS_SEEN_WARNING
from student.pruning.shaping import Shaping


@dataclass(frozen=True)
class TrainRequest:
    """One model to train. ``sets`` are set directories and weights (the name ``source`` stands
    for the real split) that the ``kd`` objective reads; ``teachers`` the checkpoints that
    ``kd_online`` runs in the loop; ``factories`` the ``module:factory`` archs the job allows;
    ``shaping`` makes it a pruned student's run; a KD run warns when it will see each stored view
    more than ``views_seen_warning`` times (None: never)."""

    name: str
    model: ModelConfig
    train: TrainConfig
    out_dir: Path
    seed: int
    objective: str = "erm"
    kd: KDConfig | None = None
    sets: list[tuple[str, float]] = field(default_factory=list)
    teachers: list[str | Path] | None = None
    factories: Sequence[str] = ()
    shaping: Shaping | None = None
    views_seen_warning: float | None = DEFAULT_VIEWS_SEEN_WARNING

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        # The registry's own string (an unknown name is refused here): the checkpoint's pickle
        # memoizes strings by identity, so a name read from JSON would change its bytes.
        object.__setattr__(self, "objective", objective_named(self.objective).name)

    @property
    def objective_kind(self) -> TrainingObjective:
        """The objective: what the run reads, needs and records (an unknown name is refused here)."""
        return objective_named(self.objective)

    @property
    def transfer_sets(self) -> list[tuple[str, float]]:
        """The stored sets among ``sets``: (directory, weight)."""
        return [(d, w) for d, w in self.sets if d != SOURCE_SET]

    @property
    def real_weight(self) -> float:
        """The weight of the real split among ``sets`` (the reserved set name ``source``)."""
        return sum(w for d, w in self.sets if d == SOURCE_SET)
