"""The set fingerprint: equal fingerprints mean equal shards, so a directory can be reused.

It covers everything that changes a shard's bytes — format version, source identity, sampler
config, samples per shard, teacher weights (by checkpoint sha256, in order), target precision,
seed — and deliberately not the sample count: asking for more samples with the same
fingerprint only adds shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from pipeline.config import SetConfig
from pipeline.format import FORMAT_VERSION

TARGET_PRECISION = "float16"


def fingerprint_payload(
    set_cfg: SetConfig, source_identity: dict[str, Any], teacher_sha256s: Sequence[str], seed: int
) -> dict[str, Any]:
    """The canonical content that is hashed (stored in nothing; handy when debugging a refusal)."""
    return {
        "format": FORMAT_VERSION,
        "source": source_identity,
        "sampler": set_cfg.sampler.model_dump(mode="json"),
        "samples_per_shard": set_cfg.samples_per_shard,
        "teachers": list(teacher_sha256s),
        "precision": TARGET_PRECISION,
        "seed": int(seed),
    }


def set_fingerprint(set_cfg: SetConfig, source: Any, teacher_sha256s: Sequence[str], seed: int) -> str:
    """sha256 hex of the canonical JSON of :func:`fingerprint_payload`. ``source`` is a
    ``stages.sources.Source`` (only its ``identity`` is used) or an identity dict."""
    identity = source if isinstance(source, dict) else source.identity
    payload = fingerprint_payload(set_cfg, identity, teacher_sha256s, seed)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
