"""``transferset inspect``: what a transfer set holds, from its manifest and a sample of records.

Reports counts per sampler, the normalised teacher entropy Ĥ (XCL eq. 4) and ensemble
disagreement, mean Ĥ binned by the mixing weight λ (the table behind XCL fig. 1), the histogram
of the teachers' argmax class, the bytes the targets take per sample and the KL divergence
between the teachers' full distribution and what a reader gets back from the stored target.
The KL is measured by running the set's teacher checkpoints (when they are still at the paths
the index lists, with the same sha256) on the stored images of a sample of records; otherwise
it is the mean of the ``target_kl`` the writer recorded. Regression sets are described by
:mod:`pipeline.inspect_regression` (predicted σ, its aleatoric and epistemic parts, σ by λ).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import format as fmt
from pipeline.errors import UserError

LAMBDA_BINS = 10
GRID_SAMPLES = 32


def _records(set_dir: str, index: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` records of the set, spread over its shards (first records of each)."""
    urls = fmt.shard_urls(set_dir, index)
    per_shard = max(1, math.ceil(limit / max(len(urls), 1)))
    records: list[dict[str, Any]] = []
    for url in urls:
        for taken, (_, fields) in enumerate(fmt.iter_tar(url)):
            if taken == per_shard or len(records) == limit:
                break
            records.append(fmt.decode_fields(fields))
        if len(records) == limit:
            break
    return records


def stored_bytes(set_dir: str, index: dict[str, Any], members: tuple[str, ...]) -> dict[str, float]:
    """Bytes per sample of the target's tar members (with .npy headers; first shard) and of whole shards."""
    sizes = [sum(len(fields[m]) for m in members) for _, fields in fmt.iter_tar(fmt.shard_urls(set_dir, index)[0])]
    return {"target_npy_bytes_per_sample": float(np.mean(sizes)) if sizes else 0.0,
            "shard_bytes_per_sample": sum(s["bytes"] for s in index["shards"]) / max(index["totals"]["samples"], 1)}


def _target_bytes(set_dir: str, index: dict[str, Any]) -> dict[str, float]:
    """Payload bytes of one target, its tar member with .npy header, and whole tar bytes, per sample."""
    member = fmt.TOPK_FIELD if index["target"].get("kind") == "topk" else fmt.LOGP_FIELD
    stored = stored_bytes(set_dir, index, (member,))
    classes = int(index["num_classes"])
    return {
        "target_bytes_per_sample": fmt.target_payload_bytes(classes, int(index["target"].get("k", 0))),
        "target_npy_bytes_per_sample": stored["target_npy_bytes_per_sample"],
        "dense_float16_bytes_per_sample": fmt.target_payload_bytes(classes, 0),
        "shard_bytes_per_sample": stored["shard_bytes_per_sample"],
    }


def _teacher_kl(index: dict[str, Any], records: list[dict[str, Any]]) -> np.ndarray | None:
    """KL(teachers' full p̄ ‖ stored target) per record, or None when the checkpoints moved."""
    teachers = index.get("teachers", [])
    if not teachers or not records:
        return None
    for teacher in teachers:
        if not Path(teacher["path"]).is_file() or fmt.sha256_file(teacher["path"]) != teacher["sha256"]:
            return None
    from stages.teachers import Ensemble

    ensemble = Ensemble([t["path"] for t in teachers], int(index["num_classes"]), device="cpu")
    full = ensemble.predict(np.stack([r["image"] for r in records])).logp
    stored = np.stack([r["logp"] for r in records]).astype(np.float64)
    peak = stored.max(axis=1, keepdims=True)  # normalise, as softmax(logp / τ) does for a student
    stored -= peak + np.log(np.exp(stored - peak).sum(axis=1, keepdims=True))
    return fmt.kl_divergence(full, stored)


def quantile_stats(values: np.ndarray) -> dict[str, float]:
    """mean, std and the 10/50/90 % quantiles (zeros for no values)."""
    if not len(values):
        return {"mean": 0.0, "std": 0.0, "p10": 0.0, "median": 0.0, "p90": 0.0}
    p10, median, p90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"mean": float(values.mean()), "std": float(values.std()), "p10": float(p10), "median": float(median),
            "p90": float(p90)}


