"""The report of a regression job, like XCL Table 3 and fig. 1.

Every model is evaluated on the held-out split: the teacher ensemble through its moment-matched
Gaussian, each student through its own head. The error is the source's metric (mean angular
error in degrees for gaze; lower is better), gap = student error − teacher error, and the gap
reduction of a method against the baseline (KD) is 1 − gap(method) / gap(KD). NLL and σ
calibration are shown only for models whose σ was trained (NLL teachers, ERM with NLL, KD with
the Gaussian KL); an MSE-trained head's σ output is untrained noise.

Fig. 1: the mean σ that the teachers and the σ-trained students predict on the stored mixes of
the first set with a mixing sampler, binned by λ (``sigma_vs_lambda.png`` next to the report).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import Config, StudentConfig
from core.models import load_model
from core.sources import Source
from core.tasks import REGRESS
from pipeline.inspect.regression import plot_sigma_by_lambda, sigma_by_lambda
from pipeline.report.aggregate import gap_reduction_spread, summarize_runs
from pipeline.train.runs import locate_set, student_dir
from student.regression_eval import evaluate_ensemble

MIXING = ("mix", "mixup", "cutmix")
SHOWN = REGRESS.report_keys


# The losses that train a head's σ (the others leave its σ output untrained noise).
SIGMA_LOSSES = ("nll", "gaussian_kl")


def sigma_trained(student: StudentConfig) -> bool:
    return student.objective_kind.regression_loss(student.train, student.kd) in SIGMA_LOSSES


def method(student: StudentConfig) -> str:
    """How a student learned, in the words of XCL Table 3's rows."""
    return student.objective_kind.regression_method(student.train, student.kd)


def _teacher(teachers: list[Path], test: Source, factories: Sequence[str]) -> dict[str, Any]:
    loaded = [load_model(path, task=REGRESS.name, outputs=test.out_dim, allowed_factories=factories)
              for path in teachers]
    ensemble, members = evaluate_ensemble([m for m, _ in loaded], [p["input"] for _, p in loaded], test, test.out_dim)
    return {**{k: ensemble[k] for k in SHOWN}, "members": [member["error"] for member in members]}


def _sigma_curves(cfg: Config, out: Path, report: dict[str, Any]) -> None:
    """σ vs λ on the first mixing set, for the teachers and the σ-trained students."""
    mixing = [name for name, set_cfg in cfg.sets.items() if any(s.kind in MIXING for s in set_cfg.sampler_list())]
    if not mixing:
        return
    first = {name: student_dir(out, name, student.seeds[0]) / "model.pt" for name, student in cfg.students.items()}
    models = {name: path for name, path in first.items() if sigma_trained(cfg.students[name]) and path.is_file()}
    curves = sigma_by_lambda(locate_set(cfg, out, mixing[0]), models, factories=cfg.factories)
    report["sigma_by_lambda"] = {**curves, "set": mixing[0], "path": curves["set"]}
    report["plots"] = [plot_sigma_by_lambda(curves, out / "sigma_vs_lambda.png", f"{cfg.name}: σ vs λ")]


def build_regression_report(cfg: Config, teachers: list[Path], students: dict[str, dict[int, dict[str, Any]]],
                            test: Source, out: Path | None = None, train: Source | None = None) -> dict[str, Any]:
    """``students``: each student's results by seed; the figures are means over the seeds
    (``<key>_std`` beside them), σ-by-λ curves use each student's first seed. (``train`` is not
    used: the regression report measures the ensemble on the test split only.)"""
    teacher = _teacher(teachers, test, cfg.factories)
    report: dict[str, Any] = {
        "config": cfg.name, "task": REGRESS.name, "metric": test.metric, "test_samples": len(test),
        "teacher": teacher, "students": {}, "gap_reduction": {},
    }
    for name, results in students.items():
        student, first = cfg.students[name], results[min(results)]
        row = {key: first[key] for key in ("objective", "steps", "parameters") if key in first}
        row.update(summarize_runs(results, SHOWN))
        sets = "+".join(student.sets) if student.objective_kind.reads_sets else "source"
        row.update({"method": method(student), "sets": sets, "sigma_trained": sigma_trained(student),
                    "gap": row["error"] - teacher["error"],
                    "seconds": sum(float(r.get("seconds", 0.0)) for r in results.values())})
        report["students"][name] = row
    baseline = cfg.report.baseline
    if baseline in students:
        report["gap_reduction_spread"] = {}
        negated = {name: {s: -e for s, e in zip(row["seeds"], row["error_by_seed"], strict=True)}
                   for name, row in report["students"].items()}
        for name in cfg.report.compare:
            spread = gap_reduction_spread(-teacher["error"], negated[baseline], negated[name])
            report["gap_reduction"][f"{name}_vs_{baseline}"] = spread["value"]
            report["gap_reduction_spread"][f"{name}_vs_{baseline}"] = spread
    if out is not None:
        _sigma_curves(cfg, out, report)
    return report


def format_regression_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table (XCL Table 3's columns, plus NLL and σ calibration)."""
    unit = "°" if report.get("metric") == "angular" else ""
    teacher = report["teacher"]
    header = (f"{'model':<12} {'method':<22} {'sets':<10} {'params':>8} {'steps':>6} {'error' + unit:>8} "
              f"{'gap':>7} {'NLL':>7} {'calib':>6}")
    lines = [header, f"{'teacher':<12} {'ensemble of ' + str(len(teacher['members'])):<22} {'':<10} {'':>8} "
                     f"{'':>6} {teacher['error']:>8.3f} {'':>7} {teacher['nll']:>7.3f} "
                     f"{teacher['calibration_error']:>6.3f}"]
    for name, row in report["students"].items():
        nll, calibration = (f"{row['nll']:>7.3f}", f"{row['calibration_error']:>6.3f}") if row["sigma_trained"] \
            else (f"{'-':>7}", f"{'-':>6}")
        error = f"{row['error']:>8.3f}" + (f" ± {row['error_std']:.3f}" if len(row["seeds"]) > 1 else "")
        lines.append(f"{name:<12} {row['method']:<22} {row['sets']:<10} {row['parameters']:>8} "
                     f"{row['steps']:>6} {error} {row['gap']:>7.3f} {nll} {calibration}")
    for name, value in report["gap_reduction"].items():
        shown = "n/a (baseline has no gap)" if value is None else f"{value:+.1%}"
        lines.append(f"gap reduction {name}: {shown}")
    curves = report.get("sigma_by_lambda", {}).get("curves", {})
    if curves:
        lines.append(f"mean σ by λ on set {report['sigma_by_lambda']['set']} "
                     f"({report['sigma_by_lambda']['samples']} stored mixes):")
        lines.append(f"  {'λ':<10}" + "".join(f"{name[:14]:>15}" for name in curves))
        for rows in zip(*curves.values(), strict=True):  # every curve is binned on the same λ of the same records
            if rows[0]["count"]:
                lines.append(f"  [{rows[0]['lam_low']:.1f}, {rows[0]['lam_high']:.1f}) "
                             + "".join(f"{row['sigma_mean']:>15.4f}" for row in rows))
    for path in report.get("plots", []):
        lines.append(f"plot: {path}")
    return "\n".join(lines)
