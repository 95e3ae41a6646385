"""The packed format (``store: packed``): a replay set whose records are stored in bits.

A shard is one ``.npy`` of ``(N, row_bytes)`` uint8 (``np.load`` reads it, no pickle): each row
the record of :mod:`core.records.replay` with every column in the bits its range needs
(:class:`core.records.packed.PackedRecords`). Everything else is the replay format's: a reader
unpacks a shard into the structured records and goes on as it does for any replay set (range
checks, rebuilt images, the trainer's column-wise decode), so the two differ only in
:meth:`PackedShards.encode` and :meth:`PackedShards.read_records`.

What the bits depend on beyond the config and the source — the most candidates a shard draws,
the largest side of a real image (a random-resized-crop box lies in the raw image), the bits of
a target value — is fixed when the set is planned and pinned in ``index.json`` (``replay.packing``),
with the bit layout itself: a reader whose code would lay the bits out otherwise refuses the set
with one line instead of reading other numbers.

With ``store: {kind: packed, params: derived}`` a record holds no parameter and no label bits:
a reader draws each shard's parameters again from ``(seed, shard, index)`` with the code that drew
them (:class:`Derivation`, :mod:`core.samplers.shard`), picks each row's by its stored index (or
candidate, with ``select``) and takes the label from the source. The index pins a digest of what
that code draws for a probe shard (``replay.packing.check``): a version whose samplers draw
otherwise refuses the set with one line instead of rebuilding other images. The writer checks
each shard's records against the re-derived ones before it stores them.

A packed set writes no ``manifest.parquet``: its per-sample columns (key, sampler, λ, label,
Ĥ, disagreement, argmax, KL, parameters) are what its records decode to, so ``inspect`` rebuilds
them from the shards (:meth:`~core.sets.shard_format.ShardFormat.manifest`) instead of a second
copy costing more bytes a view than the records themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import SourceConfig
from core.errors import FormatError, UserError
from core.records import format as fmt
from core.records.packed import PackedRecords
from core.records.packed_params import PackedParams
from core.records.replay import RecordLayout, parameter_records
from core.samplers.shard import draw_shard, sample_label
from core.sets import index as sx
from core.sets.index import SetIndex
from core.sets.replay_shards import ReplayShards
from core.sources import Source, load_source_cached
from core.store import storage

if TYPE_CHECKING:
    from core.sets.spec import SetSpec

__all__ = ["Derivation", "PackedShards", "largest_side"]

PROBE = 256  # candidates of shard 0 the check digest covers


def largest_side(source: Source) -> int:
    """The largest side, in pixels, of any real image as stored: the source's own size, or (an
    image contract resizes images of any size) the largest a header of its images gives."""
    if source.contract is None:
        return int(max(source.shape[:2]))
    return max((max(source.raw_size(i)) for i in range(len(source))), default=1)


@dataclass(frozen=True)
class Derivation:
    """What draws a derived set's parameters again: its resolved set config, the job's seed and
    the training split; ``total`` (the writer's) gives a shard's planned count, a reader takes it
    from the shard's name."""

    set_cfg: Any
    seed: int
    source: Source = field(compare=False, repr=False)
    total: int | None = None

    def records(self, layout: RecordLayout, shard: int, count: int, positions: np.ndarray) -> np.ndarray:
        """Records with the parameter and label columns of candidates ``positions`` of shard
        ``shard`` (planned to hold ``count`` samples), as generation drew them."""
        drawn = draw_shard(self.set_cfg, self.source, self.seed, shard, shard * self.set_cfg.samples_per_shard + count)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(drawn)):
            raise FormatError(f"shard {shard}: a record names candidate {int(positions.max())}, the shard draws "
                              f"{len(drawn)}")
        picked = [(kind, PackedParams.on_grid(params)) for kind, params in (drawn[int(p)] for p in positions)]
        labels = np.asarray([sample_label(kind, params, self.source) for kind, params in picked], dtype=np.int64)
        return parameter_records(layout, picked, labels)

    def planned(self, shard: int) -> int:
        spp = self.set_cfg.samples_per_shard
        if self.total is None:
            raise FormatError("a derived set's reader takes a shard's count from its name")
        return min(spp, self.total - shard * spp)

    def check(self, layout: RecordLayout) -> str:
        """A digest of the parameter records the sampler code draws for the first ``PROBE``
        candidates of shard 0 (whatever the set's size): what a reader's code must draw too."""
        count = min(PROBE, self.set_cfg.samples_per_shard)
        probe = self.records(layout, 0, count, np.arange(self.set_cfg.candidates(count)))
        return hashlib.sha256(probe.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class PackedShards(ReplayShards):
    """Replay records of ``layout`` in the bits of ``packing``."""

    kind = "packed"
    encodings = ("packed",)
    writes_manifest = False  # the records hold every manifest column: a per-sample table would double the set
    packing: PackedRecords | None = None
    derivation: Derivation | None = None  # params: derived

    @staticmethod
    def plan_layout(name: str, set_cfg: Any, source: Source, outputs: int) -> PackedRecords:
        """The replay layout and its bits (the config checked the targets are quantised top-k)."""
        layout = ReplayShards.plan_layout(name, set_cfg, source, outputs)
        try:
            packing = PackedRecords(layout, candidates=set_cfg.candidates(set_cfg.samples_per_shard),
                                    side=largest_side(source), value_bits=int(set_cfg.targets.bits),
                                    derived=set_cfg.store.params == "derived")
            packing.bits()  # every column has a range
            return packing
        except FormatError as err:
            raise UserError(f"sets.{name}: store: packed: {err}") from err

    @classmethod
    def planned(cls, spec: SetSpec) -> PackedShards:
        packing = spec.records
        if not isinstance(packing, PackedRecords):
            raise TypeError(f"a packed set is planned with PackedRecords, not {type(packing).__name__}")
        derivation = None
        if packing.derived:
            derivation = Derivation(spec.set_cfg, spec.seed, load_source_cached(spec.source_cfg, "train"), spec.total)
        return cls(packing.layout, packing=packing, derivation=derivation)

    @classmethod
    def made(cls, layout: RecordLayout, source: Source, index: SetIndex) -> PackedShards:
        """The format of an indexed set: its bits as the index pins them, laid out as this code does."""
        pinned = (index.replay or {}).get("packing")
        if not isinstance(pinned, dict):
            raise FormatError("index.json: a packed set's index must give replay.packing")
        try:
            packing = PackedRecords(layout, candidates=int(pinned["candidates"]), side=int(pinned["side"]),
                                    value_bits=int(pinned["value_bits"]), derived=pinned.get("params") == "derived")
            derivation = Derivation(index.set_config(), int((index.config or {})["seed"]), source) \
                if packing.derived else None
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"index.json: replay.packing is malformed ({type(err).__name__}: {err})") from err
        if packing.bits().describe() != pinned.get("bits"):
            raise FormatError("its packed records are laid out in other bits than this version reads (index.json "
                              "replay.packing.bits); regenerate the set")
        drawn_check = derivation.check(layout) if derivation is not None else None
        if derivation is not None and drawn_check != pinned.get("check"):
            raise FormatError(f"its parameters are re-derived from (seed, shard, index), but this version's samplers "
                              f"draw other ones (check {drawn_check}, index.json replay.packing.check "
                              f"{pinned.get('check')}); read it with the version that made it, or regenerate the set")
        return cls(layout, source, packing, derivation)

    @property
    def encoding(self) -> str:
        return "packed"

    @property
    def packer(self) -> PackedRecords:
        if self.packing is None:
            raise FormatError("a packed set's format was made without its bits")
        return self.packing

    def index_entry(self, source_cfg: SourceConfig) -> dict[str, Any]:
        """The replay entry, with the bits pinned (and a record's size: a packed row's)."""
        packer = self.packer
        bits = packer.bits()
        packing = {"candidates": packer.candidates, "side": packer.side, "value_bits": packer.value_bits,
                   "bits": bits.describe(), "row_bytes": bits.row_bytes}
        if self.derivation is not None:
            packing.update(params="derived", check=self.derivation.check(self.layout))
        return {**super().index_entry(source_cfg), "record_bytes": bits.row_bytes, "packing": packing}

    def recorded(self, drawn: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """λ on the grid the bits hold, then as the records give it back: the image is made from that."""
        return super().recorded([(kind, PackedParams.on_grid(params)) for kind, params in drawn])

    def stored(self, records: np.ndarray) -> np.ndarray:
        """The argmax and KL statistics as the bits hold them (:meth:`PackedRecords.snapped`)."""
        return self.packer.snapped(records)

    def records_bytes(self, records: np.ndarray) -> bytes:
        """The rows in bits (refused, never rounded, where a value is off its range or grid)."""
        return fmt.encode_npy(self.packer.pack(records))

    def read_records(self, url: str) -> np.ndarray:
        """A shard's rows unpacked into the structured records every replay reader reads (a
        derived set's parameters drawn again for the shard its name gives)."""
        packer = self.packer
        rows = fmt.read_packed(url, packer.bits().row_bytes)
        if self.derivation is None:
            return packer.unpack(rows)
        named = sx.parse_shard(storage.name_of(url))
        if named is None:
            raise FormatError(f"{url}: a derived set's shard is read under its committed name (shard-N[-C])")
        derivation, (shard, count) = self.derivation, named  # count None: a full shard
        planned = derivation.set_cfg.samples_per_shard if count is None else count
        return packer.unpack(rows, lambda positions: derivation.records(self.layout, shard, planned, positions))

    def check_records(self, shard: int, records: np.ndarray) -> None:
        """A derived set's records must re-derive: their parameter and label columns are what the
        sampler code draws again for them (else the shard would read back other images)."""
        if self.derivation is None or not len(records):
            return
        positions = records["candidate" if self.layout.candidate else "index"].astype(np.int64)
        again = self.derivation.records(self.layout, shard, self.derivation.planned(shard), positions)
        for name in (*(n for n, _, _ in self.layout.params.fields()), *(("label",) if self.layout.labels else ())):
            if not np.array_equal(again[name], records[name]):
                raise FormatError(f"shard {shard}: its {name} column does not re-derive from (seed, shard, index)")

