"""``transferset inspect`` for regression sets, and predicted σ against the mixing weight λ.

Ĥ has no meaning for a Gaussian target, so a regression set is described by its predicted
σ = √(mean_d σ_d²) (in target units: radians for gaze) and the two parts of σ²: aleatoric (the
members' own noise, mean_m σ_m²) and epistemic (their disagreement, var_m μ_m). Binned by λ
they give XCL fig. 1: mixes near λ = 0.5 are the uncertain ones. :func:`sigma_by_lambda` adds
the σ that given models (students) predict on the same stored images, so the teacher's and the
students' uncertainty can be compared on one plot (also used by the job report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.sets import index as sx
from core.sets.index import SetIndex
from core.tasks import REGRESS
from core.tasks.regression import LOGVAR_FIELD, MU_FIELD
from pipeline.inspect import common as common

# Stored mixes a σ-vs-λ curve is measured on (teacher σ from the records, models run on them).
CURVE_SAMPLES = 2000
PARTS = ("sigma", "aleatoric", "epistemic")


def metric_of(index: SetIndex) -> str:
    source = index.source_config()
    if source is None:
        return "euclidean"
    return source.error_metric()


def _binned(lam: np.ndarray, table: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """σ and its parts per λ bin (one row per bin, like Ĥ by λ for classification)."""
    rows = common.by_lambda(lam, table["sigma"], "sigma_mean")
    for part in PARTS[1:]:
        for row, other in zip(rows, common.by_lambda(lam, table[part], f"{part}_mean"), strict=True):
            row[f"{part}_mean"] = other[f"{part}_mean"]
    return rows


def inspect_regression(set_dir: str, index: SetIndex, table: dict[str, list[Any]],
                       samples: int = 256) -> dict[str, Any]:
    """The statistics of a regression set (see the module docstring) as one JSON-able dict."""
    values = {part: np.asarray(table[part], dtype=np.float64) for part in PARTS}
    lam = np.asarray(table["lam"], dtype=np.float64)
    mixed = np.isfinite(lam)
    real = [r for r in common.records(set_dir, index, samples) if r["real_target"] is not None]
    metric = metric_of(index)
    teacher_error = None
    if real:
        from student.regression_eval import errors  # torch: only for a set with real targets to score

        teacher_error = float(errors(np.stack([r["mu"] for r in real]), np.stack([r["real_target"] for r in real]),
                                     metric).mean())
    total = values["aleatoric"].sum() + values["epistemic"].sum()
    start = common.header(set_dir, index, table)
    return {
        **{k: start[k] for k in ("set", "name", "fingerprint")}, "task": REGRESS.name,
        **{k: start[k] for k in ("samples", "shards")}, "out_dim": index.outputs,
        "target": index.target.to_dict(), "metric": metric,
        "per_sampler": common.per_sampler(table),
        "sigma": common.quantile_stats(values["sigma"]),
        "aleatoric_mean": float(values["aleatoric"].mean()) if len(lam) else 0.0,
        "epistemic_mean": float(values["epistemic"].mean()) if len(lam) else 0.0,
        "epistemic_share": float(values["epistemic"].sum() / total) if total > 0 else 0.0,
        "sigma_by_lambda": _binned(lam[mixed], {k: v[mixed] for k, v in values.items()}),
        "teacher_error_on_real": teacher_error, "real_samples_checked": len(real),
        "target_bytes_per_sample": int(index.target.payload_bytes or 0),
        **common.stored_bytes(set_dir, index, (MU_FIELD, LOGVAR_FIELD)),
    }


def format_regression(stats: dict[str, Any]) -> str:
    sigma = stats["sigma"]
    lines = [
        *common.header_lines(stats, f"regression of {stats['out_dim']} values"),
        f"predicted σ: mean {sigma['mean']:.4g} std {sigma['std']:.4g} p10 {sigma['p10']:.4g} median "
        f"{sigma['median']:.4g} p90 {sigma['p90']:.4g}; σ² = aleatoric {stats['aleatoric_mean']:.4g} + epistemic "
        f"{stats['epistemic_mean']:.4g} (epistemic share {stats['epistemic_share']:.1%})",
        f"targets: {stats['target']['kind']} {stats['target']['dtype']} mu + logvar, "
        f"{stats['target_bytes_per_sample']} B per sample ({stats['target_npy_bytes_per_sample']:.0f} B as .npy; "
        f"{stats['shard_bytes_per_sample']:.0f} B of shard per sample)",
    ]
    if stats["teacher_error_on_real"] is not None:
        lines.append(f"teacher μ vs real targets: mean {stats['metric']} error {stats['teacher_error_on_real']:.4g} "
                     f"over {stats['real_samples_checked']} stored real samples")
    binned = [row for row in stats["sigma_by_lambda"] if row["count"]]
    if binned:
        lines.append("mean σ by λ:  λ range     count  σ        aleatoric  epistemic")
        lines += [f"              [{r['lam_low']:.1f}, {r['lam_high']:.1f})  {r['count']:>6}  {r['sigma_mean']:.4g}  "
                  f"{r['aleatoric_mean']:.4g}  {r['epistemic_mean']:.4g}" for r in binned]
    return "\n".join(lines)


# ---------------------------------------------------------------- σ vs λ (XCL fig. 1)


def mixed_records(set_dir: str, limit: int = CURVE_SAMPLES) -> list[dict[str, Any]]:
    """Up to ``limit`` stored records of a regression set that have a mixing weight λ."""
    index = sx.read_index(set_dir)
    if index is None or index.kind.name != REGRESS.name:
        raise UserError(f"{set_dir}: not a finished regression set")
    return [r for r in common.records(set_dir, index, limit) if r["meta"].get("params", {}).get("lam") is not None]


def sigma_by_lambda(set_dir: str, models: dict[str, str | Path], limit: int = CURVE_SAMPLES,
                    factories: Sequence[str] = ()) -> dict[str, Any]:
    """Mean σ per λ bin on the stored mixes of a set: the teachers' (stored: total and
    aleatoric) and each named model checkpoint's (run on the stored images)."""
    from core.models import load_model  # torch, as every model run
    from student.regression_eval import predict_gaussians, sigma_of

    mixes = mixed_records(set_dir, limit)
    if not mixes:
        return {"set": set_dir, "samples": 0, "curves": {}}
    lam = np.asarray([r["meta"]["params"]["lam"] for r in mixes], dtype=np.float64)
    stored = np.stack([r["logvar"] for r in mixes]).astype(np.float64)
    curves = {"teacher": common.by_lambda(lam, sigma_of(stored), "sigma_mean"),
              "teacher (aleatoric)": common.by_lambda(lam, np.asarray([math.sqrt(r["meta"]["aleatoric"])
                                                                for r in mixes]), "sigma_mean")}
    images = np.stack([r["image"] for r in mixes])
    for name, path in models.items():
        model, payload = load_model(path, task=REGRESS.name, allowed_factories=factories)
        mu, logvar = predict_gaussians([model], [payload["input"]], images, int(payload["out_dim"]))
        curves[name] = common.by_lambda(lam, sigma_of(logvar[0]), "sigma_mean")
    return {"set": set_dir, "samples": len(mixes), "curves": curves}


