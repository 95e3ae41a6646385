"""Check a transfer set against the shard contract, reporting problems instead of raising.

A set is trusted through its ``index.json``; this re-reads everything the index promises (shard
sizes and hashes, every record, the manifest) so a damaged or half-copied set is caught before a
student trains on it. Every problem names the shard file (or index/manifest) it was found in.
Each shard is read by the set's format (:mod:`core.sets.formats`): a tar's records decoded, a
replay set's records range-checked and their images rebuilt from the set's own source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.errors import FormatError
from core.records import format as fmt
from core.sets import index as sx
from core.sets.formats import format_of
from core.sets.index import SetIndex, ShardEntry
from core.sets.shard_format import ShardFormat
from core.store import storage
from core.tasks import CLASSIFY, REGRESS, Record
from core.tasks.regression import MU_FIELD, REAL_TARGET_FIELD

# float16 log-probabilities: exp() of each entry is within ~1e-3 relative, summed over C classes.
LOGP_SUM_TOLERANCE = 1e-2
# σ in the metadata vs σ from the stored log σ² (float16 storage: ~1e-3 relative per entry).
SIGMA_TOLERANCE = 1e-2


def _check_gaussian(where: str, record: Record, fields: dict[str, bytes], index: SetIndex) -> list[str]:
    """A regression record: mu and logvar of the index's dtype and dimension, finite, and a
    metadata σ that matches them."""
    if "mu" not in record:
        return [f"{where}: no {MU_FIELD} member, the index says task 'regress'"]
    dims, dtype = index.out_dim, index.target.dtype
    problems = []
    if record["mu"].shape != (dims,) or record["dtype"] != dtype:
        problems.append(f"{where}: mu/logvar are {record['dtype']} {record['mu'].shape}, expected {dtype} ({dims},)")
    if not (np.isfinite(record["mu"]).all() and np.isfinite(record["logvar"]).all()):
        problems.append(f"{where}: mu or logvar is not finite")
    sigma = record["meta"].get("sigma")
    expected = float(np.sqrt(np.exp(record["logvar"].astype(np.float64)).mean()))
    if not isinstance(sigma, int | float) or not abs(sigma - expected) <= SIGMA_TOLERANCE * max(expected, 1e-12):
        problems.append(f"{where}: metadata sigma {sigma!r} differs from the stored logvar's {expected:.6g}")
    real = record["real_target"]
    if real is not None and (real.shape != (dims,) or not np.isfinite(real).all()):
        problems.append(f"{where}: {REAL_TARGET_FIELD} is {real.shape}, not {dims} finite values")
    return problems


def _check_logp(where: str, record: Record, fields: dict[str, bytes], index: SetIndex) -> list[str]:
    """A classification record: the index's kind of target, a log-probability vector over its
    classes that sums to 1, Ĥ in [0, 1], and a .cls label that agrees with the metadata."""
    if "logp" not in record:
        return [f"{where}: a regression record in a set whose index says task 'classify'"]
    classes, target, meta = index.num_classes, index.target, record["meta"]
    stored, dtype = target.stored, target.stored.logp_dtype
    problems = []
    if stored.member not in fields:
        problems.append(f"{where}: no {stored.member} member, the index says targets are {target.kind!r}")
    else:
        raw = fmt.decode_npy(fields[stored.member])
        problems += [f"{where}: {p}" for p in stored.problems(raw, int(target.k or 0), float(target.uniform or 0.0),
                                                              classes or 0)]
    logp = record["logp"]
    if logp.dtype != dtype or logp.ndim != 1 or (classes is not None and logp.shape[0] != classes):
        problems.append(f"{where}: logp is {logp.dtype} {logp.shape}, expected {np.dtype(dtype).name} ({classes},)")
    else:
        total = float(np.exp(logp.astype(np.float64)).sum())
        if not abs(total - 1.0) < LOGP_SUM_TOLERANCE:
            problems.append(f"{where}: exp(logp) sums to {total:.4f}")
    entropy = meta.get("entropy")
    if not isinstance(entropy, int | float) or not 0.0 <= entropy <= 1.0:
        problems.append(f"{where}: entropy {entropy!r} outside [0, 1]")
    if int(meta.get("label", -1)) != record["label"]:
        problems.append(f"{where}: .cls label {record['label']} differs from metadata {meta.get('label')}")
    return problems


# task → what its records must satisfy beyond key, metadata and image
CHECKS: dict[str, Callable[[str, Record, dict[str, bytes], SetIndex], list[str]]] = {
    CLASSIFY.name: _check_logp,
    REGRESS.name: _check_gaussian,
}


def _check_record(index: SetIndex) -> Callable[[str, Record, dict[str, bytes]], list[str]]:
    """What every decoded record must satisfy, whatever its format: the index's image shape and
    its task's checks."""
    expected = index.image.shape if index.image is not None else (None,)

    def check(where: str, record: Record, fields: dict[str, bytes]) -> list[str]:
        image = record["image"]
        problems = []
        if None not in expected and tuple(image.shape) != expected:
            problems.append(f"{where}: image {tuple(image.shape)}, index says {expected}")
        return problems + CHECKS[index.kind.name](where, record, fields, index)

    return check


