"""Plan and finish a transfer set: everything around the Ray graph that needs no Ray.

:func:`plan_set` checks a set's inputs (source, teacher checkpoints, output directory) and
decides what exists already; it writes nothing, so a job can plan all its sets first and refuse
bad input before touching any of them. :func:`start` claims the directory, :func:`resume`
finds the committed shards a killed run left, and :func:`finish` writes ``manifest.parquet``
and then ``index.json`` last.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import format as fmt
from pipeline import storage
from pipeline.config import GeneratorStageConfig, SetConfig, SourceConfig, TeacherStageConfig
from pipeline.errors import UserError
from pipeline.fingerprint import PREFIX_CHARS, set_fingerprint
from stages.samplers import candidate_count, set_size
from stages.samplers.generating import resolve_gan_samplers
from stages.sources import Source, load_source
from stages.writer import summary_from_tar

MARKER_NAME = "_fingerprint"
AUTO = "auto"
CACHE_ENV = "TRANSFERSET_CACHE"


def cache_root(configured: str | None) -> str:
    """Root of the shared set cache: the config's ``cache_root``, else $TRANSFERSET_CACHE, else
    ~/.cache/transferset."""
    return configured or os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "transferset")


def set_location(set_cfg: SetConfig, name: str, default: str | Path, fingerprint: str, root: str | None) -> str:
    """Where a set lives: ``out: auto`` → ``<cache root>/<name>-<fingerprint prefix>``, an explicit
    path or URL, or the job's own ``OUT/sets/<name>``."""
    if set_cfg.out == AUTO:
        return storage.join(cache_root(root), f"{name}-{fingerprint[:PREFIX_CHARS]}")
    return str(set_cfg.out or default)


@dataclass
class SetPlan:
    """One set's resolved inputs: what to make, where, from which teachers."""

    name: str
    out_dir: str  # local path or fsspec URL
    set_cfg: SetConfig  # resolved (gaussian_image mean/std filled in)
    source_cfg: SourceConfig
    seed: int
    teacher_paths: list[str]
    teachers: list[dict[str, Any]]  # index entries: path, sha256, arch
    stage_cfg: TeacherStageConfig
    classes: list[str]
    image_shape: tuple[int, int, int]
    total: int
    fingerprint: str
    index: dict[str, Any] | None  # the existing index (same fingerprint), if any
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard → summary, once known
    generator_stage: GeneratorStageConfig = field(default_factory=GeneratorStageConfig)  # gan samplers' actors
    task: str = "classify"  # or "regress": Gaussian targets of dimension out_dim
    out_dim: int = 0

    @property
    def shards(self) -> int:
        return math.ceil(self.total / self.set_cfg.samples_per_shard)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def outputs(self) -> int:
        """What the teachers predict: classes, or the regression target's dimension."""
        return self.out_dim if self.task == "regress" else self.num_classes

    @property
    def target_dtype(self) -> str:
        return self.set_cfg.targets.dtype or "float32"

    def planned(self, shard: int) -> int:
        """Samples written to ``shard`` (the last shard may be short)."""
        spp = self.set_cfg.samples_per_shard
        return min(spp, self.total - shard * spp)

    def candidates(self, shard: int) -> int:
        """Samples the teachers label for ``shard`` (more than it keeps with ``select``)."""
        return candidate_count(self.set_cfg, self.planned(shard))

    def complete(self) -> bool:
        """The index lists exactly this plan's shards, on disk with the listed sizes (a cheap
        check; ``transferset verify`` hashes everything)."""
        if self.index is None or self.index.get("totals", {}).get("planned") != self.total:
            return False
        listed = listed_shards(self.index)
        if [s["name"] for s in listed] != [fmt.shard_name(i) for i in range(self.shards)]:
            return False
        for entry in listed:
            path = storage.join(self.out_dir, fmt.SHARDS_DIR, entry["name"])
            if not storage.is_file(path) or storage.size(path) != entry.get("bytes"):
                return False
        return True


# ---------------------------------------------------------------- checks (write nothing)


