"""Plan and finish a transfer set: everything around the Ray graph that needs no Ray.

:func:`plan_set` checks a set's inputs (source, teacher checkpoints, output directory) and
resolves them into a frozen :class:`~core.sets.spec.SetSpec`; it writes nothing, so a job can plan all
its sets first and refuse bad input before touching any of them. :func:`start` claims the
directory, :func:`resume` finds the committed shards a killed run left (the first state of the
set's :class:`SetProgress`, which the driver then owns), and :func:`finish` writes
``manifest.parquet`` and then ``index.json`` last. The driver runs ``start`` … ``finish`` under
the set's lease (:mod:`core.store.lease`) after :func:`refresh` re-read the directory: a set only
grows, and its index is never replaced by a smaller one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Config, SetConfig, StoreConfig
from core.errors import FormatError, UserError
from core.models import load_model
from core.progress import Progress
from core.records.format import VIEWS_ORDER_FORMAT, sha256_file
from core.sets import index as sx
from core.sets.fingerprint import PREFIX_CHARS, content_version, set_fingerprint
from core.sets.formats import FORMATS
from core.sets.index import SetIndex, ShardSummary, TeacherEntry
from core.sets.spec import SetSpec
from core.sources import Source, load_source
from core.store import storage
from core.store.lease import is_lease_name, lease_ttl
from core.tasks import Task
from stages.samplers import set_size
from stages.samplers.generating import resolve_gan_samplers
from stages.writer import summary_from_shard

MARKER_NAME = "_fingerprint"
AUTO = "auto"


def set_location(set_cfg: SetConfig, name: str, default: str | Path, fingerprint: str, root: str | None) -> str:
    """Where a set lives: ``out: auto`` → ``<cache root>/<name>-<fingerprint prefix>``, an explicit
    path or URL, or the job's own ``OUT/sets/<name>``."""
    if set_cfg.out == AUTO:
        return storage.join(storage.cache_root(root), f"{name}-{fingerprint[:PREFIX_CHARS]}")
    return str(set_cfg.out or default)


@dataclass(frozen=True)
class SetPlan:
    """One set's spec, and the index its directory already holds (same fingerprint), if any."""

    spec: SetSpec
    index: SetIndex | None

    def name(self, shard: int) -> str:
        """The file name of this plan's ``shard``: the name the index lists for it when it lists
        the same planned count, else the name of its count (:func:`core.sets.index.shard_name`).
        A set made before counted names may list its short last shard as ``shard-N.tar``; the
        full shard N then takes the counted name ``shard-N-<spp>.tar``, so no name changes content."""
        spec = self.spec
        count, spp = spec.planned(shard), spec.set_cfg.samples_per_shard
        listed = sx.listed_counts(self.index, spp).get(shard) if self.index is not None else None
        if listed is not None and listed[1] == count:
            return listed[0]
        shard_format = spec.shard_format
        plain = shard_format.shard_name(shard)
        if count == spp and (listed is None or listed[0] != plain):
            return plain
        return shard_format.shard_name(shard, count)

    def complete(self) -> bool:
        """The index lists exactly this plan's shards, on disk with the listed sizes (a cheap
        check; ``transferset verify`` hashes everything)."""
        spec = self.spec
        if self.index is None or self.index.totals.planned != spec.total:
            return False
        listed = self.index.listed()
        if [entry.name for entry in listed] != [self.name(i) for i in range(spec.shards)]:
            return False
        for entry in listed:
            path = storage.join(spec.out_dir, sx.SHARDS_DIR, str(entry.name))
            if not storage.is_file(path) or storage.size(path) != entry.bytes:
                return False
        return True


@dataclass
class SetProgress:
    """What is known of a set being made: the summaries of its committed shards (reused ones
    first, then each one the driver receives) and what this run made and labelled."""

    summaries: dict[int, ShardSummary] = field(default_factory=dict)
    made: int = 0  # shards made by this run
    samples: int = 0  # their planned samples
    labelled: int = 0  # candidates the teachers labelled for them
    first_at: float = 0.0  # seconds until the first shard arrived (start-up)
    first_samples: int = 0

    def missing(self, spec: SetSpec) -> list[int]:
        return [i for i in range(spec.shards) if i not in self.summaries]


