"""``gan``: XCL-GAN, samples of a class-conditional generator with mixed class vectors (XCL §4.2).

``draw``: generator classes i, j uniform over the configured ``classes``, λ ~ U[0, 1] (one-hot
e_i, λ = 1, with ``mix_classes: false``: the Table 8 ablation) and a z seed; ``class_i`` /
``class_j`` record the teacher classes the generator was asked for (``class_map``; −1 where a
generator class has no teacher class). The images are made in batches by the generator stage
(``stages.samplers.generating``), not one by one, so ``gan`` has no ``apply`` and no replay
columns: its samples are stored as pixels. Their options are resolved at plan time (the class
list, the class map as indices, the truncation: ``stages.samplers.generating.resolve_gan``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from core.options.generator import GeneratorConfig
from core.samplers.base import Params, Raw, Sampler, SamplerOptions, draw_seed

if TYPE_CHECKING:
    from core.sources import Source


class GanOptions(SamplerOptions):
    kind: Literal["gan"] = Field(description="the sampler")
    generator: GeneratorConfig | None = Field(None, description="gan: the class-conditional generator")
    classes: list[int] | None = Field(
        None, description="gan: generator classes to draw i, j from (default: class_map's keys, else all)")
    class_map: dict[int, int | str] | None = Field(
        None, description="gan: generator class → teacher class (index or name), where the label spaces differ")
    mix_classes: bool = Field(True, description="gan: λ·e_i + (1−λ)·e_j, λ ~ U[0, 1]; false: one-hot e_i")

    @model_validator(mode="after")
    def _generator_and_classes(self) -> GanOptions:
        if self.generator is None:
            raise ValueError("sampler 'gan' needs generator: {kind: biggan | pca | factory, ...}")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError("gan: classes must list generator classes, each once")
        return self

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        if self.generator is not None:
            identity["generator"] = self.generator.identity()
        return identity

    def generator_of(self) -> GeneratorConfig | None:
        return self.generator


class Gan(Sampler):
    kind = "gan"
    options = GanOptions
    generated = True

    def draw(self, options: Any, source: Source, rng: np.random.Generator) -> Params:
        if options.generator is None or options.classes is None or options.generator.truncation is None:
            raise ValueError("gan: draw needs a resolved sampler (resolve_gan fills classes and truncation)")
        classes = options.classes
        i = classes[int(rng.integers(0, len(classes)))]
        j, lam = (classes[int(rng.integers(0, len(classes)))], float(rng.uniform(0.0, 1.0))) \
            if options.mix_classes else (i, 1.0)
        mapped = options.class_map or {}
        return {"z_seed": draw_seed(rng), "truncation": options.generator.truncation, "i": i, "j": j, "lam": lam,
                "class_i": int(mapped.get(i, -1)), "class_j": int(mapped.get(j, -1))}

    def apply(self, params: Params, source: Source, raw: Raw | None = None) -> np.ndarray:
        raise ValueError("gan samples are made in batches by their generator: use "
                         "stages.samplers.generating.generate_images(generator config, params, source)")