def check_out_dir(out_dir: str, fingerprint: str) -> dict[str, Any] | None:
    """The existing index (same fingerprint), or None; refuses anything else."""
    if storage.exists(out_dir) and not storage.is_dir(out_dir):
        raise UserError(f"{out_dir} exists and is not a directory; choose another --out")
    try:
        index = fmt.read_index(out_dir)
    except fmt.FormatError as err:
        raise UserError(f"{err}; choose another --out or delete it") from err
    if index is not None:
        found = index.get("fingerprint")
        if found != fingerprint:
            raise UserError(f"{out_dir} holds set with fingerprint {found}, this config gives {fingerprint}; "
                            "choose another --out or delete it")
        return index
    marker = storage.join(out_dir, MARKER_NAME)
    if storage.is_file(marker):
        found = storage.read_bytes(marker).decode(errors="replace").strip()
        if found != fingerprint:
            raise UserError(f"{out_dir} holds an unfinished set with fingerprint {found}, this config gives "
                            f"{fingerprint}; choose another --out or delete it")
    else:
        shards = storage.join(out_dir, fmt.SHARDS_DIR)
        foreign = [name for name in storage.list_names(out_dir) if fmt.TMP_MARKER not in name
                   and not (name == fmt.SHARDS_DIR and storage.is_dir(shards) and not storage.list_names(shards))]
        if foreign:
            raise UserError(f"{out_dir} is not empty and holds no transfer set (found {foreign[:3]}); "
                            "choose another --out or delete it")
    return None


def check_teachers(paths: list[str], num_classes: int, channels: int, task: str = "classify",
                   out_dim: int = 0) -> list[dict[str, Any]]:
    """Check every checkpoint fits the job (task, classes or target dimension, channels); their
    index entries."""
    from pipeline.models import load_model

    if not paths:
        raise UserError("teachers: no checkpoints given")
    entries = []
    for path in paths:
        _, payload = load_model(path, task=task, num_classes=num_classes, out_dim=out_dim)
        wanted = int(payload["input"]["channels"])
        if wanted != channels and not (channels == 1 and wanted == 3):
            raise UserError(f"checkpoint {path}: expects {wanted}-channel images, the source has {channels}")
        entries.append({"path": str(path), "sha256": fmt.sha256_file(path), "arch": payload["arch"],
                        "input": payload["input"]})
    return entries


def resolve_samplers(set_cfg: SetConfig, teachers: list[dict[str, Any]], channels: int) -> SetConfig:
    """Fill what a sampler takes from the teachers: ``gaussian_image`` draws N(0, 1) in the first
    teacher's normalised space unless its mean/std are given."""
    spec = teachers[0]["input"]
    resolved = []
    for sampler in set_cfg.sampler_list():
        if sampler.kind == "gaussian_image" and sampler.mean is None:
            sampler = sampler.model_copy(update={"mean": [float(v) for v in spec["mean"]],
                                                 "std": [float(v) for v in spec["std"]]})
        if sampler.kind == "gaussian_image" and len(sampler.mean or []) not in (1, channels):
            raise UserError(f"gaussian_image: mean/std have {len(sampler.mean or [])} values, the images have "
                            f"{channels} channels")
        resolved.append(sampler)
    return set_cfg.with_samplers(resolved)


def resolve_targets(set_cfg: SetConfig, task: str) -> SetConfig:
    """Regression sets store dense μ and log σ² (float32 unless asked otherwise); classification
    sets store float16 log-probabilities, so a dtype is meaningless there."""
    targets = set_cfg.targets
    if task == "regress":
        if targets.kind != "dense":
            raise UserError("targets.kind: top-k targets are for classification; a regression set stores dense "
                            "mu and logvar (remove targets.kind)")
        return set_cfg.model_copy(update={"targets": targets.model_copy(update={"dtype": targets.dtype or "float32"})})
    if targets.dtype is not None:
        raise UserError("targets.dtype: classification targets are always float16 log-probabilities; "
                        "dtype is for regression sets (remove it)")
    return set_cfg


