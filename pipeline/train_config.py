"""The training sections of the job config: model, optimisation and the KD loss.

Split from :mod:`pipeline.config` (which re-exports every name) so each file stays readable;
the trainer's options live here, the job's stages there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Every config section: an unknown key is an error, never a silently ignored typo."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    arch: str
    arch_kwargs: dict[str, Any] = {}
    logvar: Literal["isotropic", "diagonal"] = Field(
        "isotropic", description="regression heads: one log σ² per sample (XCL supplement A.1) or one per dimension")


class SelfGuidanceConfig(Strict):
    """Self-Guidance (self-guidance.txt eq 5): per step a full pass (teacher) and a sampled
    sub-network pass (student) of a stochastic-depth model; loss = base(S) + base(T) +
    weight·τ²·KL(p_T ‖ p_S), where base is CE (ERM) or the KD loss."""

    weight: float = Field(0.25, gt=0, description="λ of eq 5")
    temperature: float = Field(3.0, gt=0)


class TrainConfig(Strict):
    steps: int = Field(gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, or Adam's β1")
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant", "multistep"] = "cosine"
    milestones: list[float] = Field([0.5, 0.75], description="multistep: fractions of steps where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    clip_grad_norm: float | None = Field(None, gt=0)
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    cutmix: float = Field(0.0, ge=0, le=1, description="ERM: probability of CutMix per batch")
    mixup: float = Field(0.0, ge=0, le=1, description="ERM: probability of MixUp per batch")
    mix_alpha: float = Field(1.0, gt=0, description="ERM: λ ~ Beta(mix_alpha, mix_alpha)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="ERM: ε of XCL supplement eq 1")
    regression_loss: Literal["nll", "mse"] = Field(
        "nll", description="ERM on a regression source: Gaussian NLL (XCL eq 5) or MSE of μ")
    class_balanced: bool = Field(False, description="real images drawn ∝ 1/class population (XCL §6.2)")
    self_guidance: SelfGuidanceConfig | None = None
    epoch_steps: int | None = Field(None, gt=0, description="steps per epoch; default one pass over the data")
    checkpoint_epochs: int = Field(1, ge=1, description="epochs between resumable train states")
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0 = at the end")
    num_workers: int = Field(1, ge=0)
    threads: int = Field(0, ge=0, description="torch threads of the trainer; 0 = the cores the loader leaves")
    shuffle_buffer: int = Field(2000, ge=1)
    batches_per_transfer: int = Field(
        0, ge=0, description="batches per worker→trainer transfer; 0 = up to 32 batches within 16 MiB")
    cache_mb: float = Field(1024, ge=0, description="decoded shards kept in memory per reader")
    on_bad_shard: Literal["error", "skip"] = "error"
    tensorboard: bool = False

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError("milestones must be increasing fractions of the steps, each in (0, 1)")
        if self.cutmix + self.mixup > 1:
            raise ValueError("cutmix + mixup probabilities must not exceed 1")
        return self


class PickConfig(Strict):
    """TLCutMix+pick (seed 004 §3.2): train on the B hardest of ratio×B candidates."""

    ratio: float = Field(2.0, gt=1)
    criterion: Literal["kl", "teacher_entropy", "student_entropy"] = "kl"


class KDConfig(Strict):
    """Hinton KD per sample: (1 − alpha)·CE on real labels + alpha·τ²·KL(teacher_τ ‖ student_τ).
    Samples without a real label (mixes) get the KL term only; alpha = 1 is pure distillation."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KL term; 1 − alpha weighs CE")
    pick: PickConfig | None = None
    regression_loss: Literal["gaussian_kl", "mse"] = Field(
        "gaussian_kl", description="regression sets: KL between Gaussians (XCL eq 6) or MSE to the teacher's μ")
