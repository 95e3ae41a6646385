"""The training sections of the job config: model, optimisation, the KD loss, the students.

Split from :mod:`core.config` (which re-exports every name) so each file stays readable;
the trainer's options live here, the job's stages there.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Every config section: an unknown key is an error, never a silently ignored typo."""

    model_config = ConfigDict(extra="forbid")


# The built-in architectures (core.models.REGISTRY is keyed by these): named here so a config
# is checked without importing torch.
ARCH_NAMES = ("tiny_cnn", "resnet_cifar", "lenet", "preact_resnet")
# Models of the ecosystem, named ``<library>:<model>`` (timm names may carry a ``.tag``).
LIBRARY_PREFIXES = ("timm:", "torchvision:")
ARCH_NAME = re.compile(r"^(torchvision:[A-Za-z_][A-Za-z0-9_]*|timm:[A-Za-z0-9_][\w.-]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
# The KD temperature a student uses unless told otherwise (also the draw temperature of a sampled target).
DEFAULT_KD_TEMPERATURE = 4.0


def check_arch(arch: str) -> str:
    """A built-in name, ``timm:NAME``, ``torchvision:NAME`` or ``module:factory`` (not yet imported)."""
    if arch not in ARCH_NAMES and not ARCH_NAME.match(arch):
        raise ValueError(f"not a built-in architecture {list(ARCH_NAMES)}, timm:NAME, torchvision:NAME "
                         "or module:factory")
    return arch


def factory_of(arch: str) -> str | None:
    """The ``module:factory`` an arch names (code the config allows to run), if any."""
    return arch if ":" in arch and not arch.startswith(LIBRARY_PREFIXES) else None


class ModelConfig(Strict):
    arch: str = Field(description="a built-in name, timm:NAME, torchvision:NAME, or module:factory "
                                  "(code the config names)")
    arch_kwargs: dict[str, Any] = Field({}, description="keyword arguments of the arch's constructor")
    logvar: Literal["isotropic", "diagonal"] = Field(
        "isotropic", description="regression heads: one log σ² per sample (XCL supplement A.1) or one per dimension")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return check_arch(arch)

    @property
    def factory(self) -> str | None:
        """The ``module:factory`` this section names (code the config allows to run), if any."""
        return factory_of(self.arch)


class SelfGuidanceConfig(Strict):
    """Self-Guidance (self-guidance.txt eq 5): per step a full pass (teacher) and a sampled
    sub-network pass (student) of a stochastic-depth model; loss = base(S) + base(T) +
    weight·τ²·KL(p_T ‖ p_S), where base is CE (ERM) or the KD loss."""

    weight: float = Field(0.25, gt=0, description="λ of eq 5")
    temperature: float = Field(3.0, gt=0, description="temperature of the self-guidance KL")


class RandAugmentConfig(Strict):
    """RandAugment (torchvision's ``RandAugment``) on the real split's training views, after the
    crop and flip: ``num_ops`` ops per image at magnitude bin ``magnitude`` of ``magnitude_bins``."""

    num_ops: int = Field(2, ge=1, description="ops per image")
    magnitude: int = Field(9, ge=0, description="magnitude bin")
    magnitude_bins: int = Field(31, ge=2, description="number of magnitude bins")

    @model_validator(mode="after")
    def _bins(self) -> RandAugmentConfig:
        if self.magnitude >= self.magnitude_bins:
            raise ValueError(f"randaugment.magnitude {self.magnitude} must be below magnitude_bins "
                             f"{self.magnitude_bins}")
        return self


RENAMED_TRAIN_OPTIONS = {
    "shuffle_buffer": "sets are read in epochs shuffled in windows of several shards; use shuffle_window (rows)",
    "epoch_steps": "every set and the real split run through their own epochs; drop it "
                   "(checkpoint_steps sets how often a resumable state is written)",
    "checkpoint_epochs": "a run resumes at any step; use checkpoint_steps",
}


class TrainConfig(Strict):
    steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int = Field(128, gt=0, description="samples per step")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (momentum) or adam")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, or Adam's β1")
    nesterov: bool = Field(True, description="SGD: Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    schedule: Literal["cosine", "constant", "multistep"] = Field(
        "cosine", description="learning-rate schedule after the warm-up")
    milestones: list[float] = Field([0.5, 0.75], description="multistep: fractions of steps where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: lr factor at each milestone")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradient norm to this (default: no clipping)")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(
        True, description="NHWC memory format for model and inputs (a ResNet-8 trains 1.2–1.5× faster on CPU)")
    cutmix: float = Field(0.0, ge=0, le=1, description="ERM: probability of CutMix per batch")
    mixup: float = Field(0.0, ge=0, le=1, description="ERM: probability of MixUp per batch")
    mix_alpha: float = Field(1.0, gt=0, description="ERM: λ ~ Beta(mix_alpha, mix_alpha)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="ERM: ε of XCL supplement eq 1")
    regression_loss: Literal["nll", "mse"] = Field(
        "nll", description="ERM on a regression source: Gaussian NLL (XCL eq 5) or MSE of μ")
    class_balanced: bool = Field(False, description="real images drawn ∝ 1/class population (XCL §6.2)")
    randaugment: RandAugmentConfig | None = Field(
        None, description="RandAugment on the real split's training views (ERM, teachers, source share, kd_online)")
    self_guidance: SelfGuidanceConfig | None = Field(
        None, description="Self-Guidance loss (needs a stochastic-depth model)")
    checkpoint_steps: int = Field(500, ge=1, description="steps between resumable train states (any step resumes)")
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0 = at the end")
    num_workers: int = Field(1, ge=0, description="DataLoader workers reading shards and the real split")
    threads: int = Field(0, ge=0, description="torch threads of the trainer; 0 = the cores the loader leaves")
    shuffle_window: int | None = Field(
        None, ge=1, description="rows of a set shuffled together per reader (several shards open at once); "
                                "default: as many as fit in cache_mb, at most 16 384")
    batches_per_transfer: int = Field(
        0, ge=0, description="batches per worker→trainer transfer; 0 = up to 32 batches within 16 MiB")
    cache_mb: float = Field(1024, ge=0, description="decoded shards kept in memory per reader")
    on_bad_shard: Literal["error", "skip"] = Field(
        "error", description="a damaged shard: stop with one line (error) or skip and count it")
    tensorboard: bool = Field(False, description="also write TensorBoard event files")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        """Options of the old stream (a shuffle buffer, epoch segments) name their successors."""
        if isinstance(raw, dict):
            for old, hint in RENAMED_TRAIN_OPTIONS.items():
                if old in raw:
                    raise ValueError(f"train.{old} is gone: {hint}")
        return raw

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError("milestones must be increasing fractions of the steps, each in (0, 1)")
        if self.cutmix + self.mixup > 1:
            raise ValueError("cutmix + mixup probabilities must not exceed 1")
        return self


# Options that shape ERM's real-label loss (augmenting the labelled batch, smoothing its labels, the
# regression ERM loss). A distilling objective's loss is its kd section: there they would do nothing.
LABEL_LOSS_OPTIONS = ("cutmix", "mixup", "mix_alpha", "label_smoothing", "regression_loss")


def label_loss_options(train: TrainConfig) -> list[str]:
    """``train.NAME`` for each ERM-loss option ``train`` sets away from its default."""
    return [f"train.{name}" for name in LABEL_LOSS_OPTIONS
            if getattr(train, name) != TrainConfig.model_fields[name].default]


def no_label_loss(train: TrainConfig, what: str, hint: str) -> str | None:
    """Why ``train`` cannot be given to ``what`` (a run with no real-label loss), or None."""
    used = label_loss_options(train)
    if not used:
        return None
    return (f"{', '.join(used)} shape{'s' if len(used) == 1 else ''} ERM's real-label loss, which {what} does not "
            f"have (its loss is the kd section); remove {'it' if len(used) == 1 else 'them'} or {hint}")


class PickConfig(Strict):
    """TLCutMix+pick (seed 004 §3.2): train on the B hardest of ratio×B candidates."""

    ratio: float = Field(2.0, gt=1, description="candidates drawn per batch slot")
    criterion: Literal["kl", "teacher_entropy", "student_entropy"] = Field(
        "kl", description="how candidates are ranked: student-teacher KL or an entropy")


class KDConfig(Strict):
    """Hinton KD per sample: (1 − alpha)·CE on real labels + alpha·τ²·KL(teacher_τ ‖ student_τ).
    Samples without a real label (mixes) get the KL term only; alpha = 1 is pure distillation."""

    temperature: float = Field(DEFAULT_KD_TEMPERATURE, gt=0, description="KD temperature τ")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KL term; 1 − alpha weighs CE")
    pick: PickConfig | None = Field(None, description="train on the hardest of ratio×B candidates (Pick)")
    regression_loss: Literal["gaussian_kl", "mse"] = Field(
        "gaussian_kl", description="regression sets: KL between Gaussians (XCL eq 6) or MSE to the teacher's μ")
    online_mix: float = Field(
        0.0, ge=0, lt=1, description="kd_online: share of each batch made XCL-Mix pairs of fresh augmented images")


# Sightings per stored view past which a KD student is warned (Beyer et al.: students overfit
# precomputed teacher targets; ml-dr stores as many views as epochs so each is seen about once).
DEFAULT_VIEWS_SEEN_WARNING = 100.0


class StudentStageConfig(Strict):
    """Where the student runs (student × seed) train: as parallel Ray tasks of ``cpus_per_run``
    CPUs when at least two fit (``auto``), always on Ray (``ray``), or one after the other in the
    driver (``off``)."""

    parallel: Literal["auto", "ray", "off"] = Field(
        "auto", description="student runs as parallel Ray tasks: auto (when two fit), ray, off")
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs per student run when runs are parallel")
    views_seen_warning: float = Field(
        DEFAULT_VIEWS_SEEN_WARNING, gt=0,
        description="warn when a KD student will see each stored view of a set more often than this (steps × batch "
                    "× the set's share ÷ its samples): store more views, e.g. as replay")

    @field_validator("parallel", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false


# The student set name that means "the real training split" (labels, no teacher targets).
SOURCE_SET = "source"


# ---------------------------------------------------------------- pruning (kd-orthogonality-ensemble §4)
# A student's own objective is its pre-training (erm: scratch, kd: Pre-Distill); each recipe prunes
# that model and fine-tunes it once per phase of then.objective: erm (CE: Finetuned / Pre-Distill),
# kd (KD from the sets: Post-Distill / Pre-Post) or self_distill (KD from a set the unpruned student
# labels). The trainer never sees this section, only the plain values the chain takes from it.
PruneMethod = Literal["l1", "slimming", "magnitude"]
# Fine-tuning phases and what they are called in the paper's tables, by the pre-training.
PHASES: dict[str, str] = {"erm": "CE fine-tuning", "kd": "KD from the student's sets",
                          "self_distill": "KD from the unpruned student"}


class FinetuneConfig(Strict):
    """The fine-tuning of a pruned model: one run per phase, from the same pruned checkpoint."""

    objective: list[str] = Field(description="phases: erm (CE), kd (the sets' teachers), self_distill (the "
                                             "unpruned student as the one teacher of the same samplers)")
    sets: dict[str, float] = Field({}, description="kd / self_distill: sets and weights (default: the student's)")
    kd: KDConfig | None = Field(None, description="default: the student's kd section")
    train: TrainConfig = Field(description="training of the pruned student")

    @field_validator("objective", mode="before")
    @classmethod
    def _phases(cls, value: Any) -> Any:
        phases = [value] if isinstance(value, str) else value
        if not isinstance(phases, list) or not phases:
            raise ValueError(f"give one phase or a list of them: {list(PHASES)}")
        for phase in phases:
            if phase not in PHASES:
                raise ValueError(f"unknown phase {phase!r}; the phases are "
                                 + ", ".join(f"{name} ({what})" for name, what in PHASES.items()))
        if len(set(phases)) != len(phases):
            raise ValueError(f"phases {phases} name one twice")
        return phases


class PruneConfig(Strict):
    """One pruning recipe: ``l1`` (Li et al.: per-stage fractions of the filters with the smallest
    L1 norm), ``slimming`` (Liu et al.: an L1 penalty ``slimming_l1`` on the batch-norm scales
    during pre-training, then a global threshold removing the fraction ``amount`` of them) or
    ``magnitude`` (Han et al.: the fraction ``amount`` of each convolution's weights set to zero;
    the final linear layer kept dense). Structured methods remove the channels physically."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", description="default: the method")
    method: PruneMethod = Field(description="l1 (filter norms), slimming (BN scales) or magnitude")
    ratios: list[float] | None = Field(None, description="l1: the fraction of filters removed in each stage "
                                                         "(one value: every stage)")
    amount: float | None = Field(None, description="slimming: the global fraction of channels removed; "
                                                   "magnitude: the fraction of each convolution's weights zeroed")
    slimming_l1: float = Field(0.0, ge=0, description="slimming: λ of the L1 penalty on BN scales in pre-training")
    then: FinetuneConfig = Field(description="the fine-tuning after pruning")

    @model_validator(mode="after")
    def _method_options(self) -> PruneConfig:
        if self.method == "l1":
            if not self.ratios or self.amount is not None:
                raise ValueError("method 'l1' takes ratios (one per stage), not amount")
            for ratio in self.ratios:
                if not 0 <= ratio < 1:
                    raise ValueError(f"ratio {ratio:g}: a stage's fraction of filters removed must be in [0, 1)")
        else:
            if self.amount is None or self.ratios is not None:
                raise ValueError(f"method {self.method!r} takes amount, not ratios")
            if not 0 <= self.amount < 1:
                raise ValueError(f"amount {self.amount:g}: the fraction removed must be in [0, 1)")
        if self.slimming_l1 and self.method != "slimming":
            raise ValueError(f"slimming_l1 is the penalty of method 'slimming', not {self.method!r}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.method

    def identity(self) -> dict[str, Any]:
        """What the pruned model depends on (its fine-tuning aside)."""
        return self.model_dump(mode="json", exclude={"then", "name"})


def recipes_of(prune: PruneConfig | list[PruneConfig] | None) -> list[PruneConfig]:
    """A student's recipes, one or a list (none: not pruned)."""
    if prune is None:
        return []
    return [prune] if isinstance(prune, PruneConfig) else list(prune)


def check_recipes(recipes: list[PruneConfig], sets: dict[str, float], transfer: str) -> float:
    """Recipes of one student checked together; returns the pre-training's slimming penalty.
    ``transfer`` names the reserved real-split set (a student's recipes share its pre-training)."""
    labels = [recipe.label for recipe in recipes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"prune: recipes {labels} share a name; give each a distinct name")
    penalties = {recipe.slimming_l1 for recipe in recipes}
    if len(penalties) > 1:
        raise ValueError(f"prune: the recipes share one pre-training, so one slimming_l1 (got {sorted(penalties)}); "
                         "make a student per penalty")
    for recipe in recipes:
        given = recipe.then.sets or sets
        if any(p != "erm" for p in recipe.then.objective) and not any(n != transfer for n in given):
            raise ValueError(f"prune {recipe.label}: phases kd and self_distill need a transfer set: give then.sets")
        if "erm" not in recipe.then.objective and (why := no_label_loss(
                recipe.then.train, f"phase {' / '.join(recipe.then.objective)}", "add the phase erm")):
            raise ValueError(f"prune {recipe.label}: then.{why}")
    return penalties.pop() if penalties else 0.0
