"""The report of a classification job: teacher and student accuracies on the held-out split over
seeds, the KD gap closed, and what tells apart "the student could not follow the teacher" from
"the teacher was wrong".

gap(student) = teacher accuracy − student accuracy; reduction = 1 − gap(method) / gap(baseline).
Per student: accuracy mean ± std over its seeds, agreement and KL with the ensemble on the test
split, and how many times each stored view was seen. The report warns when the ensemble is no
better than a student trained without it. A regression job's report (error instead of
accuracy) is :mod:`pipeline.report.regression`; :mod:`pipeline.report` picks one by the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config
from core.models import load_model
from core.options.objective import objective_named
from core.sources import Source
from core.tasks import CLASSIFY
from pipeline.report.aggregate import (
    agreement,
    gap_reduction_spread,
    mean_std,
    seen_summary,
    shown,
    summarize_runs,
)
from pipeline.report.pruning import format_pruning, pruning_report
from pipeline.train.runs import student_dir
from student.evaluate import accuracy, predict_probs


def ensemble_probs(teachers: list[Path], test: Source, factories: Sequence[str] = ()) -> tuple[np.ndarray, list[float]]:
    """The ensemble's mean probabilities on the test split, and each member's accuracy."""
    members = [load_model(path, outputs=test.num_classes, allowed_factories=factories) for path in teachers]
    models = [model for model, _ in members]
    specs = [payload["input"] for _, payload in members]
    each = [accuracy(predict_probs([m], [s], test), test.labels) for m, s in zip(models, specs, strict=True)]
    return predict_probs(models, specs, test), each


def normalized_entropy(probs: np.ndarray) -> float:
    """Mean Ĥ = −Σ p log p / log C over the rows (XCL eq 4): 0 for one-hot, 1 for uniform."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return float(np.mean(-np.sum(p * np.log(p), axis=1)) / np.log(p.shape[1]))


def overfit_note(teacher: dict[str, Any]) -> str | None:
    """XCL's diagnostic (§5.2, footnote 2): a teacher far more certain on its training images than
    on held-out ones gives KD on real views little beyond the labels; mixes carry more."""
    train, test = teacher.get("entropy_train"), teacher.get("entropy_test")
    if train is None or test is None or train >= 0.5 * test:
        return None
    return (f"the ensemble is much more certain on its training images (Ĥ {train:.3f}) than on the test split "
            f"(Ĥ {test:.3f}): KD on real views carries little beyond the labels; samples beyond the training "
            f"images (XCL-Mix) carry the teacher's uncertainty")


def student_row(results: dict[int, dict[str, Any]], teacher_accuracy: float) -> dict[str, Any]:
    """A student's report row from its runs by seed: accuracy (and top-5, ECE) mean ± std, the
    gap to the teacher and how often each set's samples were seen."""
    first = results[min(results)]
    row = {key: first[key] for key in ("objective", "steps", "parameters") if key in first}
    row.update(summarize_runs(results, CLASSIFY.report_keys))
    row["gap"] = teacher_accuracy - row["accuracy"]
    row["seconds"] = sum(float(r.get("seconds", 0.0)) for r in results.values())
    row["seen"] = seen_summary(results)
    return row


