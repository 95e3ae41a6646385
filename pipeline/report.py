"""The job report: teacher and student accuracies on the held-out split, and the KD gap closed.

gap(student) = teacher accuracy − student accuracy; reduction = 1 − gap(method) / gap(baseline).
A regression job's report (error instead of accuracy) is :mod:`pipeline.regression_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.models import load_model
from stages.sources import Source


def ensemble_accuracy(teachers: list[Path], test: Source) -> tuple[float, list[float]]:
    """Accuracy of the ensemble mean and of each member on the test split."""
    from student.evaluate import accuracy, predict_probs

    members = [load_model(path, num_classes=test.num_classes) for path in teachers]
    models = [model for model, _ in members]
    specs = [payload["input"] for _, payload in members]
    each = [accuracy(predict_probs([m], [s], test), test.labels) for m, s in zip(models, specs, strict=True)]
    return accuracy(predict_probs(models, specs, test), test.labels), each


def gap_reduction(teacher: float, baseline: float, method: float) -> float | None:
    gap_baseline = teacher - baseline
    if gap_baseline <= 0:
        return None  # the baseline already matches the teacher: nothing to reduce
    return 1.0 - (teacher - method) / gap_baseline


def score(result: dict[str, Any]) -> str:
    """A trained model's headline for a progress line: accuracy, or the regression error."""
    if "error" in result:
        return f"{result.get('metric', '')} error {result['error']:.4f}".strip()
    return f"accuracy {result['accuracy']:.4f}"


def build_report(cfg: Config, teachers: list[Path], students: dict[str, dict[str, Any]],
                 test: Source, out: Path | None = None) -> dict[str, Any]:
    if test.task == "regress":
        from pipeline.regression_report import build_regression_report

        return build_regression_report(cfg, teachers, students, test, out)
    teacher_acc, member_acc = ensemble_accuracy(teachers, test)
    report: dict[str, Any] = {
        "config": cfg.name,
        "test_samples": len(test),
        "teacher": {"accuracy": teacher_acc, "members": member_acc},
        "students": {
            name: {key: result[key] for key in ("accuracy", "top5", "ece", "objective", "steps", "parameters",
                                                "seconds") if key in result}
            for name, result in students.items()
        },
        "gap_reduction": {},
    }
    baseline = cfg.report.baseline
    if baseline in students:
        for name in cfg.report.compare:
            report["gap_reduction"][f"{name}_vs_{baseline}"] = gap_reduction(
                teacher_acc, students[baseline]["accuracy"], students[name]["accuracy"]
            )
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal."""
    if report.get("task") == "regress":
        from pipeline.regression_report import format_regression_table

        return format_regression_table(report)
    teacher = report["teacher"]["accuracy"]
    lines = [
        f"{'model':<12} {'objective':<10} {'params':>8} {'steps':>6} {'accuracy':>9} {'gap':>7}",
        f"{'teacher':<12} {'ensemble':<10} {'':>8} {'':>6} {teacher:>9.4f} {'':>7}",
    ]
    for name, student in report["students"].items():
        gap = teacher - student["accuracy"]
        lines.append(f"{name:<12} {student['objective']:<10} {student['parameters']:>8} "
                     f"{student['steps']:>6} {student['accuracy']:>9.4f} {gap:>7.4f}")
    for name, value in report["gap_reduction"].items():
        shown = "n/a (baseline has no gap)" if value is None else f"{value:+.1%}"
        lines.append(f"gap reduction {name}: {shown}")
    return "\n".join(lines)
