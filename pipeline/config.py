"""The job config: a YAML file validated by pydantic, with ``--set key=value`` overrides.

Every section is strict (unknown keys are errors) so a typo never silently falls back to a
default. Problems surface as one :class:`UserError` line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(Strict):
    """Where real images come from. ``digits`` ships with scikit-learn; ``imagefolder`` is
    a directory with ``train/<class>/*`` and ``test/<class>/*``."""

    kind: Literal["digits", "imagefolder"]
    path: str | None = None
    train_dir: str = "train"
    test_dir: str = "test"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    pad: int | None = Field(None, ge=0, description="random-crop padding; default per source")
    flip: bool | None = Field(None, description="horizontal flips; default per source")

    @model_validator(mode="after")
    def _path_for_folders(self) -> SourceConfig:
        if self.kind == "imagefolder" and not self.path:
            raise ValueError("source.kind 'imagefolder' needs source.path")
        return self


class ModelConfig(Strict):
    arch: str
    arch_kwargs: dict[str, Any] = {}


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


class TeachersConfig(Strict):
    model: ModelConfig
    members: int = Field(4, ge=1)
    train: TrainConfig
    checkpoints: list[str] | None = Field(
        None, description="existing checkpoint files to use instead of training the ensemble"
    )
    parallel: Literal["auto", "ray", "off"] = Field(
        "auto", description="train members as parallel Ray tasks (auto: when the CPUs allow two at once)")
    cpus_per_member: float = Field(1.0, gt=0)


class SamplerConfig(Strict):
    kind: Literal["views", "mix"]
    views: int = Field(8, ge=1, description="views: images per real sample (view 0 = the image)")
    augment: bool = Field(True, description="mix: standard augmentation of each partner first")


class SetConfig(Strict):
    sampler: SamplerConfig
    samples: int | None = Field(None, gt=0, description="mix: samples to draw; views: derived")
    samples_per_shard: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _samples_for_random_sets(self) -> SetConfig:
        if self.sampler.kind == "mix" and self.samples is None:
            raise ValueError("a 'mix' set needs samples")
        return self


class TeacherStageConfig(Strict):
    """Resources of the teacher actor pool. Fractional ``num_cpus`` leaves room for the read and
    write stages on small machines."""

    batch_size: int = Field(512, gt=0)
    actors: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, description="torch threads per actor (fixed for determinism)")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RayConfig(Strict):
    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    stall_timeout_s: float = Field(600.0, gt=0)


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


# The student set name that means "the real training split" (labels, no teacher targets).
SOURCE_SET = "source"


class StudentConfig(Strict):
    model: ModelConfig
    objective: Literal["erm", "kd"]
    sets: dict[str, float] = {}
    kd: KDConfig = KDConfig()
    train: TrainConfig

    @model_validator(mode="after")
    def _sets_for_kd(self) -> StudentConfig:
        if self.objective == "kd":
            if not self.sets:
                raise ValueError("a 'kd' student needs sets: {name: weight}")
            if any(w < 0 for w in self.sets.values()) or sum(self.sets.values()) <= 0:
                raise ValueError("set weights must be >= 0 and sum to more than 0")
            if set(self.sets) == {SOURCE_SET}:
                raise ValueError(f"a 'kd' student needs a transfer set besides {SOURCE_SET!r}")
            if self.sets.get(SOURCE_SET, 0) > 0 and self.kd.alpha >= 1:
                raise ValueError(f"set {SOURCE_SET!r} carries labels only, which kd.alpha = 1 ignores; "
                                 f"lower kd.alpha or drop it")
        return self


class ReportConfig(Strict):
    baseline: str = "kd"
    compare: list[str] = []


class Config(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    seed: int = 0
    source: SourceConfig
    teachers: TeachersConfig
    teacher_stage: TeacherStageConfig = TeacherStageConfig()
    ray: RayConfig = RayConfig()
    sets: dict[str, SetConfig] = {}
    students: dict[str, StudentConfig] = {}
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name in self.sets:
            if name == SOURCE_SET:
                raise ValueError(f"set name {SOURCE_SET!r} is reserved for the real training split")
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"set name {name!r} must be letters, digits, '_' or '-'")
        for student_name, student in self.students.items():
            for set_name in student.sets:
                if set_name not in self.sets and set_name != SOURCE_SET:
                    raise ValueError(
                        f"students.{student_name}.sets names {set_name!r}, not one of {sorted(self.sets)}"
                    )
        named = [self.report.baseline, *self.report.compare] if self.report.compare else []
        for name in named:
            if name not in self.students:
                raise ValueError(f"report names student {name!r}, not one of {sorted(self.students)}")
        return self


# ---------------------------------------------------------------- loading


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML (``3``, ``true``)."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise UserError(f"--set {assignment!r}: expected key=value, e.g. --set teachers.members=2")
    keys = path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node, dict):
            raise UserError(f"--set {path}: {'.'.join(keys[:depth])} is not a section")
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        raise UserError(f"--set {path}: {'.'.join(keys[:-1])} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"--set {path}: value {text!r} is not valid YAML ({err.problem})") from err


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def parse_config(raw: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{origin}: {describe_validation_error(err)}") from err


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    # YAML anchors alias one dict in several places; unshare them so an override touches one.
    raw = json.loads(json.dumps(raw, default=str))
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return parse_config(raw, origin=f"config {path}")
