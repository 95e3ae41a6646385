"""The ``teachers`` section of the job config, and its teachers brought from elsewhere:
``teachers.models: [{arch, weights, input?}]``.

Split from :mod:`core.config` (which re-exports the names). Each entry is imported into the
project's self-describing checkpoint (``pipeline/generate/teacher_import.py``); its input contract comes
from the library (timm's ``pretrained_cfg``, torchvision's weights meta) unless ``input`` says
otherwise, field by field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.options.train import ModelConfig, Strict, TrainConfig, check_arch, factory_of

PRETRAINED = "pretrained"  # ``weights: pretrained`` or ``pretrained:<tag>``: the library's own weights


class InputContractConfig(Strict):
    """How a model must be fed, overriding the published contract one field at a time."""

    size: int | list[int] | None = Field(None, description="input side, or [height, width]")
    channels: int | None = Field(None, ge=1, description="input channels (default: the published, else 3)")
    mean: list[float] | None = Field(None, min_length=1, description="per-channel mean of the [0, 1] pixels")
    std: list[float] | None = Field(None, min_length=1, description="per-channel std (> 0)")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description="resampling of the resize to the teacher's input")
    crop_pct: float | None = Field(None, gt=0, le=1, description="eval: center crop of this fraction (timm's)")

    @field_validator("size")
    @classmethod
    def _size(cls, size: int | list[int] | None) -> int | list[int] | None:
        sides = [size] if isinstance(size, int) else size or []
        if size is not None and (len(sides) not in (1, 2) or min(sides) < 1):
            raise ValueError("size is a positive side or [height, width]")
        return size

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and min(std) <= 0:
            raise ValueError("std values must be > 0")
        return std

    def given(self) -> dict[str, Any]:
        """The fields set, in the checkpoint's terms (``size`` as [height, width])."""
        fields = self.model_dump(exclude_none=True)
        if "size" in fields:
            side = fields["size"]
            fields["size"] = [side, side] if isinstance(side, int) else list(side) * (2 // len(side))
        return fields


class TeacherModelConfig(Strict):
    """One member to import: an architecture and its weights (a local path or fsspec URL of a
    state dict, a timm/torchvision checkpoint or a ``.safetensors`` file; or ``pretrained`` /
    ``pretrained:<tag>``, the library's weights, which needs internet on this machine)."""

    arch: str = Field(description="timm:NAME, torchvision:NAME, a built-in name, or module:factory")
    weights: str = Field(min_length=1, description="a checkpoint file (.pt/.pth/.safetensors) or a zoo weights name")
    arch_kwargs: dict[str, Any] = Field({}, description="keyword arguments of the arch's constructor")
    input: InputContractConfig | None = Field(None, description="the input contract, overriding the published one")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return check_arch(arch)

    @model_validator(mode="after")
    def _pretrained_needs_a_library(self) -> TeacherModelConfig:
        if self.pretrained_tag is not None and not self.arch.startswith(("timm:", "torchvision:")):
            raise ValueError(f"weights {self.weights!r}: pretrained weights come from timm or torchvision; "
                             f"arch {self.arch!r} needs a weights file")
        return self

    @property
    def pretrained_tag(self) -> str | None:
        """None for a weights file; '' for the library's default pretrained weights, else the tag."""
        head, sep, tag = self.weights.partition(":")
        if head != PRETRAINED:
            return None
        return tag if sep else ""

    @property
    def factory(self) -> str | None:
        return factory_of(self.arch)


class TeachersConfig(Strict):
    """The ensemble, one of three ways: trained here (``model``, ``members``, ``train``), existing
    transferset checkpoints (``checkpoints``), or weights made elsewhere, imported (``models``)."""

    model: ModelConfig | None = Field(None, description="the members' model (trained here)")
    members: int = Field(4, ge=1, description="ensemble size (trained here)")
    train: TrainConfig | None = Field(None, description="the members' training (trained here)")
    checkpoints: list[str] | None = Field(
        None, description="existing checkpoint files to use instead of training the ensemble"
    )
    models: list[TeacherModelConfig] | None = Field(
        None, description="members to import: [{arch, weights, input?, arch_kwargs?}] (timm, torchvision, ...)")
    parallel: Literal["auto", "ray", "off"] = Field(
        "auto", description="train members as parallel Ray tasks (auto: when the CPUs allow two at once)")
    cpus_per_member: float = Field(1.0, gt=0, description="CPUs per member when members train as parallel Ray tasks")

    @field_validator("parallel", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _one_way(self) -> TeachersConfig:
        if self.models is not None:
            if not self.models:
                raise ValueError("teachers.models is empty; list the members to import")
            if self.checkpoints is not None:
                raise ValueError("give teachers.models (weights to import) or teachers.checkpoints, not both")
            training = sorted({"model", "train", "members"} & self.model_fields_set)
            if training:
                raise ValueError(f"teachers.models imports its members; drop {training} (they train an ensemble)")
        elif self.checkpoints is None and (self.model is None or self.train is None):
            raise ValueError("teachers needs model and train (to train the ensemble), checkpoints (transferset "
                             "checkpoints) or models (weights to import)")
        return self

    def archs(self) -> list[str]:
        """Every architecture this section names."""
        return [m.arch for m in ([self.model] if self.model else []) + list(self.models or [])]