def plan_set(*, set_name: str, set_cfg: SetConfig, source_cfg: SourceConfig, seed: int,
             teacher_paths: list[str | Path], out_dir: str | Path, stage_cfg: TeacherStageConfig,
             cache: str | None = None, source: Source | None = None,
             generator_stage: GeneratorStageConfig | None = None) -> SetPlan:
    """Validate one set's inputs and read what its directory holds. Writes nothing.

    ``out_dir`` is the job's default location; the set's ``out`` (``auto``, a path or URL)
    overrides it, ``cache`` being the root of ``out: auto``.
    """
    if stage_cfg.device == "cuda" and not stage_cfg.num_gpus:
        raise UserError("teacher_stage.device is 'cuda' but teacher_stage.num_gpus is 0, so Ray gives the "
                        "teacher actors no GPU; set teacher_stage.num_gpus (e.g. 1) or device 'auto'")
    source = source if source is not None else load_source(source_cfg, "train")
    paths = [str(p) for p in teacher_paths]
    teachers = check_teachers(paths, source.num_classes, source.shape[2], source.task, source.out_dim)
    resolved = resolve_targets(resolve_gan_samplers(resolve_samplers(set_cfg, teachers, source.shape[2]), source),
                               source.task)
    fingerprint = set_fingerprint(resolved, source, [t["sha256"] for t in teachers], seed, stage_cfg.autocast)
    location = set_location(set_cfg, set_name, out_dir, fingerprint, cache)
    return SetPlan(
        name=set_name, out_dir=location, set_cfg=resolved, source_cfg=source_cfg, seed=seed,
        teacher_paths=paths, teachers=[{k: t[k] for k in ("path", "sha256", "arch")} for t in teachers],
        stage_cfg=stage_cfg, classes=list(source.classes), image_shape=source.shape,
        total=set_size(resolved, source), fingerprint=fingerprint, index=check_out_dir(location, fingerprint),
        generator_stage=generator_stage or GeneratorStageConfig(),
        task=source.task, out_dim=source.out_dim,
    )


# ---------------------------------------------------------------- resume


def listed_shards(index: dict[str, Any] | None) -> list[dict[str, Any]]:
    shards = (index or {}).get("shards")
    return [e for e in shards if isinstance(e, dict) and "name" in e] if isinstance(shards, list) else []


def start(plan: SetPlan) -> None:
    """Claim the directory for this fingerprint (so a killed run resumes and a foreign config is
    refused) and drop temp files a killed writer left."""
    storage.make_dirs(plan.out_dir)
    fmt.atomic_write(storage.join(plan.out_dir, MARKER_NAME), (plan.fingerprint + "\n").encode())
    fmt.remove_stale_temps(plan.out_dir)


def resume(plan: SetPlan, progress: Callable[[str], None]) -> list[int]:
    """Fill ``plan.summaries`` with committed shards that fit the plan; return the missing ones.

    A shard is reused when it is intact, still has the sha256 the index recorded (if listed),
    and its last sample index is the planned last one, so a short final shard of a smaller
    earlier run is remade (a full shard is the same either way).
    """
    indexed = {entry["name"]: str(entry.get("sha256")) for entry in listed_shards(plan.index)}
    for shard, path in sorted(fmt.committed_shards(plan.out_dir).items()):
        if shard >= plan.shards:
            continue  # past the end of a smaller set: removed by finish() once the index is written
        try:
            summary = summary_from_tar(path, plan.planned(shard))
        except fmt.FormatError as err:
            progress(f"{storage.name_of(path)}: damaged ({err}); remaking it")
            continue
        name = storage.name_of(path)
        if name in indexed and indexed[name] != summary["sha256"]:
            progress(f"{name}: changed since it was indexed; remaking it")
            continue
        last = max((row["index"] for row in summary["rows"]), default=-1) + 1
        if last == plan.planned(shard):
            plan.summaries[shard] = summary
    return [i for i in range(plan.shards) if i not in plan.summaries]


# ---------------------------------------------------------------- commit


