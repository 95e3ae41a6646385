"""``transferset inspect`` for classification sets.

Reports counts per sampler, the normalised teacher entropy Ĥ (XCL eq. 4) and ensemble
disagreement, mean Ĥ binned by the mixing weight λ (the table behind XCL fig. 1), the histogram
of the teachers' argmax class, the bytes the targets take per sample and the KL divergence
between the teachers' full distribution and what a reader gets back from the stored target (for
a sampled-class target: its dense estimate, which is not what a student learns from; the
unbiased weights are, so the report adds how many distinct classes a record holds).
The KL is measured by running the set's teacher checkpoints (when they are still at the paths
the index lists, with the same sha256) on the stored images of a sample of records; otherwise
it is the mean of the ``target_kl`` the writer recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.records.format import kl_divergence, sha256_file
from core.records.targets import DENSE
from core.sets.formats import format_of, inspect_lines
from core.sets.index import SetIndex
from core.tasks import Record
from pipeline.inspect import common as common


def _target_bytes(set_dir: str, index: SetIndex) -> dict[str, float]:
    """Payload bytes of one target, its tar member with .npy header, and whole tar bytes, per sample."""
    kind = index.target.stored
    stored = common.stored_bytes(set_dir, index, (kind.member,))
    return {
        "target_bytes_per_sample": kind.payload_bytes(int(index.target.k or 0), index.outputs),
        "target_npy_bytes_per_sample": stored["target_npy_bytes_per_sample"],
        "dense_float16_bytes_per_sample": DENSE.payload_bytes(0, index.outputs),
        "shard_bytes_per_sample": stored["shard_bytes_per_sample"],
    }


def _teacher_kl(index: SetIndex, found: list[Record]) -> np.ndarray | None:
    """KL(teachers' full p̄ ‖ stored target) per record, or None when the checkpoints moved."""
    teachers = index.teachers or []
    if not teachers or not found:
        return None
    for teacher in teachers:
        if not Path(teacher.path).is_file() or sha256_file(teacher.path) != teacher.sha256:
            return None
    from stages.teachers import Ensemble  # torch: only when the teachers are there to ask

    ensemble = Ensemble([t.path for t in teachers], index.outputs, device="cpu")
    full = ensemble.predict(np.stack([r["image"] for r in found])).logp
    stored = np.stack([r["logp"] for r in found]).astype(np.float64)
    peak = stored.max(axis=1, keepdims=True)  # normalise, as softmax(logp / τ) does for a student
    stored -= peak + np.log(np.exp(stored - peak).sum(axis=1, keepdims=True))
    return kl_divergence(full, stored)


def classes_of(index: SetIndex) -> list[str]:
    return list(index.classes or [str(c) for c in range(index.outputs)])


def inspect_classification(set_dir: str, index: SetIndex, table: dict[str, list[Any]],
                           kl_samples: int = 256) -> dict[str, Any]:
    """The statistics of a classification set (see the module docstring) as one JSON-able dict."""
    entropy = np.asarray(table["entropy"], dtype=np.float64)
    lam = np.asarray(table["lam"], dtype=np.float64)
    classes = classes_of(index)
    argmax = np.bincount(np.asarray(table["teacher_argmax"], dtype=np.int64), minlength=len(classes))
    found = common.records(set_dir, index, kl_samples)
    measured = _teacher_kl(index, found)
    stored_kl = np.asarray(table["target_kl"], dtype=np.float64) if "target_kl" in table else np.zeros(0)
    stored_kl = stored_kl[np.isfinite(stored_kl)]
    kl = measured if measured is not None else (stored_kl if len(stored_kl) else None)
    topk = index.target.stored.truncates
    return {
        **common.header(set_dir, index, table),
        "num_classes": index.outputs, "target": index.target.to_dict(),
        "per_sampler": common.per_sampler(table),
        "entropy": common.quantile_stats(entropy),
        "disagreement_mean": float(np.mean(table["disagreement"])) if len(entropy) else 0.0,
        "entropy_by_lambda": common.by_lambda(lam[np.isfinite(lam)], entropy[np.isfinite(lam)]),
        "teacher_argmax": {classes[c]: int(n) for c, n in enumerate(argmax)},
        **_target_bytes(set_dir, index),
        "target_kl_mean": None if kl is None else float(np.mean(kl)),
        "target_kl_max": None if kl is None else float(np.max(kl)),
        "target_kl_samples": 0 if kl is None else int(len(kl)),
        "target_kl_source": "teachers" if measured is not None else "manifest" if kl is not None else None,
        "topk_kl_mean": None if kl is None or not topk else float(np.mean(kl)),
        **_sampled_stats(found),
        **format_of(index).stats(index),
    }


def _sampled_stats(found: list[Record]) -> dict[str, Any]:
    """Distinct classes per sampled-class record and the mean sum of its weights (1 on average)."""
    weights = [r["weights"] for r in found if "weights" in r]
    if not weights:
        return {}
    return {"sampled_classes_mean": float(np.mean([np.count_nonzero(w) for w in weights])),
            "sampled_weight_sum_mean": float(np.mean([w.astype(np.float64).sum() for w in weights]))}


def format_classification(stats: dict[str, Any]) -> str:
    """The statistics as text for the terminal."""
    ent = stats["entropy"]
    lines = [
        *common.header_lines(stats, f"{stats['num_classes']} classes"),
        *inspect_lines(stats),
        f"entropy Ĥ: mean {ent['mean']:.4f} std {ent['std']:.4f} p10 {ent['p10']:.4f} median {ent['median']:.4f} "
        f"p90 {ent['p90']:.4f}; disagreement mean {stats['disagreement_mean']:.4f}",
        f"targets: {stats['target']['kind']}{' k=' + str(stats['target']['k']) if 'k' in stats['target'] else ''}, "
        f"{stats['target_bytes_per_sample']} B per sample ({stats['target_npy_bytes_per_sample']:.0f} B as .npy, "
        f"dense float16 would be {stats['dense_float16_bytes_per_sample']} B; "
        f"{stats['shard_bytes_per_sample']:.0f} B of shard per sample)",
    ]
    target = stats["target"]
    if target["kind"] == "sampled":
        lines.append(f"sampled targets: {target['k']} draws at temperature {target['temperature']:g} "
                     f"(uniform {target['uniform']:g}); {stats.get('sampled_classes_mean', 0):.2f} distinct classes "
                     f"per record; a kd student must train at temperature {target['temperature']:g}")
    if stats["target_kl_mean"] is not None:
        estimate = " of the dense estimate (students learn from the unbiased weights)" \
            if target["kind"] == "sampled" else ""
        lines.append(f"KL(full ‖ stored target){estimate}: mean {stats['target_kl_mean']:.3g} nats, max "
                     f"{stats['target_kl_max']:.3g} over {stats['target_kl_samples']} samples "
                     f"(from {stats['target_kl_source']})")
    binned = [row for row in stats["entropy_by_lambda"] if row["count"]]
    if binned:
        lines.append("mean Ĥ by λ:  λ range     count  mean Ĥ")
        lines += [f"              [{r['lam_low']:.1f}, {r['lam_high']:.1f})  {r['count']:>6}  {r['entropy_mean']:.4f}"
                  for r in binned]
    lines.append("teacher argmax: " + ", ".join(f"{k} {v}" for k, v in stats["teacher_argmax"].items()))
    return "\n".join(lines)


def write_classification_plots(set_dir: str, out: Path, index: SetIndex, table: dict[str, list[Any]],
                               models: dict[str, str | Path]) -> list[str]:
    """PNGs: entropy histogram, entropy vs λ (XCL fig. 1), a grid of images with their top
    teacher classes. Returns their paths."""
    import matplotlib.pyplot as plt

    if models:
        raise UserError("inspect --model: model σ curves are for regression sets")
    entropy, lam = np.asarray(table["entropy"]), np.asarray(table["lam"], dtype=np.float64)
    samplers = np.asarray(table["sampler"])
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in np.unique(samplers):
        ax.hist(entropy[samplers == kind], bins=40, range=(0, 1), alpha=0.6, label=str(kind))
    ax.set(xlabel="normalised teacher entropy Ĥ", ylabel="samples", title=f"{index.name}: Ĥ histogram")
    ax.legend()
    paths.append(common.save(fig, out / "entropy_hist.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    mixed = np.isfinite(lam)
    if mixed.any():
        ax.scatter(lam[mixed], entropy[mixed], s=3, alpha=0.3, label="samples")
        rows = [r for r in common.by_lambda(lam[mixed], entropy[mixed]) if r["count"]]
        ax.plot([(r["lam_low"] + r["lam_high"]) / 2 for r in rows], [r["entropy_mean"] for r in rows], "r-o",
                label="mean per λ bin")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no sample has a mixing weight λ", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="λ", ylabel="Ĥ", xlim=(0, 1), ylim=(0, 1), title="teacher entropy vs mixing weight λ")
    paths.append(common.save(fig, out / "entropy_vs_lambda.png"))

    found = common.records(set_dir, index, common.GRID_SAMPLES)
    classes = classes_of(index)
    fig, axes = common.image_grid(len(found), 1.6, 2.3)
    for ax, record in zip(axes.ravel(), found, strict=False):
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
    paths.append(common.save(fig, out / "samples.png"))
    return paths
