"""The set fingerprint: equal fingerprints mean equal shards, so a directory can be reused.

It covers everything that changes a shard's bytes — content version, source identity (incl. the
class subset, fraction and imbalance, and a ``pad`` or ``flip`` other than the reader's default:
``core.sources.augmentation_identity``), samplers (each one's own options and share), samples per
shard, target format (dense / top-k and k; regression: Gaussian and its dtype), uncertainty
selection, teacher weights (by checkpoint sha256, in order), teacher precision (autocast) and
seed — and deliberately not the sample count nor where the set is written: asking for more
samples with the same fingerprint only adds shards, and any job that asks for the same set finds
it in the cache. Asking for fewer is refused by the planner (``pipeline.generate.plan.check_not_smaller``):
the shards past the smaller count belong to whoever asked for more.

The payload's ``format`` is the set's *content version* (:func:`content_version`), the format
version in which this kind of set's bytes last changed — not ``FORMAT_VERSION``. Format 2
rewrote only views-only sets (view-major order), so their fingerprint changes: an ``out: auto``
entry or a directory of the old order is never grown with shards of the new one. Every other set
keeps the bytes, hence the fingerprint and the cache entry, it had in format 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from core.config import SetConfig, StoreConfig
from core.records.format import PACKED_FORMAT, VIEWS_ORDER_FORMAT
from core.records.targets import stored_target

TARGET_PRECISION = "float16"
# Characters of the fingerprint in a cache directory name (48 bits: collisions are not a concern
# at cache scale, and the full fingerprint in index.json is checked anyway).
PREFIX_CHARS = 12


def content_version(set_cfg: SetConfig) -> int:
    """The format version in which a set like ``set_cfg`` last changed its bytes: 3 for a packed
    set (format 3 added them), 2 for another views-only set (format 2's order), 1 for the rest
    (formats 2 and 3 left them alone)."""
    if set_cfg.store.kind == "packed":
        return PACKED_FORMAT
    return VIEWS_ORDER_FORMAT if set_cfg.enumerates_source() else 1


def fingerprint_payload(
    set_cfg: SetConfig, source_identity: dict[str, Any], teacher_sha256s: Sequence[str], seed: int,
    autocast: str = "none",
) -> dict[str, Any]:
    """The canonical content that is hashed (handy when debugging a refusal)."""
    samplers = [s.identity() for s in set_cfg.sampler_list()]
    options = set_cfg.targets
    targets: Any = stored_target(options).identity(options)
    if options.dtype is not None:  # a regression set: dense μ and log σ² of this dtype
        targets = {"kind": "gaussian", "dtype": options.dtype}
    store = set_cfg.store
    stored = {} if store == StoreConfig() else \
        {"store": store.model_dump(mode="json", exclude=store.unused_keys())}
    return {
        **stored,  # PNG sets keep the fingerprint they had before JPEG storage existed
        "format": content_version(set_cfg),
        "source": source_identity,
        "sampler": samplers[0] if set_cfg.sampler is not None else samplers,
        "samples_per_shard": set_cfg.samples_per_shard,
        "targets": targets,
        "select": None if set_cfg.select is None else set_cfg.select.model_dump(mode="json"),
        "teachers": list(teacher_sha256s),
        "precision": TARGET_PRECISION if autocast == "none" else f"{TARGET_PRECISION}/autocast-{autocast}",
        "seed": int(seed),
    }


def set_fingerprint(set_cfg: SetConfig, source: Any, teacher_sha256s: Sequence[str], seed: int,
                    autocast: str = "none") -> str:
    """sha256 hex of the canonical JSON of :func:`fingerprint_payload`. ``source`` is a
    ``core.sources.Source`` (only its ``identity`` is used) or an identity dict."""
    identity = source if isinstance(source, dict) else source.identity
    payload = fingerprint_payload(set_cfg, identity, teacher_sha256s, seed, autocast)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