def statistics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_sampler: dict[str, int] = {}
    for row in rows:
        per_sampler[row["sampler"]] = per_sampler.get(row["sampler"], 0) + 1
    if rows and "sigma" in rows[0]:  # regression: predicted σ and its two parts
        sigma, aleatoric, epistemic = (np.asarray([r[k] for r in rows], dtype=np.float64)
                                       for k in ("sigma", "aleatoric", "epistemic"))
        return {"sigma_mean": float(sigma.mean()), "sigma_std": float(sigma.std()),
                "aleatoric_mean": float(aleatoric.mean()), "epistemic_mean": float(epistemic.mean()),
                "per_sampler": per_sampler}
    entropy = np.asarray([r["entropy"] for r in rows], dtype=np.float64)
    disagreement = np.asarray([r["disagreement"] for r in rows], dtype=np.float64)
    return {
        "entropy_mean": float(entropy.mean()) if len(rows) else 0.0,
        "entropy_std": float(entropy.std()) if len(rows) else 0.0,
        "disagreement_mean": float(disagreement.mean()) if len(rows) else 0.0,
        "per_sampler": per_sampler,
    }


def finish(plan: SetPlan) -> dict[str, int]:
    """Write the manifest, then ``index.json`` last; returns the totals."""
    if sorted(plan.summaries) != list(range(plan.shards)):
        lost = sorted(set(range(plan.shards)) - set(plan.summaries))
        raise RuntimeError(f"{plan.name}: the pipeline finished without shards {lost[:10]}")
    ordered = [plan.summaries[i] for i in range(plan.shards)]
    rows = [row for summary in ordered for row in summary["rows"]]
    totals = {"samples": sum(s["samples"] for s in ordered), "shards": plan.shards,
              "rejected": sum(s["rejected"] for s in ordered), "planned": plan.total}
    height, width, channels = plan.image_shape
    # Every shard is committed and no writer runs any more: a temp file now is a leftover of a
    # shard call that died mid-write and was re-run elsewhere (a lost node), never listed.
    fmt.remove_stale_temps(plan.out_dir)
    fmt.write_manifest(plan.out_dir, rows)
    outputs: dict[str, Any] = {"task": "classify", "classes": plan.classes, "num_classes": plan.num_classes}
    if plan.task == "regress":
        outputs = {"task": "regress", "out_dim": plan.out_dim}
    # Keys a classification set never uses stay out of its index (its bytes predate them).
    unused = {"targets": {"dtype"}} if plan.set_cfg.targets.dtype is None else None
    source_unused = {name for name in ("samples", "test_samples", "metric")
                     if getattr(plan.source_cfg, name) is None} or None
    fmt.write_index(plan.out_dir, {
        "fingerprint": plan.fingerprint,
        "name": plan.name,
        **outputs,
        "image": {"height": height, "width": width, "channels": channels, "encoding": "png"},
        "target": target_spec(plan),
        "teachers": plan.teachers,
        "config": {"set": plan.set_cfg.model_dump(mode="json", exclude=unused),
                   "source": plan.source_cfg.model_dump(mode="json", exclude=source_unused), "seed": plan.seed},
        "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in ordered],
        "totals": totals,
        "statistics": statistics(rows),
    })
    for shard, path in fmt.committed_shards(plan.out_dir).items():
        if shard >= plan.shards:  # the index no longer lists them
            storage.remove(path)
    return totals


def target_spec(plan: SetPlan) -> dict[str, Any]:
    """The index's description of the stored targets."""
    targets = plan.set_cfg.targets
    if plan.task == "regress":
        size = np.dtype(plan.target_dtype).itemsize * plan.out_dim
        return {"kind": "gaussian", "dtype": plan.target_dtype, "members": [fmt.MU_FIELD, fmt.LOGVAR_FIELD],
                "logvar": "per dimension", "payload_bytes": 2 * size}
    spec: dict[str, Any] = {"kind": "logp", "dtype": "float16", "temperature_free": True}
    if targets.kind == "topk":
        k = min(targets.k, plan.num_classes)
        spec = {**spec, "kind": "topk", "k": k, "index_dtype": fmt.topk_dtype(k, plan.num_classes)["index"].base.name}
    return {**spec, "payload_bytes": fmt.target_payload_bytes(plan.num_classes, spec.get("k", 0))}
