"""The shard contract: the one module that writes and reads transfer sets.

A transfer set is a directory::

    index.json          written last; readers trust it, never a glob
    manifest.parquet    one row per sample (key, shard, sampler, params, label, Ĥ, ...)
    shards/shard-000000.tar ...

Each sample in a tar has one key without dots (``000012-000345`` = shard 12, index 345) and the
members ``<key>.png`` (uint8 image), ``<key>.json`` (metadata with the replay parameters), the
target — ``<key>.logp.npy`` (float16 temperature-free log-probabilities of the ensemble mean) or
``<key>.topk.npy`` (the k largest of them, their class indices and the log of the remaining
mass; :func:`reconstruct_logp` turns it back into a dense vector) — and, when the sample is a
real image with a label, ``<key>.cls``. A regression set (``task: regress`` in its index) stores
the moment-matched Gaussian of the teacher ensemble instead — ``<key>.mu.npy`` and
``<key>.logvar.npy`` (float32 or float16, one value per target dimension) — and, for a real
image, its real target as ``<key>.label.npy`` (float32). Members are sorted and carry a fixed
mtime and owner, so the same samples always give the same bytes. Nothing here uses pickle:
shards decode with plain ``webdataset`` in secure mode.
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

from pipeline import storage
from pipeline.errors import FormatError
from pipeline.storage import TMP_MARKER, atomic_write
from pipeline.target_codec import (  # noqa: F401  (part of the contract's namespace)
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

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
MANIFEST_NAME = "manifest.parquet"
SHARDS_DIR = "shards"
LOGP_FIELD = "logp.npy"
TOPK_FIELD = "topk.npy"
MU_FIELD = "mu.npy"
LOGVAR_FIELD = "logvar.npy"
REAL_TARGET_FIELD = "label.npy"
REGRESSION_DTYPES = ("float32", "float16")

MANIFEST_COLUMNS = (
    "key", "shard", "index", "sampler", "lam", "label", "entropy", "disagreement",
    "teacher_argmax", "target_kl", "params",
)
# Regression rows: σ = √(mean over dims of the stored σ²), and its aleatoric / epistemic parts.
REGRESSION_MANIFEST_COLUMNS = ("key", "shard", "index", "sampler", "lam", "sigma", "aleatoric", "epistemic", "params")
__all__ = ["LOGP_FLOOR", "FormatError", "atomic_write", "decode_fields", "read_index", "shard_urls"]


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def shard_path(set_dir: str | Path, shard: int) -> Path:
    """A shard's path in a local set (see :func:`shard_url` for any set)."""
    return storage.local_path(set_dir) / SHARDS_DIR / shard_name(shard)


def shard_url(set_dir: str | Path, shard: int) -> str:
    return storage.join(set_dir, SHARDS_DIR, shard_name(shard))


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


def parse_key(key: str) -> tuple[int, int]:
    shard, index = key.split("-")
    return int(shard), int(index)


@dataclass(frozen=True)
class Sample:
    """One record of a shard. ``meta`` holds everything the manifest row needs. ``topk`` > 0
    stores the target as top-k instead of the dense vector. A regression record has ``mu`` and
    ``logvar`` (stored as ``dtype``) instead of ``logp``, and ``real_target`` for a real image."""

    key: str
    image: np.ndarray  # uint8, HWC
    logp: np.ndarray | None  # log p̄ over classes, temperature-free (None for regression)
    meta: dict[str, Any]
    label: int | None = None
    topk: int = 0
    mu: np.ndarray | None = None  # regression: (D,) mean of the ensemble's Gaussian
    logvar: np.ndarray | None = None  # regression: (D,) log of its variance
    real_target: np.ndarray | None = None  # regression: (D,) real target of a real image
    dtype: str = "float32"  # regression: stored dtype of mu and logvar


