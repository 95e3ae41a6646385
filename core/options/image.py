"""The image sections of the job config: the image contract (``image``) and how a set stores its
images (``store``). Split from :mod:`core.config`, which re-exports both."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from core.options.train import Strict


class ImageConfig(Strict):
    """The job's image contract (``core.options.image_contract``): every stored image, and every image a
    model is trained or evaluated on, has ``size``, whatever the size of the source's images.

    ``views`` is how a real image becomes a training view: ``resize_crop`` (the short side resized
    to the size, the centre kept, then the source's pad-and-crop and flip: the behaviour without a
    contract) or ``random_resized_crop`` (torchvision's semantics: ``scale`` of the area, ``ratio``
    of the aspect, then a flip). Evaluation takes the central ``crop_pct`` of the short side
    (timm's resize + centre crop; default 1.0 for resize_crop, 0.875 for random_resized_crop).
    """

    size: int | tuple[int, int] = Field(description="height and width of every image (one int: a square)")
    views: Literal["resize_crop", "random_resized_crop"] = Field(
        "resize_crop", description="how training views are drawn: resize_crop (pad-and-crop) or random_resized_crop")
    scale: tuple[float, float] = Field((0.08, 1.0), description="random_resized_crop: range of the box's area")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random_resized_crop: range of its aspect ratio")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="resampling of every resize")
    crop_pct: float | None = Field(None, gt=0, le=1, description="evaluation: share of the short side kept")

    @model_validator(mode="after")
    def _ranges(self) -> ImageConfig:
        if min(self.hw) < 1:
            raise ValueError(f"image.size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"image.scale must be 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"image.ratio must be 0 < low <= high, got {list(self.ratio)}")
        return self

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    @property
    def eval_crop_pct(self) -> float:
        if self.crop_pct is not None:
            return self.crop_pct
        return 0.875 if self.views == "random_resized_crop" else 1.0


UNUSED_KEYS = {"pixels": ("kind", "params"), "replay": ("image", "quality", "params"), "packed": ("image", "quality")}


class StoreConfig(Strict):
    """How a set stores its samples. ``kind: pixels`` (the default): every image, as lossless PNG
    or JPEG at a fixed ``quality`` (the teachers label the decoded JPEG, so what is stored is what
    was labelled). ``kind: replay``: no pixels, only each sample's parameters and targets in one
    structured ``.npy`` per shard (``core.records.replay``, tens of bytes a sample); the trainer
    rebuilds the images from the source. ``kind: packed``: the replay records in bits
    (``core.records.packed``: the top-k classes as one combination of the C, quantised top-k values,
    parameters in the bits their ranges need); it needs ``targets: {kind: topk, bits: N}``; with
    ``params: derived`` its records hold no parameters at all: a reader draws each sample's again
    from ``(seed, shard, index)`` with the sampler code that made it (``core.sets.packed_shards``).
    ``store: replay`` is short for ``store: {kind: replay}``."""

    kind: Literal["pixels", "replay", "packed"] = Field(
        "pixels", description="pixels: images in the tars; replay: parameters rebuilt by the trainer; "
                              "packed: replay records in bits (needs targets: {kind: topk, bits: N})")
    image: Literal["png", "jpeg"] = Field("png", description="pixels: the image encoding")
    quality: int = Field(90, ge=1, le=100, description="jpeg quality")
    params: Literal["stored", "derived"] = Field(
        "stored", description="packed: stored (each record holds its sampler parameters) or derived (a reader "
                              "draws them again from (seed, shard, index); the index pins a check of that code)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _derived_is_packed(self) -> StoreConfig:
        if self.params == "derived" and self.kind != "packed":
            raise ValueError(f"store: params: derived re-derives a packed set's parameters; a {self.kind} set "
                             f"stores them (use kind: packed, or drop params)")
        return self

    @model_validator(mode="after")
    def _replay_has_no_image(self) -> StoreConfig:
        given = sorted(key for key in self.unused_keys() if getattr(self, key) != type(self).model_fields[key].default)
        if given:
            raise ValueError(f"store: a {self.kind} set stores no images; drop {' and '.join(given)} "
                             f"(or use kind: pixels)")
        return self

    def unused_keys(self) -> set[str]:
        """The keys this kind of store does not read, left out of its fingerprint and index (a
        replay set stores no image; a pixel set's kind is implied, as it was before replay sets)."""
        return set(UNUSED_KEYS[self.kind]) | ({"params"} if self.params == "stored" else set())

    @property
    def stores_images(self) -> bool:
        """The shards hold the images (else a reader rebuilds them from the source)."""
        return "image" not in UNUSED_KEYS[self.kind]
