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

A packed set writes no ``manifest.parquet``: its per-sample columns (key, sampler, λ, label,
Ĥ, disagreement, argmax, KL, parameters) are what its records decode to, so ``inspect`` rebuilds
them from the shards (:meth:`~core.sets.shard_format.ShardFormat.manifest`) instead of a second
copy costing more bytes a view than the records themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import SourceConfig
from core.errors import FormatError, UserError
from core.records import format as fmt
from core.records.packed import PackedRecords
from core.records.packed_params import PackedParams
from core.records.replay import RecordLayout
from core.sets.index import SetIndex
from core.sets.replay_shards import ReplayShards
from core.sources import Source

__all__ = ["PackedShards", "largest_side"]


def largest_side(source: Source) -> int:
    """The largest side, in pixels, of any real image as stored: the source's own size, or (an
    image contract resizes images of any size) the largest a header of its images gives."""
    if source.contract is None:
        return int(max(source.shape[:2]))
    return max((max(source.raw_size(i)) for i in range(len(source))), default=1)


@dataclass(frozen=True)
class PackedShards(ReplayShards):
    """Replay records of ``layout`` in the bits of ``packing``."""

    kind = "packed"
    encodings = ("packed",)
    writes_manifest = False  # the records hold every manifest column: a per-sample table would double the set
    packing: PackedRecords | None = None

    @staticmethod
    def plan_layout(name: str, set_cfg: Any, source: Source, outputs: int) -> PackedRecords:
        """The replay layout and its bits (the config checked the targets are quantised top-k)."""
        layout = ReplayShards.plan_layout(name, set_cfg, source, outputs)
        try:
            packing = PackedRecords(layout, candidates=set_cfg.candidates(set_cfg.samples_per_shard),
                                    side=largest_side(source), value_bits=int(set_cfg.targets.bits))
            packing.bits()  # every column has a range
            return packing
        except FormatError as err:
            raise UserError(f"sets.{name}: store: packed: {err}") from err

    @classmethod
    def planned(cls, set_cfg: Any, layout: Any) -> PackedShards:
        if not isinstance(layout, PackedRecords):
            raise TypeError(f"a packed set is planned with PackedRecords, not {type(layout).__name__}")
        return cls(layout.layout, packing=layout)

    @classmethod
    def made(cls, layout: RecordLayout, source: Source, index: SetIndex) -> PackedShards:
        """The format of an indexed set: its bits as the index pins them, laid out as this code does."""
        pinned = (index.replay or {}).get("packing")
        if not isinstance(pinned, dict):
            raise FormatError("index.json: a packed set's index must give replay.packing")
        try:
            packing = PackedRecords(layout, candidates=int(pinned["candidates"]), side=int(pinned["side"]),
                                    value_bits=int(pinned["value_bits"]))
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"index.json: replay.packing is malformed ({type(err).__name__}: {err})") from err
        if packing.bits().describe() != pinned.get("bits"):
            raise FormatError("its packed records are laid out in other bits than this version reads (index.json "
                              "replay.packing.bits); regenerate the set")
        return cls(layout, source, packing)

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
        """A shard's rows unpacked into the structured records every replay reader reads."""
        packer = self.packer
        rows = fmt.read_packed(url, packer.bits().row_bytes)
        return packer.unpack(rows)