def teacher_warnings(teacher_accuracy: float, rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per student trained without the teachers (objective erm) that the ensemble does
    not beat: its KD students would learn from a teacher no better than plain training."""
    lines = []
    for name, row in rows.items():
        if not objective_named(row["objective"]).distils and teacher_accuracy <= row["accuracy"]:
            lines.append(
                f"the teacher ensemble ({teacher_accuracy:.4f}) is not better than student {name} trained without "
                f"it ({shown(row['accuracy'], row['accuracy_std'])}, {len(row['seeds'])} seed(s)): by "
                f"{100 * (row['accuracy'] - teacher_accuracy):.2f} points; train the teachers longer or larger")
    return lines


def _agreements(out: Path, name: str, seeds: list[int], teacher_probs: np.ndarray, test: Source,
                factories: Sequence[str]) -> dict[str, Any]:
    values: dict[str, list[float]] = {"agreement": [], "kl": []}
    for seed in seeds:
        path = student_dir(out, name, seed) / "model.pt"
        if not path.is_file():
            return {}
        model, payload = load_model(path, outputs=test.num_classes, allowed_factories=factories)
        measured = agreement(teacher_probs, predict_probs([model], [payload["input"]], test))
        for key, value in measured.items():
            values[key].append(value)
    row: dict[str, Any] = {}
    for key, measured_values in values.items():
        row[key], row[f"{key}_std"] = mean_std(measured_values)
    return row


def build_classification_report(cfg: Config, teachers: list[Path], students: dict[str, dict[int, dict[str, Any]]],
                                test: Source, out: Path | None = None, train: Source | None = None) -> dict[str, Any]:
    """``students``: each student's results by seed (:func:`pipeline.chain.train_students`).
    With ``train`` the ensemble is also measured on the training split (accuracy and Ĥ)."""
    teacher_probs, member_acc = ensemble_probs(teachers, test, cfg.factories)
    teacher_acc = accuracy(teacher_probs, test.labels)
    members_mean, members_std = mean_std(member_acc)
    rows = {name: student_row(results, teacher_acc) for name, results in students.items() if results}
    if out is not None:
        for name, row in rows.items():
            row.update(_agreements(out, name, row["seeds"], teacher_probs, test, cfg.factories))
    teacher: dict[str, Any] = {"accuracy": teacher_acc, "members": member_acc, "members_mean": members_mean,
                               "members_std": members_std, "entropy_test": normalized_entropy(teacher_probs)}
    if train is not None:
        train_probs, _ = ensemble_probs(teachers, train, cfg.factories)
        teacher.update({"accuracy_train": accuracy(train_probs, train.labels),
                        "entropy_train": normalized_entropy(train_probs)})
    report: dict[str, Any] = {
        "config": cfg.name,
        "test_samples": len(test),
        "teacher": teacher,
        "students": rows,
        "warnings": teacher_warnings(teacher_acc, rows),
        "notes": [note] if (note := overfit_note(teacher)) else [],
        "gap_reduction": {},
        "gap_reduction_spread": {},
    }
    pruned = pruning_report(cfg, out) if out is not None else None
    if pruned is not None:
        report["pruning"] = pruned
    baseline = cfg.report.baseline
    if baseline in rows:
        by_seed = {name: dict(zip(row["seeds"], row["accuracy_by_seed"], strict=True)) for name, row in rows.items()}
        for name in cfg.report.compare:
            if name in rows:
                spread = gap_reduction_spread(teacher_acc, by_seed[baseline], by_seed[name])
                report["gap_reduction"][f"{name}_vs_{baseline}"] = spread["value"]
                report["gap_reduction_spread"][f"{name}_vs_{baseline}"] = spread
    return report


def _seen_cell(row: dict[str, Any]) -> str:
    """``real 5.0×, mix 2.5×`` for stored sets; ``fresh 40×`` when every view was new."""
    parts = [f"{'fresh' if not s['stored'] else s['set']} {s['seen']:.1f}×" for s in row.get("seen", [])]
    return ", ".join(parts)


def format_classification_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal."""
    teacher = report["teacher"]
    members = teacher["members"]
    lines = [
        f"{'model':<14} {'objective':<10} {'params':>8} {'steps':>6} {'seeds':>5} {'accuracy':>17} {'gap':>7} "
        f"{'agree':>6} {'KL':>6}  seen",
        f"{'teacher':<14} {'ensemble':<10} {'':>8} {'':>6} {len(members):>5} {teacher['accuracy']:>17.4f} {'':>7}"
        f"   members {shown(teacher['members_mean'], teacher['members_std'])}",
    ]
    for name, row in report["students"].items():
        accuracy = shown(row["accuracy"], row["accuracy_std"] if len(row["seeds"]) > 1 else None)
        agree = f"{row['agreement']:>6.3f} {row['kl']:>6.3f}" if "agreement" in row else f"{'':>6} {'':>6}"
        lines.append(f"{name:<14} {row['objective']:<10} {row['parameters']:>8} {row['steps']:>6} "
                     f"{len(row['seeds']):>5} {accuracy:>17} {row['gap']:>7.4f} {agree}  {_seen_cell(row)}")
    spreads = report.get("gap_reduction_spread", {})
    for name, value in report["gap_reduction"].items():
        text = "n/a (baseline has no gap)" if value is None else f"{value:+.1%}"
        spread = spreads.get(name, {})
        if value is not None and spread.get("std") is not None:
            text += f" (over {spread['pairs']} seed pairs {spread['mean']:+.1%} ± {spread['std']:.1%})"
        lines.append(f"gap reduction {name}: {text}")
    if "entropy_train" in teacher:
        lines.append(f"teacher Ĥ: training split {teacher['entropy_train']:.3f} (accuracy "
                     f"{teacher['accuracy_train']:.4f}), test split {teacher['entropy_test']:.3f}")
    if "pruning" in report:
        lines.append(format_pruning(report["pruning"]))
    lines += [f"note: {line}" for line in report.get("notes", [])]
    lines += [f"warning: {line}" for line in report.get("warnings", [])]
    return "\n".join(lines)
