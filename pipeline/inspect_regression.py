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
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import format as fmt
from pipeline.errors import UserError
from pipeline.inspect import GRID_SAMPLES, _by_lambda, _records, _save, header_lines, quantile_stats, stored_bytes

# Stored mixes a σ-vs-λ curve is measured on (teacher σ from the records, models run on them).
CURVE_SAMPLES = 2000
PARTS = ("sigma", "aleatoric", "epistemic")


def metric_of(index: dict[str, Any]) -> str:
    source = index.get("config", {}).get("source", {})
    return source.get("metric") or ("angular" if source.get("kind") == "gaze" else "euclidean")


def _binned(lam: np.ndarray, table: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """σ and its parts per λ bin (one row per bin, like Ĥ by λ for classification)."""
    rows = _by_lambda(lam, table["sigma"], "sigma_mean")
    for part in PARTS[1:]:
        for row, other in zip(rows, _by_lambda(lam, table[part], f"{part}_mean"), strict=True):
            row[f"{part}_mean"] = other[f"{part}_mean"]
    return rows


def inspect_regression(set_dir: str, index: dict[str, Any], table: dict[str, list[Any]],
                       samples: int = 256) -> dict[str, Any]:
    """The statistics of a regression set (see the module docstring) as one JSON-able dict."""
    values = {part: np.asarray(table[part], dtype=np.float64) for part in PARTS}
    lam = np.asarray(table["lam"], dtype=np.float64)
    mixed = np.isfinite(lam)
    samplers, counts = np.unique(np.asarray(table["sampler"]), return_counts=True)
    records = _records(set_dir, index, samples)
    real = [r for r in records if r["real_target"] is not None]
    metric = metric_of(index)
    teacher_error = None
    if real:
        from student.regression_eval import errors

        teacher_error = float(errors(np.stack([r["mu"] for r in real]), np.stack([r["real_target"] for r in real]),
                                     metric).mean())
    total = values["aleatoric"].sum() + values["epistemic"].sum()
    return {
        "set": set_dir, "name": index.get("name"), "fingerprint": index.get("fingerprint"), "task": "regress",
        "samples": int(index["totals"]["samples"]), "shards": len(index["shards"]), "out_dim": int(index["out_dim"]),
        "target": index["target"], "metric": metric,
        "per_sampler": {str(k): int(v) for k, v in zip(samplers, counts, strict=True)},
        "sigma": quantile_stats(values["sigma"]),
        "aleatoric_mean": float(values["aleatoric"].mean()) if len(lam) else 0.0,
        "epistemic_mean": float(values["epistemic"].mean()) if len(lam) else 0.0,
        "epistemic_share": float(values["epistemic"].sum() / total) if total > 0 else 0.0,
        "sigma_by_lambda": _binned(lam[mixed], {k: v[mixed] for k, v in values.items()}),
        "teacher_error_on_real": teacher_error, "real_samples_checked": len(real),
        "target_bytes_per_sample": int(index["target"].get("payload_bytes", 0)),
        **stored_bytes(set_dir, index, (fmt.MU_FIELD, fmt.LOGVAR_FIELD)),
    }


def format_regression(stats: dict[str, Any]) -> str:
    sigma = stats["sigma"]
    lines = [
        *header_lines(stats, f"regression of {stats['out_dim']} values"),
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
    index = fmt.read_index(set_dir)
    if index is None or index.get("task") != "regress":
        raise UserError(f"{set_dir}: not a finished regression set")
    records = _records(set_dir, index, limit)
    return [r for r in records if r["meta"].get("params", {}).get("lam") is not None]


def sigma_by_lambda(set_dir: str, models: dict[str, str | Path], limit: int = CURVE_SAMPLES) -> dict[str, Any]:
    """Mean σ per λ bin on the stored mixes of a set: the teachers' (stored: total and
    aleatoric) and each named model checkpoint's (run on the stored images)."""
    from pipeline.models import load_model
    from student.regression_eval import predict_gaussians, sigma_of

    records = mixed_records(set_dir, limit)
    if not records:
        return {"set": set_dir, "samples": 0, "curves": {}}
    lam = np.asarray([r["meta"]["params"]["lam"] for r in records], dtype=np.float64)
    stored = np.stack([r["logvar"] for r in records]).astype(np.float64)
    curves = {"teacher": _by_lambda(lam, sigma_of(stored), "sigma_mean"),
              "teacher (aleatoric)": _by_lambda(lam, np.asarray([math.sqrt(r["meta"]["aleatoric"])
                                                                 for r in records]), "sigma_mean")}
    images = np.stack([r["image"] for r in records])
    for name, path in models.items():
        model, payload = load_model(path, task="regress")
        mu, logvar = predict_gaussians([model], [payload["input"]], images, int(payload["out_dim"]))
        curves[name] = _by_lambda(lam, sigma_of(logvar[0]), "sigma_mean")
    return {"set": set_dir, "samples": len(records), "curves": curves}


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
    return _save(fig, path)


def write_regression_plots(set_dir: str, out: Path, index: dict[str, Any], models: dict[str, str | Path]) -> list[str]:
    """σ histogram per sampler, σ vs λ (with the given models), stored images with μ and σ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = fmt.read_manifest(set_dir).to_pydict()
    sigma, samplers = np.asarray(table["sigma"], dtype=np.float64), np.asarray(table["sampler"])
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    top = float(np.quantile(sigma, 0.99)) if len(sigma) else 1.0
    for kind in np.unique(samplers):
        ax.hist(sigma[samplers == kind], bins=40, range=(0, top), alpha=0.6, label=str(kind))
    ax.set(xlabel="teacher σ (target units)", ylabel="samples", title=f"{index.get('name')}: predicted σ")
    ax.legend()
    paths.append(_save(fig, out / "sigma_hist.png"))
    paths.append(plot_sigma_by_lambda(sigma_by_lambda(set_dir, models), out / "sigma_vs_lambda.png",
                                      f"{index.get('name')}: σ vs λ"))

    records = _records(set_dir, index, GRID_SAMPLES)
    cols = 8
    rows_n = max(1, math.ceil(len(records) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(cols * 1.8, rows_n * 1.6), squeeze=False)
    for ax, record in zip(axes.ravel(), records, strict=False):
        image = record["image"]
        ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
        mu = ", ".join(f"{v:+.2f}" for v in record["mu"][:2])
        lam = record["meta"]["params"].get("lam")
        ax.set_title(f"μ {mu}\nσ {record['meta']['sigma']:.3f} {record['meta']['sampler']}"
                     + ("" if lam is None else f" λ {lam:.2f}"), fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("stored images with the teachers' μ and σ")
    paths.append(_save(fig, out / "samples.png"))
    return paths
