"""Make and commit one shard: the pure per-shard steps the driver runs on Ray.

``make_shard`` draws and applies a shard's sampler parameters; ``write_shard`` keeps the
candidates to write (all valid ones, or the most uncertain ones), turns the teacher outputs into
records (dense or top-k targets) and commits the tar atomically (temp → fsync → rename), so a
retried or resumed shard replaces itself with identical bytes. ``summary_from_tar`` rebuilds
the summary of a shard committed by an earlier (maybe killed) run. No Ray here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import format as fmt
from pipeline import storage
from pipeline.config import SelectConfig, SetConfig
from stages.gaussian import GaussianOutput
from stages.samplers import SAMPLERS, draw_shard, sample_label, set_size, shard_images
from stages.samplers.generating import Generate, generate_images, set_generator
from stages.sources import Source, load_source_cached
from stages.targets import EnsembleOutput

# Statistics in the JSON metadata are rounded so the text does not pretend float64 precision.
STAT_DIGITS = 6


Drawn = list[tuple[str, dict[str, Any]]]


def make_shard(
    set_cfg: SetConfig | str, source_cfg_json: str, seed: int, shard: int, generate: Generate | None = None,
) -> tuple[np.ndarray, Drawn, np.ndarray]:
    """Images (uint8 NHWC), ``(sampler, parameters)`` and real labels (-1 if none) of every
    candidate of one shard. For a regression source the labels are the real targets instead,
    float32 (N, D), NaN where a sample has none (mixes, synthetic images).

    A pure function of its arguments: the RNG of every sample is seeded from (seed, shard,
    index), the source is opened from its config (cached per process). ``generate`` makes the
    images of ``gan`` samples (default: the set's generator in this process, on the CPU).
    """
    cfg = SetConfig.model_validate_json(set_cfg) if isinstance(set_cfg, str) else set_cfg
    source = load_source_cached(source_cfg_json, "train")
    drawn = draw_shard(cfg, source, seed, shard, set_size(cfg, source))
    if not drawn:
        raise ValueError(f"shard {shard} is past the end of the set ({set_size(cfg, source)} samples)")
    generator = set_generator(cfg)
    if generate is None and generator is not None:
        generate = lambda params: generate_images(generator, params, source_cfg_json)  # noqa: E731
    images = shard_images(drawn, source, generate)
    if source.task == "regress":
        return images, drawn, real_targets(drawn, source)
    labels = np.asarray([sample_label(kind, params, source) for kind, params in drawn], dtype=np.int64)
    return images, drawn, labels


def real_targets(drawn: Drawn, source: Source) -> np.ndarray:
    """Real regression targets of label-preserving samples of real images; NaN rows otherwise."""
    assert source.targets is not None
    rows = np.full((len(drawn), source.out_dim), np.nan, dtype=np.float32)
    for n, (kind, params) in enumerate(drawn):
        if SAMPLERS[kind].keeps_label:
            rows[n] = source.targets[params["image"]]
    return rows


Output = EnsembleOutput | GaussianOutput


def uncertainty(output: Output, by: str) -> np.ndarray:
    """The score ``select`` ranks by. Classification: Ĥ or disagreement. Regression: the
    Gaussian's differential entropy ½·Σ_d log σ_d² (+ a constant) for ``entropy``, the epistemic
    variance (the members' disagreement) for ``disagreement``."""
    if isinstance(output, GaussianOutput):
        return output.logvar.astype(np.float64).sum(1) if by == "entropy" else output.epistemic.astype(np.float64)
    return (output.entropy if by == "entropy" else output.disagreement).astype(np.float64)


def choose(output: Output, count: int, select: SelectConfig | None) -> np.ndarray:
    """Candidate indices to write, ascending. Without ``select``: every valid candidate. With it:
    the ``count`` most uncertain valid ones (ties go to the lower index, so it is deterministic)."""
    valid = np.flatnonzero(output.valid)
    if select is None:
        return valid
    score = uncertainty(output, select.by)[valid]
    ranked = valid[np.lexsort((valid, -score))]
    return np.sort(ranked[:count])


def _stat(value: float) -> float:
    """A statistic for the JSON metadata: 6 significant digits (no pretended float64 precision)."""
    return float(f"{float(value):.6g}")


def _regression_sample(key: str, image: np.ndarray, meta: dict[str, Any], output: GaussianOutput, candidate: int,
                       real: np.ndarray, dtype: str) -> fmt.Sample:
    """A regression record: σ = √(mean_d σ_d²) and its aleatoric / epistemic parts in the metadata."""
    variance = float(np.exp(output.logvar[candidate].astype(np.float64)).mean())
    meta = {**meta, "sigma": _stat(np.sqrt(variance)), "aleatoric": _stat(output.aleatoric[candidate]),
            "epistemic": _stat(output.epistemic[candidate])}
    return fmt.Sample(key=key, image=image, logp=None, meta=meta, mu=output.mu[candidate],
                      logvar=output.logvar[candidate], real_target=None if np.isnan(real).any() else real,
                      dtype=dtype)


def write_shard(
    set_dir: str | Path, shard: int, images: np.ndarray, drawn: Drawn, labels: np.ndarray, output: Output,
    *, count: int | None = None, select: SelectConfig | None = None, topk: int = 0, dtype: str = "float32",
) -> dict[str, Any]:
    """Commit shard ``shard`` and return its summary: ``{shard, name, samples, bytes, sha256,
    rejected, planned, rows}``.

    ``count`` is the number of samples the shard should hold (default: one per candidate); with
    ``select`` the most uncertain ``count`` candidates are kept. Invalid candidates (non-finite
    teacher outputs) are never written and count as rejected. A :class:`GaussianOutput` makes
    regression records (``labels`` are then the real targets, see :func:`make_shard`) with μ and
    log σ² stored as ``dtype``.
    """
    candidates = len(drawn)
    count = candidates if count is None else count
    if not (len(images) == len(labels) == len(output) == candidates):
        raise ValueError(f"shard {shard}: {len(images)} images, {candidates} params, {len(labels)} labels, "
                         f"{len(output)} targets")
    kept = choose(output, count, select)
    samples: list[fmt.Sample] = []
    for position, candidate in enumerate(kept):
        index = position if select is not None else int(candidate)
        key = fmt.sample_key(shard, index)
        kind, params = drawn[candidate]
        meta: dict[str, Any] = {"key": key, "shard": int(shard), "index": index, "sampler": kind, "params": params}
        if select is not None:
            meta["candidate"] = int(candidate)
        if isinstance(output, GaussianOutput):
            samples.append(_regression_sample(key, images[candidate], meta, output, int(candidate),
                                              labels[candidate], dtype))
            continue
        label = int(labels[candidate])
        meta.update({
            "label": label,
            "entropy": round(float(output.entropy[candidate]), STAT_DIGITS),
            "disagreement": round(float(output.disagreement[candidate]), STAT_DIGITS),
            "teacher_argmax": int(output.argmax[candidate]),
        })
        if topk:
            kl = fmt.kl_divergence(output.logp[candidate], fmt.stored_logp(output.logp[candidate], topk))
            meta["target_kl"] = _stat(max(float(kl), 0.0))
        samples.append(fmt.Sample(key=key, image=images[candidate], logp=output.logp[candidate], meta=meta,
                                  label=label if label >= 0 else None, topk=topk))
    data = fmt.tar_bytes(samples)
    fmt.atomic_write(fmt.shard_url(set_dir, shard), data)
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
    name = storage.name_of(path)
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
        "bytes": storage.size(path),
        "sha256": fmt.sha256_file(path),
        "rejected": max(planned - len(rows), 0),
        "planned": planned,
        "rows": rows,
    }
