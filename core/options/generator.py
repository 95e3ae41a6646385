"""The config of ``gan`` samplers: which generator, and where generator actors run.

Split from :mod:`core.config` (which re-exports both classes) to keep modules small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from core.options.train import Strict


@dataclass(frozen=True)
class GeneratorKind:
    """What the config of one kind of generator takes (its loading is in stages/samplers/generating.py)."""

    options: tuple[str, ...]  # the options only this kind reads (besides kind, truncation, batch_size, ...)
    needs: tuple[str, str] | None = None  # an option it cannot do without, and what to give it
    truncation: float = 1.0  # the truncation when the config gives none
    located_by: str | None = None  # the option saying where its weights lie: not identity once sha256 pins them


GENERATOR_KINDS: dict[str, GeneratorKind] = {
    "biggan": GeneratorKind(("weights",), needs=("weights", "a pretrained name (biggan-deep-128) or a directory"),
                            truncation=0.4, located_by="weights"),
    "pca": GeneratorKind(("rank",)),
    "factory": GeneratorKind(("factory", "kwargs"), needs=("factory", "module:function")),
}


class GeneratorConfig(Strict):
    """The class-conditional generator G(z, class_vector) → images in [−1, 1] of a ``gan`` sampler.

    ``biggan``: pytorch-pretrained-biggan ``weights`` by pretrained name (``biggan-deep-128/256/512``,
    downloaded where there is internet) or a local directory (``config.json`` + ``pytorch_model.bin``).
    ``pca``: a per-class linear-Gaussian model of ``rank`` axes, fitted on the source's training
    split in each worker (seconds on a CPU). ``factory``: a ``module:factory`` this config names,
    called with ``kwargs``, returning a module with ``z_dim``, ``num_classes`` and
    ``forward(z, class_vectors)``.

    ``batch_size`` and ``autocast`` belong to the set's identity, not to the stage: every forward
    pass has exactly ``batch_size`` rows (the last one padded), so a sample's pixels do not depend
    on its neighbours, but another shape or precision may round a pixel differently.
    """

    kind: Literal["biggan", "pca", "factory"] = Field(
        description="biggan (pretrained weights), pca (fitted on the source), factory (your module)")
    weights: str | None = Field(None, description="biggan: a pretrained name or a local directory")
    rank: int = Field(16, ge=1, description="pca: principal axes per class (= z_dim)")
    factory: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:factory")
    kwargs: dict[str, Any] = Field({}, description="factory: keyword arguments")
    truncation: float | None = Field(
        None, gt=0, le=1, description="z = truncation · N(0, 1) cut at ±2; default 0.4 for biggan, 1 otherwise")
    batch_size: int = Field(64, ge=1, description="rows of every generator forward pass")
    autocast: Literal["none", "bf16", "fp16"] = Field("none", description="generator precision on CUDA")
    sha256: str | None = Field(None, description="digest of the weights: filled by the plan; set it to pin them")

    @model_validator(mode="after")
    def _options_of_kind(self) -> GeneratorConfig:
        own = self.of_kind.options
        stray = sorted(name for kind in GENERATOR_KINDS.values() for name in kind.options
                       if name not in own and getattr(self, name) != type(self).model_fields[name].default)
        if stray:
            raise ValueError(f"generator {self.kind!r} does not take {stray}; it takes {list(own)}")
        needs = self.of_kind.needs
        if needs is not None and not getattr(self, needs[0]):
            raise ValueError(f"generator {self.kind!r} needs {needs[0]}: {needs[1]}")
        return self

    @property
    def of_kind(self) -> GeneratorKind:
        return GENERATOR_KINDS[self.kind]

    def resolved_truncation(self) -> float:
        return self.truncation if self.truncation is not None else self.of_kind.truncation

    def identity(self) -> dict[str, Any]:
        """What the generated pixels depend on: not where the weights lie once their digest is known."""
        dump = self.model_dump(mode="json")
        if self.sha256 is not None and self.of_kind.located_by is not None:
            dump.pop(self.of_kind.located_by)
        return dump


class GeneratorStageConfig(Strict):
    """Where the ``gan`` samplers' generators run (resources only: they never change the bytes).

    Unfused (default): a pool of ``actors`` generator actors feeds the teacher actors; a shard's
    generated images cross the object store once, as uint8. ``fuse: true``: each teacher actor
    also holds the generator and runs it with the teacher stage's device and threads, so a
    generated shard goes to the teachers without leaving the device (see docs/ARCHITECTURE.md for
    when that pays off); ``actors``, ``num_cpus``, ``num_gpus``, ``threads`` and ``device`` here
    are then unused.
    """

    fuse: bool = Field(False, description="run the generator inside each teacher actor")
    actors: int = Field(1, ge=1, description="size of the generator actor pool (unfused)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per generator actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per generator actor (fractions share a GPU)")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: max(1, num_cpus))")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the actor has a GPU, else cpu")

    @model_validator(mode="after")
    def _gpu_for_cuda(self) -> GeneratorStageConfig:
        if self.device == "cuda" and not self.num_gpus and not self.fuse:
            raise ValueError("device is 'cuda' but num_gpus is 0, so Ray gives the generator actors no GPU; "
                             "set num_gpus (e.g. 1) or device 'auto'")
        return self

    def torch_threads(self) -> int:
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))
