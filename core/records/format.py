"""The bytes of a shard: records (image, metadata, the task's target members) in deterministic tars.

A shard is a tar of samples. Each sample has one key without dots (``000012-000345`` = shard 12,
index 345) and the members ``<key>.png`` (uint8 image; ``<key>.jpg`` in a set stored as JPEG),
``<key>.json`` (metadata with the replay parameters) and its task's target members
(:mod:`core.tasks`: ``logp.npy`` or ``topk.npy`` and ``cls`` for classification, ``mu.npy``,
``logvar.npy`` and ``label.npy`` for regression).
Members are sorted and carry a fixed mtime and owner, so the same samples always give the same
bytes. Nothing here uses pickle: shards decode with plain ``webdataset`` in secure mode. The set
directory around the shards (``index.json``, the manifest, shard names) is :mod:`core.sets.index`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.errors import FormatError
from core.records.target_codec import (  # noqa: F401  (part of the contract's namespace)
    LOGP_DTYPE,
    LOGP_FLOOR,
    compress_topk,
    kl_divergence,
    quantize_logp,
    reconstruct_logp,
    stored_logp,
    target_payload_bytes,
    topk_dtype,
)
from core.store import storage

# The newest format. Format 2 changed one thing: a views-only set is written view-major, each view
# in its own seeded image order (docs/FORMAT.md, "Versions"). Format 3 added packed sets (store:
# packed, replay records in bits). A set's index.json says its content version
# (core.sets.fingerprint.content_version): 3 for a packed set, 2 for any other views-only set, 1 for
# every set whose bytes formats 2 and 3 left alone; a reader of formats 1–2 refuses a packed set.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
VIEWS_ORDER_FORMAT = 2  # the version in which a views-only set's bytes last changed
PACKED_FORMAT = 3  # the version that added packed records


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


def parse_key(key: str) -> tuple[int, int]:
    shard, index = key.split("-")
    return int(shard), int(index)


@dataclass(frozen=True)
class Sample:
    """One record of a shard: its image, its metadata (everything the manifest row needs) and
    its task's target members, encoded (``members``: field name → bytes; see the task's
    ``sample``)."""

    key: str
    image: np.ndarray  # uint8, HWC
    meta: dict[str, Any]
    members: dict[str, bytes]


# ---------------------------------------------------------------- encoding


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise FormatError(f"image must be uint8 HWC with 1 or 3 channels, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """A stored image (PNG or JPEG: PIL reads either) as uint8 HWC."""
    with Image.open(io.BytesIO(data)) as pil:
        array = np.asarray(pil)
    return array[:, :, None] if array.ndim == 2 else array


# A set's image encoding (``store.image``) → the tar member that holds the image.
IMAGE_MEMBERS = {"png": "png", "jpeg": "jpg"}


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG at a fixed quality, no chroma subsampling choices left to defaults that could change."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise FormatError(f"image must be uint8 HWC with 1 or 3 channels, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    out = io.BytesIO()
    pil.save(out, format="JPEG", quality=int(quality), subsampling=0, optimize=False)
    return out.getvalue()


def encode_image(image: np.ndarray, encoding: str = "png", quality: int = 90) -> bytes:
    return encode_png(image) if encoding == "png" else encode_jpeg(image, quality)


def as_stored(images: np.ndarray, encoding: str, quality: int) -> np.ndarray:
    """The pixels a reader will decode from the stored bytes of uint8 NHWC ``images`` — the
    images themselves for lossless PNG, the decoded JPEG otherwise — so that the teachers label
    exactly what is stored."""
    if encoding == "png" or not len(images):
        return images
    return np.stack([decode_png(encode_jpeg(image, quality)) for image in images])


def image_member(fields: dict[str, bytes]) -> str | None:
    """The member holding a record's image (``png``, or ``jpg`` for a JPEG set), if any."""
    return next((name for name in IMAGE_MEMBERS.values() if name in fields), None)


def decode_record_image(fields: dict[str, bytes]) -> np.ndarray:
    member = image_member(fields)
    if member is None:
        raise FormatError(f"sample has no image member ({sorted(IMAGE_MEMBERS.values())}); it has {sorted(fields)}")
    return decode_png(fields[member])


def encode_npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def read_records(path: str | Path, dtype: np.dtype) -> np.ndarray:
    """A replay shard: one structured ``.npy`` of records (:mod:`core.records.replay`) of exactly
    ``dtype``. Raises FormatError for anything else (a damaged or foreign file)."""
    records = _read_npy(path)
    if records.ndim != 1 or records.dtype != dtype:
        raise FormatError(f"records of dtype {records.dtype} and shape {records.shape}, the set's are {dtype} (1-d)")
    return records


def read_packed(path: str | Path, row_bytes: int) -> np.ndarray:
    """A packed replay shard: one ``.npy`` of ``(N, row_bytes)`` uint8 rows
    (:mod:`core.records.packed`). Raises FormatError for anything else."""
    rows = _read_npy(path)
    if rows.ndim != 2 or rows.dtype != np.uint8 or rows.shape[1] != row_bytes:
        raise FormatError(f"packed rows of dtype {rows.dtype} and shape {rows.shape}, the set's are uint8 "
                          f"(N, {row_bytes})")
    return rows


def _read_npy(path: str | Path) -> np.ndarray:
    try:
        with storage.open_read(path) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise FormatError(f"damaged records: {err}") from err


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encode_sample(sample: Sample, encoding: str = "png", quality: int = 90) -> dict[str, bytes]:
    """The tar members of one sample, by field name (``png`` or ``jpg``, ``json``, the target members)."""
    if "." in sample.key:
        raise FormatError(f"sample key {sample.key!r} contains a dot")
    return {IMAGE_MEMBERS[encoding]: encode_image(sample.image, encoding, quality), "json": encode_json(sample.meta),
            **sample.members}


# ---------------------------------------------------------------- tars


def tar_bytes(samples: Sequence[Sample], encoding: str = "png", quality: int = 90) -> bytes:
    """Deterministic tar bytes: samples by key, members by name, mtime 0, owner root; images
    as ``encoding`` (png, or jpeg at ``quality``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in sorted(samples, key=lambda s: s.key):
            for field, data in sorted(encode_sample(sample, encoding, quality).items()):
                info = tarfile.TarInfo(f"{sample.key}.{field}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _has_end_marker(source) -> bool:
    """A complete tar ends with two zero blocks; a cut at a member boundary loses them."""
    size = source.seek(0, io.SEEK_END)
    if size < 1024 or size % 512:
        return False
    source.seek(size - 1024)
    tail = source.read(1024)
    source.seek(0)
    return tail == bytes(1024)


def iter_tar(data_or_path: bytes | str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar's members by key, in file order. Raises FormatError on a damaged tar."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else storage.open_read(data_or_path)
    if not _has_end_marker(source):
        source.close()
        raise FormatError("damaged tar: truncated (no end-of-archive marker)")
    current: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with source, tarfile.open(fileobj=source, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, field = member.name.partition(".")
                if not field:
                    raise FormatError(f"member {member.name!r} has no field extension")
                if key != current:
                    if current is not None:
                        yield current, fields
                    current, fields = key, {}
                handle = tar.extractfile(member)
                if handle is None:
                    raise FormatError(f"member {member.name!r} cannot be read")
                fields[field] = handle.read()
                if len(fields[field]) != member.size:
                    raise FormatError(f"member {member.name!r} is truncated")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise FormatError(f"damaged tar: {err}") from err
    if current is not None:
        yield current, fields


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
