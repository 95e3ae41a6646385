"""The job config: a YAML file validated by pydantic, with ``--set key=value`` overrides.

Every section is strict (unknown keys are errors) so a typo never silently falls back to a
default. Problems surface as one :class:`UserError` line naming the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from core.config.reading import apply_override, check_config_size, load_yaml, unshared  # noqa: F401  (apply_override re-exported)
from core.errors import SHOWN_CHARS, UserError, clip
from core.options.generator import GeneratorStageConfig
from core.options.image import ImageConfig, StoreConfig  # noqa: F401  (re-exported)
from core.options.student import StudentConfig
from core.options.target import TargetConfig
from core.options.teacher import InputContractConfig, TeacherModelConfig, TeachersConfig  # noqa: F401  (re-exported)
from core.options.train import (  # noqa: F401  (re-exported: the job config is one namespace)
    SOURCE_SET,
    KDConfig,
    ModelConfig,
    PickConfig,
    PruneConfig,
    SelfGuidanceConfig,
    Strict,
    StudentStageConfig,
    TrainConfig,
    factory_of,
    recipes_of,
)
from core.options.webdataset import WebDatasetKeys

# A set's sampler options: one class per sampler kind (core/samplers/), picked by ``kind``.
from core.samplers import SAMPLERS, SamplerConfig, SamplerOptions, sampler_config  # noqa: F401  (re-exported)


class ImbalanceConfig(Strict):
    """An artificial class imbalance (XCL §6.2): the chosen classes keep only ``keep`` of their
    training images."""

    classes: int | list[str] = Field(description="how many classes to reduce (picked with subset_seed), or names")
    keep: float = Field(0.1, gt=0, le=1, description="share of each reduced class's training images kept")


SOURCE_NEEDS = {"imagefolder": ("path",), "npz": ("path",), "torchvision": ("path", "name")}  # keys a reader needs
SOURCE_KEY_EXAMPLES = {"name": " (e.g. CIFAR10)"}
DEFAULT_METRICS = {"gaze": "angular"}  # the gaze targets are yaw and pitch: degrees between gaze vectors


class SourceConfig(WebDatasetKeys):
    """Where real images come from.

    ``digits`` ships with scikit-learn; ``imagefolder`` is a directory with ``train/<class>/*`` and
    ``test/<class>/*``; ``npz`` is a file with uint8 NHWC ``images`` and ``labels`` (optionally
    ``test_images``/``test_labels`` and ``classes``); ``torchvision`` opens a torchvision data set
    by ``name`` under ``path`` (``download: true`` fetches it, on a machine with internet).
    ``classes``, ``fraction`` and ``imbalance`` carve a subset out of the training split.

    ``webdataset`` reads tar shards: ``urls`` (train) and ``test_urls`` (test), each a list of paths
    or fsspec URLs or one brace pattern (``data/train-{000000..000009}.tar``); a sample's image is
    its first member with an extension of ``image_ext`` (``;``-separated), its class the ASCII
    integer in its ``label_ext`` member; ``class_names`` names the classes (default ``"0".."K-1"``,
    K = 1 + the largest label of both splits).

    Regression: ``gaze`` renders the bundled eye images (``samples`` / ``test_samples`` of them,
    from ``split_seed``; cached under ``path``, default ``$TRANSFERSET_CACHE/gaze``); an ``npz``
    with float ``targets`` (N, D) instead of ``labels`` is a regression source too. ``metric``
    names the error the report shows.
    """

    kind: Literal["digits", "imagefolder", "npz", "torchvision", "gaze", "webdataset"] = Field(
        description="the reader: digits (bundled), imagefolder, npz, torchvision, gaze (bundled), webdataset")
    path: str | None = Field(
        None, description="imagefolder/npz: a folder or file (fsspec URLs too); torchvision: the data root")
    name: str | None = Field(None, description="torchvision: the data set class, e.g. CIFAR10, CIFAR100, MNIST")
    download: bool = Field(
        False, description="torchvision: fetch the data set if absent (the only download a job makes)")
    train_dir: str = Field("train", description="imagefolder: the training split's folder under path")
    test_dir: str = Field("test", description="imagefolder: the test split's folder under path")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="share held out as the test split when the source has none")
    split_seed: int = Field(0, description="seed of that split (and of gaze's rendering)")
    pad: int | None = Field(None, ge=0, description="random-crop padding; default per source")
    flip: bool | None = Field(None, description="horizontal flips; default per source")
    classes: list[str] | None = Field(None, description="keep only these classes (relabelled in this order)")
    fraction: float = Field(1.0, gt=0, le=1, description="class-balanced fraction of the training images")
    imbalance: ImbalanceConfig | None = Field(None, description="reduce some classes' training images (XCL §6.2)")
    subset_seed: int = Field(0, description="seed of fraction and imbalance")
    samples: int | None = Field(None, gt=0, description="gaze: training images to render (default 8000)")
    test_samples: int | None = Field(None, gt=0, description="gaze: test images to render (default 2000)")
    image: ImageConfig | None = Field(None, description="the job's image contract (the top-level `image` "
                                                       "section is moved here)")
    metric: Literal["angular", "euclidean"] | None = Field(
        None, description="regression error: angular (targets are yaw, pitch in radians; degrees between gaze "
                          "vectors) or euclidean (L2 distance); default angular for gaze, euclidean otherwise")

    def error_metric(self) -> str:
        """The regression error a report shows: ``metric``, else the source's own."""
        return self.metric or DEFAULT_METRICS.get(self.kind, "euclidean")

    def unused_keys(self) -> set[str]:
        """Keys this source does not use, left out of stored specs and indexes (whose bytes stay
        those of jobs made before the keys existed): another kind's webdataset keys, no image contract."""
        return self.unused_webdataset_keys() | ({"image"} if self.image is None else set())

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceConfig:
        for key in SOURCE_NEEDS.get(self.kind, ()):
            if not getattr(self, key):
                raise ValueError(f"source.kind {self.kind!r} needs source.{key}{SOURCE_KEY_EXAMPLES.get(key, '')}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes or []):
            raise ValueError("source.classes lists a class twice")
        self.check_webdataset_keys()
        return self


class SelectConfig(Strict):
    """Uncertainty-targeted generation: draw samples/keep candidates per shard, label them all,
    keep the most uncertain ones."""

    by: Literal["entropy", "disagreement"] = Field(
        description="the uncertainty ranked: the ensemble's entropy or its members' disagreement")
    keep: float = Field(gt=0, le=1, description="share of the drawn candidates kept (the most uncertain)")


class SetConfig(Strict):
    sampler: SamplerConfig | None = Field(
        None, description="the set's one sampler: {kind, options} (see the sampler sections)")
    samplers: list[SamplerConfig] | None = Field(None, description="several samplers, mixed by their share")
    samples: int | None = Field(None, gt=0, description="samples to draw; a views-only set defaults to all views")
    samples_per_shard: int = Field(1024, gt=0, description="samples per shard: the unit of work, commit and resume")
    targets: TargetConfig = Field(TargetConfig(), description="what the teachers' output is stored as")
    store: StoreConfig = Field(StoreConfig(), description="how samples are stored: pixels (png/jpeg) or replay records")
    select: SelectConfig | None = Field(
        None, description="uncertainty-targeted generation: keep the most uncertain candidates")
    out: str | None = Field(None, description="'auto' (the shared cache), a path or fsspec URL; default OUT/sets/NAME")

    @model_validator(mode="after")
    def _samplers_and_samples(self) -> SetConfig:
        if (self.sampler is None) == (self.samplers is None):
            raise ValueError("a set needs exactly one of sampler or samplers")
        kinds = [s.kind for s in self.sampler_list()]
        if not kinds:
            raise ValueError("samplers is empty")
        enumerates = kinds == ["views"]
        if self.samples is None and not enumerates:
            raise ValueError(f"a set with samplers {kinds} needs samples")
        if self.select is not None and enumerates:
            raise ValueError("select needs random samplers; a views-only set enumerates the source")
        generators = {g.model_dump_json() for s in self.sampler_list() if (g := s.generator_of()) is not None}
        if len(generators) > 1:
            raise ValueError("the gan samplers of one set must share one generator; make a set per generator")
        generated = [kind for kind in kinds if SAMPLERS[kind].generated]
        if not self.store.stores_images and generated:
            raise ValueError(f"{generated[0]} samples are made by a generator, so they are stored as pixels only; "
                             f"drop store: {self.store.kind} or give the {generated[0]} sampler a set of its own")
        if self.store.kind == "packed" and (self.targets.kind != "topk" or self.targets.bits is None):
            raise ValueError("store: packed holds quantised top-k targets; give the set targets: {kind: topk, k: 10, "
                             "bits: 8} (or use store: replay)")
        return self

    def sampler_list(self) -> list[SamplerOptions]:
        return [self.sampler] if self.sampler is not None else list(self.samplers or [])

    def with_samplers(self, samplers: list[SamplerOptions]) -> SetConfig:
        """The set with ``samplers`` in place of its own, in the same shape (one ``sampler`` or a list)."""
        if self.sampler is not None:
            return self.model_copy(update={"sampler": samplers[0]})
        return self.model_copy(update={"samplers": samplers})

    def enumerates_source(self) -> bool:
        """A views-only set visits every real image in order instead of drawing at random."""
        return [s.kind for s in self.sampler_list()] == ["views"]

    def candidates(self, count: int) -> int:
        """Candidates drawn for a shard of ``count`` samples: more when the set keeps only the most
        uncertain ones (``select``)."""
        return count if self.select is None else math.ceil(count / self.select.keep)


class TeacherStageConfig(Strict):
    """Resources of the teacher actor pool. Fractional ``num_cpus`` leaves room for the read and
    write stages on small machines. ``autocast`` (bf16/fp16) and pinned host memory apply on CUDA
    only; ``channels_last`` everywhere. ``threads`` defaults to the actor's whole CPUs (at least
    one) and is fixed, so repeated runs sum floats in the same order."""

    batch_size: int = Field(512, gt=0, description="images per teacher forward pass")
    actors: int = Field(1, ge=1, description="size of the teacher actor pool")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per teacher actor (fractions leave room for read and write)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: max(1, num_cpus))")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the actor has a GPU, else cpu")
    autocast: Literal["none", "bf16", "fp16"] = Field("none", description="teacher precision on CUDA")
    channels_last: bool = Field(True, description="NHWC memory format for the teachers")
    pin_memory: bool = Field(True, description="pinned host memory for batches sent to CUDA")

    def torch_threads(self) -> int:
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))


class RayConfig(Strict):
    address: str | None = Field(
        None, description="a Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the embedded local Ray (default: the machine's)")
    stall_timeout_s: float = Field(600.0, gt=0, description="no progress for this long ends the execution")
    max_restarts: int = Field(2, ge=0, description="restarts from the committed shards after a stall or "
                                                   "a cluster failure (also --max-restarts)")


class ReportConfig(Strict):
    baseline: str = Field("kd", description="the student the gap reductions are measured against")
    compare: list[str] = Field([], description="students compared with the baseline (default: every KD student)")


class Config(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the job's name: default output folder runs/NAME")
    seed: int = Field(0, description="the job's seed: every random draw derives from it")
    source: SourceConfig = Field(description="the real images (and the task: classification or regression)")
    teachers: TeachersConfig = Field(description="the teacher ensemble: trained here, checkpoints, or imported models")
    teacher_stage: TeacherStageConfig = Field(TeacherStageConfig(), description="resources of the teacher actors")
    generator_stage: GeneratorStageConfig = Field(
        GeneratorStageConfig(), description="resources of the generator actors (gan samplers)")
    student_stage: StudentStageConfig = Field(StudentStageConfig(), description="how student runs are scheduled")
    cache_root: str | None = Field(None, description="where 'out: auto' sets live (default $TRANSFERSET_CACHE "
                                                     "or ~/.cache/transferset)")
    ray: RayConfig = Field(RayConfig(), description="the Ray cluster and the supervisor's limits")
    sets: dict[str, SetConfig] = Field({}, description="transfer sets by name")
    students: dict[str, StudentConfig] = Field({}, description="students by name")
    report: ReportConfig = Field(ReportConfig(), description="what the report compares")

    @model_validator(mode="before")
    @classmethod
    def _image_into_source(cls, raw: Any) -> Any:
        """The top-level ``image`` section is the source's contract: every worker that opens the
        source sees it, and it is part of the source's identity (so of every set's fingerprint)."""
        if isinstance(raw, dict) and "image" in raw:
            raw = dict(raw)
            image = raw.pop("image")
            source = raw.get("source")
            if isinstance(source, dict) and image is not None:
                if source.get("image") is not None:
                    raise ValueError("give the image contract once: top-level image or source.image")
                raw["source"] = {**source, "image": image}
        return raw

    @property
    def image(self) -> ImageConfig | None:
        return self.source.image

    @property
    def factories(self) -> tuple[str, ...]:
        """The ``module:factory`` archs this config names: the only code its checkpoints may run."""
        archs = [*self.teachers.archs(), *(student.model.arch for student in self.students.values())]
        return tuple(sorted({f for f in map(factory_of, archs) if f is not None}))

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name in self.sets:
            if name == SOURCE_SET:
                raise ValueError(f"set name {SOURCE_SET!r} is reserved for the real training split")
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"set name {name!r} must be letters, digits, '_' or '-'")
        for student_name, student in self.students.items():
            for where, set_name in [("sets", n) for n in student.sets] + [
                    ("prune.then.sets", n) for r in recipes_of(student.prune) for n in r.then.sets]:
                if set_name not in self.sets and set_name != SOURCE_SET:
                    raise ValueError(
                        f"students.{student_name}.{where} names {set_name!r}, not one of {sorted(self.sets)}"
                    )
                targets = self.sets[set_name].targets if set_name in self.sets else None
                bound = None if targets is None else targets.student_temperature
                if student.objective_kind.reads_sets and bound is not None and student.kd.temperature != bound:
                    raise ValueError(
                        f"students.{student_name}.kd.temperature is {student.kd.temperature:g} but set {set_name!r} "
                        f"draws its sampled targets at temperature {targets.draw_temperature:g} (unbiased only "
                        f"there); set sets.{set_name}.targets.temperature: {student.kd.temperature:g} or "
                        f"students.{student_name}.kd.temperature: {targets.draw_temperature:g}")
        named = [self.report.baseline, *self.report.compare] if self.report.compare else []
        for name in named:
            if name not in self.students:
                raise ValueError(f"report names student {name!r}, not one of {sorted(self.students)}")
        return self


# ---------------------------------------------------------------- loading

MAX_PROBLEMS = 3  # validation problems named in the one error line


def _field_path(item: Any) -> str:
    """The dotted path of a validation error's field. A sampler's options are a tagged union, whose
    errors pydantic locates under the tag (``sampler.mix.alpha``): the tag is left out, and a tag
    that names no sampler is located at ``kind``."""
    loc = list(item["loc"])
    kept = [part for i, part in enumerate(loc)
            if not (part in SAMPLERS and i and (loc[i - 1] == "sampler" or (i > 1 and loc[i - 2] == "samplers")))]
    if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kept.append("kind")
    return ".".join(str(part) for part in kept) or "(top level)"


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = clip(_field_path(item))
        message = clip(item["msg"].removeprefix("Value error, "), 2 * SHOWN_CHARS)
        given = item.get("input")
        shown = "" if isinstance(given, dict | list) or given is None else f" (got {clip(repr(given))})"
        parts.append(f"{where}: {message}{shown}")
    more = f"; and {len(parts) - MAX_PROBLEMS} more" if len(parts) > MAX_PROBLEMS else ""
    return "; ".join(parts[:MAX_PROBLEMS]) + more


def parse_config(raw: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{origin}: {describe_validation_error(err)}") from err


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config {path}: is a directory; give the YAML file")
    if not path.is_file():
        raise UserError(f"config {path}: file not found")
    try:
        check_config_size(path.stat().st_size, f"config {path}")
        raw = load_yaml(path.read_text(encoding="utf-8"), f"config {path}")
    except OSError as err:
        raise UserError(f"config {path}: cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"config {path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from err
    except yaml.YAMLError as err:
        raise UserError(f"config {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    raw = unshared(raw, f"config {path}")
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return parse_config(raw, origin=f"config {path}")
