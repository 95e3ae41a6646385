"""What a set is made from, resolved: the frozen :class:`SetSpec` the planner builds, the actors
receive whole and the stage functions take.

Everything a shard's bytes depend on is here (with the fingerprint that sums it up), and where
the set goes and with which resources. It is plain data (pydantic, JSON-serialisable), so it
crosses to Ray workers as it is, and any shard can be made from it anywhere: a shard is a pure
function of ``(spec, shard)``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from core.config import GeneratorStageConfig, SetConfig, SourceConfig, TeacherStageConfig
from core.records.packed import PackedRecords
from core.records.replay import RecordLayout
from core.sets.formats import FORMATS
from core.sets.index import TeacherEntry
from core.sets.shard_format import ShardFormat
from core.tasks import Task, task_named


class SetSpec(BaseModel):
    """One set, planned: its resolved config (``gaussian_image`` statistics, ``gan`` generator
    and targets filled in), source, seed, task, teachers and where it goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    out_dir: str  # local path or fsspec URL
    set_cfg: SetConfig
    source_cfg: SourceConfig
    seed: int
    task_name: str  # classify | regress (the Task itself is ``task``)
    classes: tuple[str, ...]
    outputs: int  # what the teachers predict: classes, or the regression target's dimension
    image_shape: tuple[int, int, int]
    total: int  # samples of the set
    fingerprint: str
    teachers: tuple[TeacherEntry, ...]
    teacher_stage: TeacherStageConfig
    generator_stage: GeneratorStageConfig
    factories: tuple[str, ...] = ()  # the module:factory archs the config names (teachers may use them)
    records: RecordLayout | PackedRecords | None = None  # a replay set's records (in bits: packed), from the plan

    @property
    def task(self) -> Task:
        return task_named(self.task_name)

    @property
    def shard_format(self) -> ShardFormat:
        """How the set's shards hold its samples (the config's ``store``)."""
        return FORMATS[self.set_cfg.store.kind].planned(self)

    def shard_name(self, shard: int) -> str:
        """The file of ``shard`` at its planned count: ``shard-N.tar`` full, ``shard-N-C.tar`` short."""
        count = self.planned(shard)
        return self.shard_format.shard_name(shard, None if count == self.set_cfg.samples_per_shard else count)

    @property
    def teacher_paths(self) -> list[str]:
        return [teacher.path for teacher in self.teachers]

    @property
    def shards(self) -> int:
        return math.ceil(self.total / self.set_cfg.samples_per_shard)

    def planned(self, shard: int) -> int:
        """Samples written to ``shard`` (the last shard may be short)."""
        spp = self.set_cfg.samples_per_shard
        return min(spp, self.total - shard * spp)

    def candidates(self, shard: int) -> int:
        """Samples the teachers label for ``shard`` (more than it keeps with ``select``)."""
        return self.set_cfg.candidates(self.planned(shard))
