"""Fixed-width rows of bit fields: what a packed replay record is made of.

A packed record stores each value in the bits its range needs — a class index of 1 000 classes
in 10 bits, a flip in 1, a λ on a 256-step grid in 8 — one after the other, least significant
bit first, and the row padded to whole bytes. A shard's rows are one ``(N, row_bytes)`` uint8
array, so numpy alone reads them (``np.unpackbits``) and a row never depends on another.

:class:`BitLayout` lists the fields of a row; :meth:`BitLayout.pack` and
:meth:`BitLayout.unpack` move whole columns at once (N rows, each field a ``(N,)`` or
``(N, count)`` array of unsigned integers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import FormatError


def bits_for(count: int) -> int:
    """The bits that hold every integer in ``[0, count)`` (at least 1)."""
    return max(int(count - 1).bit_length(), 1)


@dataclass(frozen=True)
class BitField:
    """``count`` unsigned values of ``bits`` bits each, under ``name``."""

    name: str
    bits: int
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32 or self.count < 1:
            raise FormatError(f"bit field {self.name!r}: {self.count} value(s) of {self.bits} bits is not storable")

    @property
    def width(self) -> int:
        return self.bits * self.count


@dataclass(frozen=True)
class BitLayout:
    """The fields of one packed row, in order."""

    fields: tuple[BitField, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise FormatError(f"bit layout names a field twice: {names}")

    @property
    def row_bits(self) -> int:
        return sum(f.width for f in self.fields)

    @property
    def row_bytes(self) -> int:
        return (self.row_bits + 7) // 8

    def describe(self) -> list[list[object]]:
        """``[[name, bits, count], …]``: the layout as index.json records it."""
        return [[f.name, f.bits, f.count] for f in self.fields]

    @classmethod
    def described(cls, entries: list[list[object]]) -> BitLayout:
        try:
            return cls(tuple(BitField(str(name), int(bits), int(count)) for name, bits, count in entries))
        except (TypeError, ValueError) as err:
            raise FormatError(f"a packed layout is a list of [name, bits, count] entries, not {entries!r}") from err

    def pack(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(N, row_bytes)`` uint8 rows of the fields' values (each ``(N,)`` or ``(N, count)``)."""
        missing = [f.name for f in self.fields if f.name not in columns]
        if missing:
            raise FormatError(f"packing rows without the field(s) {missing}")
        rows = len(next(iter(columns.values()))) if columns else 0
        bits = np.zeros((rows, self.row_bytes * 8), dtype=np.uint8)
        start = 0
        for field in self.fields:
            values = np.asarray(columns[field.name]).reshape(rows, field.count)
            if values.size and (values.min() < 0 or int(values.max()) >> field.bits):
                raise FormatError(f"field {field.name!r} holds {int(values.min())}..{int(values.max())}, "
                                  f"outside its {field.bits} bits")
            shifts = np.arange(field.bits, dtype=np.uint64)
            field_bits = (values.astype(np.uint64)[:, :, None] >> shifts) & np.uint64(1)
            bits[:, start:start + field.width] = field_bits.reshape(rows, field.width)
            start += field.width
        return np.packbits(bits, axis=1, bitorder="little")

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """The fields of ``(N, row_bytes)`` rows: ``(N,)`` uint32 arrays, ``(N, count)`` where
        ``count`` > 1."""
        packed = np.asarray(packed, dtype=np.uint8)
        if packed.ndim != 2 or packed.shape[1] != self.row_bytes:
            raise FormatError(f"packed rows of shape {packed.shape}, expected (N, {self.row_bytes})")
        bits = np.unpackbits(packed, axis=1, bitorder="little")
        out, start = {}, 0
        for field in self.fields:
            chunk = bits[:, start:start + field.width].reshape(len(packed), field.count, field.bits)
            weights = np.left_shift(np.uint64(1), np.arange(field.bits, dtype=np.uint64))
            values = (chunk.astype(np.uint64) * weights).sum(axis=2).astype(np.uint32)
            out[field.name] = values[:, 0] if field.count == 1 else values
            start += field.width
        return out