# ---------------------------------------------------------------- checks (write nothing)


def check_out_dir(out_dir: str, fingerprint: str) -> SetIndex | None:
    """The existing index (same fingerprint), or None; refuses anything else."""
    if storage.exists(out_dir) and not storage.is_dir(out_dir):
        raise UserError(f"{out_dir} exists and is not a directory; choose another --out")
    try:
        index = sx.read_index(out_dir)
    except FormatError as err:
        raise UserError(f"{err}; choose another --out or delete it") from err
    if index is not None:
        if index.fingerprint != fingerprint:
            raise UserError(f"{out_dir} holds set with fingerprint {index.fingerprint}{_old_order(index)}, this "
                            f"config gives {fingerprint}; choose another --out or delete it")
        return index
    marker = storage.join(out_dir, MARKER_NAME)
    if storage.is_file(marker):
        found = storage.read_bytes(marker).decode(errors="replace").strip()
        if found != fingerprint:
            raise UserError(f"{out_dir} holds an unfinished set with fingerprint {found}, this config gives "
                            f"{fingerprint}; choose another --out or delete it")
    else:
        shards = storage.join(out_dir, sx.SHARDS_DIR)
        foreign = [name for name in storage.list_names(out_dir) if storage.TMP_MARKER not in name
                   and not is_lease_name(name)
                   and not (name == sx.SHARDS_DIR and storage.is_dir(shards) and not storage.list_names(shards))]
        if foreign:
            raise UserError(f"{out_dir} is not empty and holds no transfer set (found {foreign[:3]}); "
                            "choose another --out or delete it")
    return None


def _old_order(index: SetIndex) -> str:
    """Why a format-1 views-only set is never reused: format 2 writes views sets in another order."""
    try:
        set_cfg = index.set_config()
    except ValueError:  # a config this version cannot read: say nothing more
        set_cfg = None
    old_views = index.format < VIEWS_ORDER_FORMAT and set_cfg is not None and set_cfg.enumerates_source()
    return " (a format-1 views set; format 2 writes views sets in another order)" if old_views else ""


def check_teachers(paths: Sequence[str | Path], task: Task, outputs: int, channels: int,
                   factories: Sequence[str] = ()) -> list[tuple[TeacherEntry, dict[str, Any]]]:
    """Check every checkpoint fits the job (task, classes or target dimension, channels); their
    index entries and input contracts. ``factories``: the ``module:factory`` archs the config names."""
    if not paths:
        raise UserError("teachers: no checkpoints given")
    entries = []
    for path in paths:
        _, payload = load_model(path, task=task.name, outputs=outputs, allowed_factories=factories)
        wanted = int(payload["input"]["channels"])
        if wanted != channels and not (channels == 1 and wanted == 3):
            raise UserError(f"checkpoint {path}: expects {wanted}-channel images, the source has {channels}")
        entries.append((TeacherEntry(path=str(path), sha256=sha256_file(path), arch=payload["arch"]),
                        payload["input"]))
    return entries


def resolve_samplers(set_cfg: SetConfig, teacher_input: dict[str, Any], channels: int) -> SetConfig:
    """Fill what a sampler takes from the teachers (``gaussian_image`` draws N(0, 1) in the first
    teacher's normalised space unless its mean/std are given)."""
    return set_cfg.with_samplers([s.resolved(teacher_input, channels) for s in set_cfg.sampler_list()])


def plan_set(cfg: Config, name: str, out: str | Path, teachers: Sequence[str | Path], *,
             source: Source | None = None) -> SetPlan:
    """Validate set ``name`` of the job ``cfg`` and read what its directory holds. Writes nothing.

    ``out`` is where the set goes by default (the job's ``OUT/sets/NAME``); the set's ``out``
    (``auto``, a path or URL) overrides it, ``cfg.cache_root`` being the root of ``out: auto``.
    ``teachers`` are the ensemble's checkpoints; ``source`` the job's training split, if loaded.
    """
    spec = resolve_set(cfg, name, out, teachers, source=source)
    index = check_out_dir(spec.out_dir, spec.fingerprint)
    check_not_smaller(spec, index)
    return SetPlan(spec=spec, index=index)