def plot_sigma_by_lambda(curves: dict[str, Any], path: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves["curves"].items():
        rows = [r for r in rows if r["count"]]
        style = "k-o" if name == "teacher" else "k:" if name.startswith("teacher") else "-o"
        ax.plot([(r["lam_low"] + r["lam_high"]) / 2 for r in rows], [r["sigma_mean"] for r in rows], style,
                label=name, markersize=4)
    ax.set(xlabel="mixing coefficient λ", ylabel="mean predicted σ (target units)", xlim=(0, 1),
           title=f"{title} ({curves['samples']} stored mixes)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return common.save(fig, path)


def write_regression_plots(set_dir: str, out: Path, index: SetIndex, table: dict[str, list[Any]],
                           models: dict[str, str | Path]) -> list[str]:
    """σ histogram per sampler, σ vs λ (with the given models), stored images with μ and σ."""
    import matplotlib.pyplot as plt

    sigma, samplers = np.asarray(table["sigma"], dtype=np.float64), np.asarray(table["sampler"])
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    top = float(np.quantile(sigma, 0.99)) if len(sigma) else 1.0
    for kind in np.unique(samplers):
        ax.hist(sigma[samplers == kind], bins=40, range=(0, top), alpha=0.6, label=str(kind))
    ax.set(xlabel="teacher σ (target units)", ylabel="samples", title=f"{index.name}: predicted σ")
    ax.legend()
    paths.append(common.save(fig, out / "sigma_hist.png"))
    paths.append(plot_sigma_by_lambda(sigma_by_lambda(set_dir, models), out / "sigma_vs_lambda.png",
                                      f"{index.name}: σ vs λ"))

    found = common.records(set_dir, index, common.GRID_SAMPLES)
    fig, axes = common.image_grid(len(found), 1.8, 1.6)
    for ax, record in zip(axes.ravel(), found, strict=False):
        image = record["image"]
        ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
        mu = ", ".join(f"{v:+.2f}" for v in record["mu"][:2])
        lam = record["meta"]["params"].get("lam")
        ax.set_title(f"μ {mu}\nσ {record['meta']['sigma']:.3f} {record['meta']['sampler']}"
                     + ("" if lam is None else f" λ {lam:.2f}"), fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("stored images with the teachers' μ and σ")
    paths.append(common.save(fig, out / "samples.png"))
    return paths
