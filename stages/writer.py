"""Make and commit one shard: the pure per-shard steps the driver runs on Ray.

``make_shard`` draws and applies a shard's sampler parameters; ``write_shard`` turns the
teacher outputs into records and commits the tar atomically (temp → fsync → rename), so a
retried or resumed shard replaces itself with identical bytes. ``summary_from_tar`` rebuilds
the summary of a shard committed by an earlier (maybe killed) run. No Ray here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import format as fmt
from pipeline.config import SetConfig
from stages.samplers import apply_params, draw_shard, sample_label, set_size
from stages.sources import load_source_cached
from stages.targets import EnsembleOutput

# Statistics in the JSON metadata are rounded so the text does not pretend float64 precision.
STAT_DIGITS = 6


def make_shard(
    set_cfg: SetConfig | str, source_cfg_json: str, seed: int, shard: int
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Images (uint8 NHWC), sampler parameters and real labels (-1 if none) of one shard.

    A pure function of its arguments: the RNG of every sample is seeded from (seed, shard,
    index), the source is opened from its config (cached per process).
    """
    cfg = SetConfig.model_validate_json(set_cfg) if isinstance(set_cfg, str) else set_cfg
    source = load_source_cached(source_cfg_json, "train")
    total = set_size(cfg.sampler, source, cfg.samples)
    params = draw_shard(cfg.sampler, source, seed, shard, cfg.samples_per_shard, total)
    if not params:
        raise ValueError(f"shard {shard} is past the end of the set ({total} samples)")
    kind = cfg.sampler.kind
    images = np.stack([apply_params(kind, p, source) for p in params])
    labels = np.asarray([sample_label(kind, p, source) for p in params], dtype=np.int64)
    return images, params, labels


def write_shard(
    set_dir: str | Path, shard: int, images: np.ndarray, params_list: list[dict[str, Any]], sampler: str,
    labels: np.ndarray, output: EnsembleOutput,
) -> dict[str, Any]:
    """Commit shard ``shard`` (invalid samples are skipped and counted) and return its summary:
    ``{shard, name, samples, bytes, sha256, rejected, planned, rows}``."""
    count = len(params_list)
    if not (len(images) == len(labels) == len(output) == count):
        raise ValueError(f"shard {shard}: {len(images)} images, {count} params, {len(labels)} labels, "
                         f"{len(output)} targets")
    samples: list[fmt.Sample] = []
    for index in range(count):
        if not output.valid[index]:
            continue
        key = fmt.sample_key(shard, index)
        label = int(labels[index])
        meta = {
            "key": key,
            "shard": int(shard),
            "index": index,
            "sampler": sampler,
            "params": params_list[index],
            "label": label,
            "entropy": round(float(output.entropy[index]), STAT_DIGITS),
            "disagreement": round(float(output.disagreement[index]), STAT_DIGITS),
            "teacher_argmax": int(output.argmax[index]),
        }
        samples.append(fmt.Sample(key=key, image=images[index], logp=output.logp[index], meta=meta,
                                  label=label if label >= 0 else None))
    data = fmt.tar_bytes(samples)
    fmt.atomic_write(fmt.shard_path(set_dir, shard), data)
    return {
        "shard": int(shard),
        "name": fmt.shard_name(shard),
        "samples": len(samples),
        "bytes": len(data),
        "sha256": fmt.sha256_bytes(data),
        "rejected": count - len(samples),
        "planned": count,
        "rows": [fmt.manifest_row(s.meta) for s in samples],
    }


def summary_from_tar(path: str | Path, planned: int | None = None) -> dict[str, Any]:
    """The summary ``write_shard`` returned for a committed tar, rebuilt from its JSON members.

    ``planned`` is the number of samples the shard was drawn with; without it the highest
    stored index + 1 is used (rejected samples at the very end are then not counted).
    Raises ``FormatError`` for a damaged tar.
    """
    path = Path(path)
    name = path.name
    if not (name.startswith("shard-") and name.endswith(".tar")):
        raise fmt.FormatError(f"{path}: not a shard file name")
    shard = int(name[len("shard-"):-len(".tar")])
    rows = []
    for key, fields in fmt.iter_tar(path):
        if "json" not in fields:
            raise fmt.FormatError(f"{path}: sample {key} has no json member")
        meta = json.loads(fields["json"])
        if meta.get("key") != key or fmt.parse_key(key)[0] != shard:
            raise fmt.FormatError(f"{path}: sample {key} does not belong to shard {shard}")
        rows.append(fmt.manifest_row(meta))
    last = max((row["index"] for row in rows), default=-1) + 1
    planned = last if planned is None else planned
    return {
        "shard": shard,
        "name": name,
        "samples": len(rows),
        "bytes": path.stat().st_size,
        "sha256": fmt.sha256_file(path),
        "rejected": max(planned - len(rows), 0),
        "planned": planned,
        "rows": rows,
    }