def _check_shard(set_dir: str, entry: ShardEntry, index: SetIndex, seen: dict[str, str],
                 shard_format: ShardFormat) -> list[str]:
    name = str(entry.name or "")
    if storage.TMP_MARKER in name:
        return [f"index lists temp file {name}"]
    shard = sx.parse_shard_name(name)
    if shard is None:
        return [f"index lists {name!r}, not a shard name"]
    path = storage.join(set_dir, sx.SHARDS_DIR, name)
    if not storage.is_file(path):
        return [f"{name}: listed in the index but missing"]
    problems = []
    size = storage.size(path)
    if size != entry.bytes:
        problems.append(f"{name}: {size} bytes, index says {entry.bytes} (truncated or replaced)")
    if fmt.sha256_file(path) != entry.sha256:
        problems.append(f"{name}: sha256 differs from the index (corrupted)")
    count, found = shard_format.check_shard(path, name, shard, seen, _check_record(index))
    if count is not None and count != entry.samples:
        found.append(f"{name}: {count} samples, index says {entry.samples}")
    return problems + found


def verify_set(set_dir: str | Path, index_file: str | Path | None = None) -> list[str]:
    """Problems found in the set at ``set_dir`` (empty list = the set is sound).

    ``index_file``: check the set against that ``index.json`` (a copy kept from earlier) instead of
    its own: a listed shard never changes, so every index the set ever had still verifies. Its
    manifest belongs to the newest index and is checked only against the set's own. A set that
    grows while it is read (the manifest then holds the new index's rows) is read again.
    """
    set_dir = str(set_dir)
    for _ in range(3):
        try:
            index = sx.read_index(set_dir) if index_file is None else sx.read_index_file(index_file)
        except FormatError as err:
            return [str(err)]
        if index is None:
            where = set_dir if index_file is None else str(index_file)
            return [f"{where}: no {sx.INDEX_NAME} (the set is incomplete; run generate again)"]
        problems = _verify_index(set_dir, index, manifest=index_file is None)
        if index_file is not None or not any(p.startswith(sx.MANIFEST_NAME) for p in problems) \
                or _read_or_none(set_dir) == index:
            return problems
    return problems


def _read_or_none(set_dir: str) -> SetIndex | None:
    try:
        return sx.read_index(set_dir)
    except FormatError:
        return None


def _verify_index(set_dir: str, index: SetIndex, manifest: bool) -> list[str]:
    if index.shards is None:
        return [f"{sx.INDEX_NAME}: no shard list"]
    problems: list[str] = []
    seen: dict[str, str] = {}
    shard_format = format_of(index).checked(index)
    if isinstance(shard_format, str):
        return [shard_format]
    for entry in index.shards:
        problems += _check_shard(set_dir, entry, index, seen, shard_format)
    if index.totals.samples != sum(entry.samples or 0 for entry in index.shards):
        problems.append(f"{sx.INDEX_NAME}: totals.samples {index.totals.samples} differs from its shards")
    if not manifest or not shard_format.writes_manifest:  # a packed set's records are its manifest
        return problems
    try:
        keys = sx.read_manifest(set_dir).column("key").to_pylist()
    except Exception as err:  # noqa: BLE001 — missing or unreadable parquet
        problems.append(f"{sx.MANIFEST_NAME}: unreadable ({type(err).__name__}: {err})")
    else:
        if len(keys) != len(seen) or set(keys) != set(seen):
            problems.append(f"{sx.MANIFEST_NAME}: {len(keys)} rows / {len(set(keys))} keys, "
                            f"the shards hold {len(seen)} samples; key sets differ")
    return problems


def unlisted_shards(set_dir: str | Path, index: SetIndex | None = None) -> list[str]:
    """Shard files on disk that the index (default: the set's own) does not list: a short shard
    since completed under its full name, or shards of a killed run. Readers never see them;
    ``transferset gc`` removes them."""
    index = index if index is not None else _read_or_none(str(set_dir))
    names = {entry.name for entry in index.listed()} if index is not None else set()
    return [name for name in sorted(sx.committed_shards(set_dir)) if name not in names]