def resolve_set(cfg: Config, name: str, out: str | Path, teachers: Sequence[str | Path], *,
                source: Source | None = None) -> SetSpec:
    """The :class:`SetSpec` of set ``name`` (inputs checked, see :func:`plan_set`), without
    looking at its directory: what ``transferset plan`` costs before any teacher exists."""
    stage = cfg.teacher_stage
    if stage.device == "cuda" and not stage.num_gpus:
        raise UserError("teacher_stage.device is 'cuda' but teacher_stage.num_gpus is 0, so Ray gives the "
                        "teacher actors no GPU; set teacher_stage.num_gpus (e.g. 1) or device 'auto'")
    source = source if source is not None else load_source(cfg.source, "train")
    task, channels = source.task, source.shape[2]
    checked = check_teachers(teachers, task, task.outputs(source), channels, cfg.factories)
    set_cfg = resolve_samplers(cfg.sets[name], checked[0][1], channels)
    resolved = task.resolve_targets(resolve_gan_samplers(set_cfg, source))
    records = FORMATS[resolved.store.kind].plan_layout(name, resolved, source, task.outputs(source))
    entries = tuple(entry for entry, _ in checked)
    fingerprint = set_fingerprint(resolved, source, [t.sha256 for t in entries], cfg.seed, stage.autocast)
    location = set_location(cfg.sets[name], name, out, fingerprint, cfg.cache_root)
    spec = SetSpec(
        name=name, out_dir=location, set_cfg=resolved, source_cfg=cfg.source, seed=cfg.seed, task_name=task.name,
        classes=tuple(source.classes), outputs=task.outputs(source), image_shape=source.shape,
        total=set_size(resolved, source), fingerprint=fingerprint, teachers=entries, teacher_stage=stage,
        generator_stage=cfg.generator_stage, factories=cfg.factories, records=records,
    )
    return spec


def check_not_smaller(spec: SetSpec, index: SetIndex | None) -> None:
    """A set only grows: a request for fewer samples than its index lists is refused, since the
    job would train on a set other than the one it asked for (the fingerprint leaves out the sample
    count, so the two share a directory). Checked at plan time and again under the lease
    (:func:`refresh`), where another writer may have grown the set meanwhile. Shards on disk that no
    index lists (a killed larger run's) are no reason to refuse: nothing here touches them."""
    held = index.totals.planned if index is not None else None
    if held is not None and held > spec.total:
        raise UserError(f"sets.{spec.name}: {spec.out_dir} already holds {held} samples of this set, more than the "
                        f"{spec.total} samples asked for; a set only grows (other jobs may read those shards): "
                        "ask for at least as many samples, or give the set another `out`")


def refresh(plan: SetPlan) -> SetPlan:
    """The plan with its directory read again (under the lease: a writer that waited for it may
    find the set grown, complete, or claimed by another config)."""
    index = check_out_dir(plan.spec.out_dir, plan.spec.fingerprint)
    check_not_smaller(plan.spec, index)
    return SetPlan(spec=plan.spec, index=index)


# ---------------------------------------------------------------- resume


def start(plan: SetPlan) -> None:
    """Claim the directory for this fingerprint (so a killed run resumes and a foreign config is
    refused) and drop temp files dead writers left (never a live writer's: see
    :func:`core.sets.index.remove_stale_temps`)."""
    out_dir = plan.spec.out_dir
    storage.make_dirs(out_dir)
    storage.atomic_write(storage.join(out_dir, MARKER_NAME), (plan.spec.fingerprint + "\n").encode())
    sx.remove_stale_temps(out_dir, lease_ttl())