def _by_lambda(lam: np.ndarray, entropy: np.ndarray, key: str = "entropy_mean") -> list[dict[str, Any]]:
    """Mean of a per-sample value (Ĥ, or a predicted σ) in LAMBDA_BINS equal bins of λ."""
    rows = []
    edges = np.linspace(0.0, 1.0, LAMBDA_BINS + 1)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (lam >= low) & ((lam < high) if high < 1 else (lam <= high))
        rows.append({"lam_low": round(float(low), 3), "lam_high": round(float(high), 3), "count": int(inside.sum()),
                     key: float(entropy[inside].mean()) if inside.any() else None})
    return rows


def inspect_set(set_dir: str | Path, kl_samples: int = 256) -> dict[str, Any]:
    """The statistics of a set as one JSON-able dict (see the module docstring)."""
    set_dir = str(set_dir)
    try:
        index = fmt.read_index(set_dir)
        if index is None:
            raise UserError(f"inspect: {set_dir} has no {fmt.INDEX_NAME}; it is not a finished transfer set")
        table = fmt.read_manifest(set_dir).to_pydict()
    except (fmt.FormatError, OSError) as err:
        raise UserError(f"inspect: {set_dir}: {err}") from err
    if index.get("task") == "regress":
        from pipeline.inspect_regression import inspect_regression

        return inspect_regression(set_dir, index, table, kl_samples)
    entropy = np.asarray(table["entropy"], dtype=np.float64)
    lam = np.asarray(table["lam"], dtype=np.float64)
    classes = index.get("classes") or [str(c) for c in range(int(index["num_classes"]))]
    argmax = np.bincount(np.asarray(table["teacher_argmax"], dtype=np.int64), minlength=len(classes))
    samplers, counts = np.unique(np.asarray(table["sampler"]), return_counts=True)
    records = _records(set_dir, index, kl_samples)
    measured = _teacher_kl(index, records)
    stored_kl = np.asarray(table["target_kl"], dtype=np.float64) if "target_kl" in table else np.zeros(0)
    stored_kl = stored_kl[np.isfinite(stored_kl)]
    kl = measured if measured is not None else (stored_kl if len(stored_kl) else None)
    topk = index["target"].get("kind") == "topk"
    return {
        "set": set_dir, "name": index.get("name"), "fingerprint": index.get("fingerprint"),
        "samples": int(index["totals"]["samples"]), "shards": len(index["shards"]),
        "num_classes": int(index["num_classes"]), "target": index["target"],
        "per_sampler": {str(k): int(v) for k, v in zip(samplers, counts, strict=True)},
        "entropy": quantile_stats(entropy),
        "disagreement_mean": float(np.mean(table["disagreement"])) if len(entropy) else 0.0,
        "entropy_by_lambda": _by_lambda(lam[np.isfinite(lam)], entropy[np.isfinite(lam)]),
        "teacher_argmax": {classes[c]: int(n) for c, n in enumerate(argmax)},
        **_target_bytes(set_dir, index),
        "target_kl_mean": None if kl is None else float(np.mean(kl)),
        "target_kl_max": None if kl is None else float(np.max(kl)),
        "target_kl_samples": 0 if kl is None else int(len(kl)),
        "target_kl_source": "teachers" if measured is not None else "manifest" if kl is not None else None,
        "topk_kl_mean": None if kl is None or not topk else float(np.mean(kl)),
    }


def header_lines(stats: dict[str, Any], task: str) -> list[str]:
    """The first two lines of ``inspect``'s text, for either task: where, how much, which samplers."""
    return [f"set {stats['name']} at {stats['set']}: {stats['samples']} samples in {stats['shards']} shards, "
            f"{task}, fingerprint {str(stats['fingerprint'])[:12]}",
            "samplers: " + ", ".join(f"{k} {v}" for k, v in stats["per_sampler"].items())]