# ---------------------------------------------------------------- encoding


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise FormatError(f"image must be uint8 HWC with 1 or 3 channels, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as pil:
        array = np.asarray(pil)
    return array[:, :, None] if array.ndim == 2 else array


def encode_npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encode_sample(sample: Sample) -> dict[str, bytes]:
    """The tar members of one sample, by field name (``png``, ``json``, target, ``cls``)."""
    if "." in sample.key:
        raise FormatError(f"sample key {sample.key!r} contains a dot")
    fields = {"png": encode_png(sample.image), "json": encode_json(sample.meta)}
    if sample.mu is not None:
        return {**fields, **encode_gaussian(sample)}
    if sample.logp is None:
        raise FormatError(f"sample {sample.key} has no target (logp, or mu and logvar)")
    if sample.topk:
        fields[TOPK_FIELD] = encode_npy(compress_topk(sample.logp, sample.topk))
    else:
        fields[LOGP_FIELD] = encode_npy(quantize_logp(sample.logp))
    if sample.label is not None and sample.label >= 0:
        fields["cls"] = str(int(sample.label)).encode("ascii")
    return fields


def encode_gaussian(sample: Sample) -> dict[str, bytes]:
    """The regression members of a sample: mu, logvar (and label for a real image)."""
    if sample.dtype not in REGRESSION_DTYPES or sample.logvar is None:
        raise FormatError(f"sample {sample.key}: regression targets need mu, logvar and a dtype in "
                          f"{REGRESSION_DTYPES}, got dtype {sample.dtype!r}")
    mu = np.asarray(sample.mu, dtype=np.float64).reshape(-1)
    logvar = np.asarray(sample.logvar, dtype=np.float64).reshape(-1)
    if mu.shape != logvar.shape or not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
        raise FormatError(f"sample {sample.key}: mu {mu.shape} and logvar {logvar.shape} must be finite, same shape")
    fields = {MU_FIELD: encode_npy(mu.astype(sample.dtype)), LOGVAR_FIELD: encode_npy(logvar.astype(sample.dtype))}
    if sample.real_target is not None:
        fields[REAL_TARGET_FIELD] = encode_npy(np.asarray(sample.real_target, dtype=np.float32).reshape(-1))
    return fields


def decode_gaussian(fields: dict[str, bytes]) -> dict[str, Any]:
    """A regression record: image, meta, mu and logvar (float32), real target (None if none)."""
    missing = {"png", "json", LOGVAR_FIELD} - fields.keys()
    if missing:
        raise FormatError(f"regression sample is missing members {sorted(missing)}")
    mu, logvar = decode_npy(fields[MU_FIELD]), decode_npy(fields[LOGVAR_FIELD])
    if mu.ndim != 1 or mu.shape != logvar.shape or mu.dtype.name not in REGRESSION_DTYPES \
            or logvar.dtype != mu.dtype:
        raise FormatError(f"mu {mu.dtype} {mu.shape} and logvar {logvar.dtype} {logvar.shape} must be float32 or "
                          f"float16 vectors of one shape")
    real = decode_npy(fields[REAL_TARGET_FIELD]) if REAL_TARGET_FIELD in fields else None
    if real is not None and real.shape != mu.shape:
        raise FormatError(f"{REAL_TARGET_FIELD} has shape {real.shape}, mu has {mu.shape}")
    return {"image": decode_png(fields["png"]), "meta": json.loads(fields["json"]), "mu": mu.astype(np.float32),
            "logvar": logvar.astype(np.float32), "real_target": real, "label": -1, "dtype": mu.dtype.name}


def decode_fields(fields: dict[str, bytes]) -> dict[str, Any]:
    """Decode one sample's raw members without pickle: image, meta, logp (dense, whatever the
    stored target kind), label (-1 if none). A regression record (with ``mu.npy``) gives
    :func:`decode_gaussian`'s fields instead of ``logp``."""
    if MU_FIELD in fields:
        return decode_gaussian(fields)
    target = LOGP_FIELD if LOGP_FIELD in fields else TOPK_FIELD
    missing = {"png", "json", target} - fields.keys()
    if missing:
        raise FormatError(f"sample is missing members {sorted(missing)}")
    raw = decode_npy(fields[target])
    if target == TOPK_FIELD and (raw.dtype.names is None or set(raw.dtype.names) != set(topk_dtype(1, 2).names)):
        raise FormatError(f"{TOPK_FIELD} has dtype {raw.dtype}, not a top-k record")
    return {
        "image": decode_png(fields["png"]),
        "meta": json.loads(fields["json"]),
        "logp": raw if target == LOGP_FIELD else reconstruct_logp(raw),
        "label": int(fields["cls"]) if "cls" in fields else -1,
    }


# ---------------------------------------------------------------- tars


def tar_bytes(samples: Sequence[Sample]) -> bytes:
    """Deterministic tar bytes: samples by key, members by name, mtime 0, owner root."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in sorted(samples, key=lambda s: s.key):
            for field, data in sorted(encode_sample(sample).items()):
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


# ---------------------------------------------------------------- commits


def committed_shards(set_dir: str | Path) -> dict[int, str]:
    """Shards whose rename happened: exactly the complete ones (temp files are ignored)."""
    shards_dir = storage.join(set_dir, SHARDS_DIR)
    found: dict[int, str] = {}
    for name in storage.list_names(shards_dir):
        if name.startswith("shard-") and name.endswith(".tar") and TMP_MARKER not in name:
            found[int(name[len("shard-"):-len(".tar")])] = storage.join(shards_dir, name)
    return found


def remove_stale_temps(set_dir: str | Path) -> int:
    """Delete temp files left by a killed writer; returns how many."""
    removed = 0
    for parent in (str(set_dir), storage.join(set_dir, SHARDS_DIR)):
        for name in storage.list_names(parent):
            if TMP_MARKER in name:
                storage.remove(storage.join(parent, name))
                removed += 1
    return removed


# ---------------------------------------------------------------- index and manifest


def write_index(set_dir: str | Path, index: dict[str, Any]) -> None:
    data = json.dumps({"format": FORMAT_VERSION, **index}, indent=1, sort_keys=True).encode()
    atomic_write(storage.join(set_dir, INDEX_NAME), data)


def read_index(set_dir: str | Path) -> dict[str, Any] | None:
    """The set's index, or None when the set was never completed."""
    path = storage.join(set_dir, INDEX_NAME)
    if not storage.is_file(path):
        return None
    try:
        index = json.loads(storage.read_bytes(path))
    except (OSError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: unreadable index ({err})") from err
    if index.get("format") != FORMAT_VERSION:
        raise FormatError(f"{path}: format {index.get('format')!r}, this version reads {FORMAT_VERSION}")
    return index


def manifest_row(meta: dict[str, Any]) -> dict[str, Any]:
    """A sample's manifest row, derived from its stored metadata (the tar is the source of truth)."""
    params = meta.get("params", {})
    lam = params.get("lam")
    if "sigma" in meta:  # a regression record
        return {"key": meta["key"], "shard": int(meta["shard"]), "index": int(meta["index"]),
                "sampler": meta["sampler"], "lam": float("nan") if lam is None else float(lam),
                **{name: float(meta[name]) for name in ("sigma", "aleatoric", "epistemic")},
                "params": json.dumps(params, sort_keys=True)}
    kl = meta.get("target_kl")
    return {
        "key": meta["key"],
        "shard": int(meta["shard"]),
        "index": int(meta["index"]),
        "sampler": meta["sampler"],
        "lam": float("nan") if lam is None else float(lam),
        "label": int(meta.get("label", -1)),
        "entropy": float(meta["entropy"]),
        "disagreement": float(meta["disagreement"]),
        "teacher_argmax": int(meta["teacher_argmax"]),
        "target_kl": float("nan") if kl is None else float(kl),
        "params": json.dumps(params, sort_keys=True),
    }


def write_manifest(set_dir: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda row: row["key"])
    columns = REGRESSION_MANIFEST_COLUMNS if ordered and "sigma" in ordered[0] else MANIFEST_COLUMNS
    table = pa.table({name: [row[name] for row in ordered] for name in columns})
    out = io.BytesIO()
    pq.write_table(table, out)
    atomic_write(storage.join(set_dir, MANIFEST_NAME), out.getvalue())


def read_manifest(set_dir: str | Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(storage.read_bytes(storage.join(set_dir, MANIFEST_NAME)))).read()


def shard_urls(set_dir: str | Path, index: dict[str, Any] | None = None) -> list[str]:
    """Locations of the set's shards as listed in its index (never a glob): local paths for a
    local or ``file://`` set, URLs otherwise."""
    index = index if index is not None else read_index(set_dir)
    if index is None:
        raise FormatError(f"{set_dir}: no {INDEX_NAME}; the set is incomplete (run generate again)")
    base = str(storage.local_path(set_dir)) if storage.is_local(set_dir) else str(set_dir)
    return [storage.join(base, SHARDS_DIR, shard["name"]) for shard in index["shards"]]