def resume(plan: SetPlan, progress: Progress) -> SetProgress:
    """The set's progress so far: the committed shards that fit the plan (see
    :meth:`SetProgress.missing` for the others). Reads only.

    A shard is reused when the file of its name (:meth:`SetPlan.name`) is intact, still has the
    sha256 the index recorded (if listed) and, if unlisted, holds the planned samples (a file of a
    set made before counted names may hold another count under a full shard's name). Files of
    other names — a larger request's shards, a short shard since completed — are left alone.
    """
    spec, state = plan.spec, SetProgress()
    shard_format = spec.shard_format
    indexed = {entry.name: str(entry.sha256) for entry in plan.index.listed()} if plan.index is not None else {}
    present = sx.committed_shards(spec.out_dir)
    for shard in range(spec.shards):
        name = plan.name(shard)
        if name not in present:
            continue
        try:
            summary = summary_from_shard(present[name], spec.task, spec.planned(shard), shard_format)
        except FormatError as err:
            progress(f"{name}: damaged ({err}); remaking it")
            continue
        if name in indexed and indexed[name] != summary.sha256:
            progress(f"{name}: changed since it was indexed; remaking it")
            continue
        if name in indexed or summary.last_index() == spec.planned(shard):
            state.summaries[shard] = summary
    return state


# ---------------------------------------------------------------- commit


def finish(plan: SetPlan, state: SetProgress) -> dict[str, int]:
    """Write the manifest (where the format keeps one), then ``index.json`` last; returns the totals."""
    spec = plan.spec
    shard_format = spec.shard_format
    if state.missing(spec):
        raise RuntimeError(f"{spec.name}: the pipeline finished without shards {state.missing(spec)[:10]}")
    ordered = [state.summaries[i] for i in range(spec.shards)]
    rows = [row for summary in ordered for row in summary.rows]
    totals = {"samples": sum(s.samples for s in ordered), "shards": spec.shards,
              "rejected": sum(s.rejected for s in ordered), "planned": spec.total}
    height, width, channels = spec.image_shape
    # A temp file of a dead writer now is a leftover of a shard call that died mid-write and was
    # re-run elsewhere (a lost node), never listed.
    sx.remove_stale_temps(spec.out_dir, lease_ttl())
    check_not_smaller(spec, sx.read_index(spec.out_dir))  # under the lease; never list less than is listed
    # Keys a classification set never uses stay out of its index (its bytes predate them).
    targets_unused = {key for key in ("dtype", "temperature", "uniform", "bits")
                      if getattr(spec.set_cfg.targets, key) is None}
    unused: dict[str, Any] = {"targets": targets_unused} if targets_unused else {}
    store = spec.set_cfg.store
    # a PNG set's index predates the store option; any other leaves out the keys its kind does not read
    unused["store"] = True if store == StoreConfig() else store.unused_keys()
    source_unused = {name for name in ("samples", "test_samples", "metric")
                     if getattr(spec.source_cfg, name) is None} | spec.source_cfg.unused_keys() or None
    sx.commit_index(spec.out_dir, rows, spec.task, SetIndex(
        format=content_version(spec.set_cfg),  # 1 for every set whose bytes format 2 left alone
        fingerprint=spec.fingerprint,
        name=spec.name,
        **spec.task.index_outputs(spec.classes, spec.outputs),
        image=sx.ImageSpec(height=height, width=width, channels=channels,
                           encoding=shard_format.encoding),
        target=sx.TargetSpec(**spec.task.target_spec(spec.set_cfg.targets, spec.outputs)),
        teachers=list(spec.teachers),
        config={"set": spec.set_cfg.model_dump(mode="json", exclude=unused or None),
                "source": spec.source_cfg.model_dump(mode="json", exclude=source_unused), "seed": spec.seed},
        shards=[summary.entry() for summary in ordered],
        totals=sx.Totals(**totals),
        statistics=spec.task.statistics(rows),
        replay=shard_format.index_entry(spec.source_cfg),
    ), manifest=shard_format.writes_manifest)
    return totals