def format_report(stats: dict[str, Any]) -> str:
    """The statistics as text for the terminal."""
    if stats.get("task") == "regress":
        from pipeline.inspect_regression import format_regression

        return format_regression(stats)
    ent = stats["entropy"]
    lines = [
        *header_lines(stats, f"{stats['num_classes']} classes"),
        f"entropy Ĥ: mean {ent['mean']:.4f} std {ent['std']:.4f} p10 {ent['p10']:.4f} median {ent['median']:.4f} "
        f"p90 {ent['p90']:.4f}; disagreement mean {stats['disagreement_mean']:.4f}",
        f"targets: {stats['target']['kind']}{' k=' + str(stats['target']['k']) if 'k' in stats['target'] else ''}, "
        f"{stats['target_bytes_per_sample']} B per sample ({stats['target_npy_bytes_per_sample']:.0f} B as .npy, "
        f"dense float16 would be {stats['dense_float16_bytes_per_sample']} B; "
        f"{stats['shard_bytes_per_sample']:.0f} B of shard per sample)",
    ]
    if stats["target_kl_mean"] is not None:
        lines.append(f"KL(full ‖ stored target): mean {stats['target_kl_mean']:.3g} nats, max "
                     f"{stats['target_kl_max']:.3g} over {stats['target_kl_samples']} samples "
                     f"(from {stats['target_kl_source']})")
    binned = [row for row in stats["entropy_by_lambda"] if row["count"]]
    if binned:
        lines.append("mean Ĥ by λ:  λ range     count  mean Ĥ")
        lines += [f"              [{r['lam_low']:.1f}, {r['lam_high']:.1f})  {r['count']:>6}  {r['entropy_mean']:.4f}"
                  for r in binned]
    lines.append("teacher argmax: " + ", ".join(f"{k} {v}" for k, v in stats["teacher_argmax"].items()))
    return "\n".join(lines)


def write_plots(set_dir: str | Path, out_dir: str | Path, models: dict[str, str | Path] | None = None) -> list[str]:
    """PNGs: entropy histogram, entropy vs λ (XCL fig. 1), a grid of images with their top
    teacher classes. Returns their paths. A regression set gets σ plots instead, with the σ the
    ``models`` (name → regression checkpoint) predict on its stored mixes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_dir, out = str(set_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = fmt.read_index(set_dir)
    if index is None:
        raise UserError(f"inspect: {set_dir} has no {fmt.INDEX_NAME}")
    if index.get("task") == "regress":
        from pipeline.inspect_regression import write_regression_plots

        return write_regression_plots(set_dir, out, index, models or {})
    if models:
        raise UserError("inspect --model: model σ curves are for regression sets")
    table = fmt.read_manifest(set_dir).to_pydict()
    entropy, lam = np.asarray(table["entropy"]), np.asarray(table["lam"], dtype=np.float64)
    samplers = np.asarray(table["sampler"])
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in np.unique(samplers):
        ax.hist(entropy[samplers == kind], bins=40, range=(0, 1), alpha=0.6, label=str(kind))
    ax.set(xlabel="normalised teacher entropy Ĥ", ylabel="samples", title=f"{index.get('name')}: Ĥ histogram")
    ax.legend()
    paths.append(_save(fig, out / "entropy_hist.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    mixed = np.isfinite(lam)
    if mixed.any():
        ax.scatter(lam[mixed], entropy[mixed], s=3, alpha=0.3, label="samples")
        rows = [r for r in _by_lambda(lam[mixed], entropy[mixed]) if r["count"]]
        ax.plot([(r["lam_low"] + r["lam_high"]) / 2 for r in rows], [r["entropy_mean"] for r in rows], "r-o",
                label="mean per λ bin")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no sample has a mixing weight λ", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="λ", ylabel="Ĥ", xlim=(0, 1), ylim=(0, 1), title="teacher entropy vs mixing weight λ")
    paths.append(_save(fig, out / "entropy_vs_lambda.png"))

    records = _records(set_dir, index, GRID_SAMPLES)
    classes = index.get("classes") or [str(c) for c in range(int(index["num_classes"]))]
    cols = 8
    rows_n = max(1, math.ceil(len(records) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(cols * 1.6, rows_n * 2.3), squeeze=False)
    for ax, record in zip(axes.ravel(), records, strict=False):
        image = record["image"]
        ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        top = np.argsort(-record["logp"])[:2]
        probs = np.exp(record["logp"][top].astype(np.float64))
        ax.set_title("\n".join(f"{classes[c]} {p:.2f}" for c, p in zip(top, probs, strict=True))
                     + f"\n{record['meta']['sampler']}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("stored images with their top teacher classes")
    paths.append(_save(fig, out / "samples.png"))
    return paths


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


