"""The job report, by the task of the job's source: :mod:`pipeline.report.classification`
(accuracies, agreement and KL with the ensemble, the KD gap closed) or
:mod:`pipeline.report.regression` (errors, NLL and σ calibration, σ by λ). A new task registers
its report in :data:`REPORTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import Config
from core.sources import Source
from core.tasks import CLASSIFY, REGRESS
from pipeline.report.classification import build_classification_report, format_classification_table
from pipeline.report.regression import build_regression_report, format_regression_table

Build = Callable[..., dict[str, Any]]
REPORTS: dict[str, tuple[Build, Callable[[dict[str, Any]], str]]] = {
    CLASSIFY.name: (build_classification_report, format_classification_table),
    REGRESS.name: (build_regression_report, format_regression_table),
}


def build_report(cfg: Config, teachers: list[Path], students: dict[str, dict[int, dict[str, Any]]],
                 test: Source, out: Path | None = None, train: Source | None = None) -> dict[str, Any]:
    """``students``: each student's results by seed (:func:`pipeline.chain.train_students`).
    With ``out`` the report also reads the students' models; with ``train`` the classification
    report measures the ensemble on the training split too (accuracy and Ĥ)."""
    return REPORTS[test.task.name][0](cfg, teachers, students, test, out, train)


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal (its ``task`` says which; a
    classification report carries none)."""
    return REPORTS[report.get("task", CLASSIFY.name)][1](report)
