"""The ``targets`` section of a set: how its teacher targets are stored (dense, top-k, sampled
classes; regression sets: the dtype of μ and log σ²). Split from :mod:`core.config` (which
re-exports it) so each file stays readable."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.options.train import DEFAULT_KD_TEMPERATURE, Strict

# The options that only some kinds of stored target take, by kind (the others refuse them).
KIND_OPTIONS: dict[str, tuple[str, ...]] = {"dense": (), "topk": ("bits",), "sampled": ("temperature", "uniform")}


class TargetConfig(Strict):
    """How targets are stored: dense float16 log-probabilities; the top-k log-probabilities with
    their class indices and the log of the remaining mass (both temperature-free); or k classes
    drawn from the teacher at ``temperature`` with importance weights (``sampled``: an unbiased
    KD target for students at that temperature, core/records/sampled_target.py)."""

    kind: Literal["dense", "topk", "sampled"] = Field(
        "dense", description="dense log-probabilities, the top k, or k sampled classes")
    k: int = Field(10, ge=1, le=65535, description="topk: classes kept; sampled: classes drawn per sample")
    temperature: float | None = Field(
        None, gt=0, description=f"sampled: the temperature the classes are drawn at (default "
                                f"{DEFAULT_KD_TEMPERATURE:g}, the default kd.temperature); a kd student must "
                                f"train at this temperature")
    uniform: float | None = Field(
        None, ge=0, lt=1, description="sampled: share of the uniform distribution in the proposal the classes "
                                      "are drawn from (default 0: from the teacher alone)")
    bits: int | None = Field(
        None, ge=4, le=12, description="topk: each log-probability below the first on a grid of 2^bits steps "
                                       "over 16 nats, the tail on its own (default: float16 values); what a "
                                       "packed record stores (core/records/packed_target.py)")
    dtype: Literal["float16", "float32"] | None = Field(
        None, description="regression sets: dtype of the stored μ and log σ² (default float32); "
                          "classification log-probabilities are always float16")

    @model_validator(mode="after")
    def _options_of_kind(self) -> TargetConfig:
        own = KIND_OPTIONS[self.kind]
        stray = [name for names in KIND_OPTIONS.values() for name in names
                 if name not in own and getattr(self, name) is not None]
        if stray:
            owner = next(kind for kind, names in KIND_OPTIONS.items() if stray[0] in names)
            raise ValueError(f"{', '.join(stray)}: only for kind '{owner}' (remove it, or set kind: {owner})")
        return self

    @property
    def draw_temperature(self) -> float:
        """The temperature a sampled target is drawn at."""
        return DEFAULT_KD_TEMPERATURE if self.temperature is None else float(self.temperature)

    @property
    def draw_uniform(self) -> float:
        """The uniform share of a sampled target's proposal."""
        return 0.0 if self.uniform is None else float(self.uniform)

    @property
    def student_temperature(self) -> float | None:
        """The temperature a kd student must train at: the one its targets were drawn at (a
        sampled target is unbiased only there); None for temperature-free targets."""
        return self.draw_temperature if "temperature" in KIND_OPTIONS[self.kind] else None
