"""A student of the job config: its model, objective, sets, loss and training, its seeds and
its pruning recipes. Checked by its objective (:mod:`core.options.objective`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.options.objective import OBJECTIVES, TrainingObjective
from core.options.train import (
    SOURCE_SET,
    KDConfig,
    ModelConfig,
    PruneConfig,
    Strict,
    TrainConfig,
    check_recipes,
    no_label_loss,
    recipes_of,
)


class StudentConfig(Strict):
    """One student: ``erm`` on the real split, ``kd`` from transfer sets, or ``kd_online`` (the
    ensemble in the loop on fresh augmentations: the reference the offline sets are measured
    against). ``seeds`` trains one run per seed from the same cached sets."""

    model: ModelConfig = Field(description="the student's model")
    objective: Literal["erm", "kd", "kd_online"] = Field(
        description="erm (labels), kd (stored sets), kd_online (teachers in the loop)")
    sets: dict[str, float] = Field(
        {}, description="transfer sets and their weights; 'source' is the real training split")
    kd: KDConfig = Field(KDConfig(), description="the KD loss")
    train: TrainConfig = Field(description="the student's training")
    seeds: list[int] = Field([0], min_length=1, description="one run per seed; the report shows mean ± std")
    prune: list[PruneConfig] | None = Field(
        None, description="one recipe or a list: prune the trained model, fine-tune it (kd-orthogonality-ensemble §4)")

    @field_validator("prune", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict | PruneConfig) else value

    @property
    def objective_kind(self) -> TrainingObjective:
        """What this student's objective reads, needs and records."""
        return OBJECTIVES[self.objective]

    @model_validator(mode="after")
    def _objective_inputs(self) -> StudentConfig:
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        objective, recipes = self.objective_kind, recipes_of(self.prune)
        objective.check(self)
        objective.check_recipes(recipes)
        check_recipes(recipes, self.sets, SOURCE_SET)
        given = [name for name in ("kd", "sets") if getattr(self, name) != type(self).model_fields[name].default]
        if given and not objective.distils and not any(p != "erm" for r in recipes for p in r.then.objective):
            raise ValueError(f"{' and '.join(given)}: an {self.objective!r} student learns the real labels only, so "
                             f"{'they do' if len(given) > 1 else 'it does'} nothing; remove "
                             f"{'them' if len(given) > 1 else 'it'}, or use objective 'kd'")
        if not objective.label_loss and (why := no_label_loss(self.train, f"objective {self.objective!r}",
                                                              "use objective 'erm'")):
            raise ValueError(why)
        if self.train.randaugment is not None and not objective.reads_real(self.sets.get(SOURCE_SET, 0)):
            raise ValueError(f"train.randaugment augments the real images of the set {SOURCE_SET!r}, which this "
                             f"{self.objective!r} student does not read; add sets.{SOURCE_SET} with a weight or "
                             "drop it")
        if self.train.class_balanced and not objective.draws_labelled_real(self.sets.get(SOURCE_SET, 0)):
            raise ValueError(f"train.class_balanced draws the real images of the set {SOURCE_SET!r}, which this "
                             f"{self.objective!r} student does not read; add sets.{SOURCE_SET} with a weight "
                             "or drop it")
        return self
