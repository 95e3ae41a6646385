"""Seeds, spreads and student–teacher agreement: the report's figures on known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report import format_table
from pipeline.report.aggregate import agreement, gap_reduction_spread, mean_std, seen_summary, summarize_runs
from pipeline.report.classification import student_row, teacher_warnings


def test_mean_std_is_the_sample_standard_deviation() -> None:
    assert mean_std([0.70, 0.72, 0.74]) == pytest.approx((0.72, 0.02))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_student_row_aggregates_known_per_seed_accuracies() -> None:
    results = {
        s: {"objective": "kd", "steps": 100, "parameters": 1234, "accuracy": acc, "top5": 0.9, "ece": 0.05,
            "seconds": 10.0, "seen": [{"set": "real", "stored": True, "samples": 400, "drawn": d, "trained": d,
                                       "seen": d / 400}]}
        for s, acc, d in ((0, 0.61, 800), (1, 0.64, 1000), (2, 0.67, 1200))
    }
    row = student_row(results, teacher_accuracy=0.70)
    assert row["seeds"] == [0, 1, 2]
    assert row["accuracy"] == pytest.approx(0.64)
    assert row["accuracy_std"] == pytest.approx(0.03)
    assert row["accuracy_by_seed"] == [0.61, 0.64, 0.67]
    assert row["gap"] == pytest.approx(0.06)
    assert row["seconds"] == 30.0
    assert row["seen"] == [{"set": "real", "stored": True, "samples": 400, "seen": pytest.approx(2.5)}]


def test_gap_reduction_spread_pairs_the_seeds() -> None:
    teacher = 0.80
    kd = {0: 0.70, 1: 0.72, 2: 0.74}          # gaps 0.10, 0.08, 0.06
    xcl = {0: 0.75, 1: 0.76, 2: 0.77, 3: 0.9}  # gaps 0.05, 0.04, 0.03; seed 3 has no partner
    spread = gap_reduction_spread(teacher, kd, xcl)
    assert spread["value"] == pytest.approx(1 - (0.80 - np.mean([0.75, 0.76, 0.77, 0.9])) / (0.80 - 0.72))
    assert spread["pairs"] == 3
    per_pair = [0.5, 0.5, 0.5]  # 0.05/0.10, 0.04/0.08, 0.03/0.06
    assert spread["mean"] == pytest.approx(np.mean(per_pair))
    assert spread["std"] == pytest.approx(0.0, abs=1e-12)
    no_gap = gap_reduction_spread(0.70, {0: 0.71}, {0: 0.72})
    assert no_gap == {"value": None, "mean": None, "std": None, "pairs": 0}


def test_agreement_and_kl_on_known_probabilities() -> None:
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    student = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    measured = agreement(teacher, student)
    assert measured["agreement"] == pytest.approx(3 / 4)  # row 1's top class differs
    expected_kl = np.mean(np.sum(teacher * np.log(teacher / student), axis=1))
    assert measured["kl"] == pytest.approx(expected_kl)
    assert agreement(teacher, teacher) == {"agreement": 1.0, "kl": pytest.approx(0.0, abs=1e-12)}
    with pytest.raises(ValueError):
        agreement(teacher, student[:2])


def test_summaries_skip_keys_a_run_lacks_and_average_seen() -> None:
    runs = {0: {"accuracy": 0.5, "top5": 0.9}, 1: {"accuracy": 0.7}}
    row = summarize_runs(runs, ("accuracy", "top5"))
    assert row["accuracy"] == pytest.approx(0.6) and "top5" not in row
    seen = seen_summary({0: {"seen": [{"set": "source", "stored": False, "samples": 10, "seen": 4.0}]},
                         1: {"seen": [{"set": "source", "stored": False, "samples": 10, "seen": 6.0}]}})
    assert seen == [{"set": "source", "stored": False, "samples": 10, "seen": 5.0}]


def test_the_report_warns_when_the_ensemble_is_no_better_than_plain_training() -> None:
    rows = {"erm": {"objective": "erm", "accuracy": 0.720, "accuracy_std": 0.004, "seeds": [0, 1, 2]},
            "kd": {"objective": "kd", "accuracy": 0.750, "accuracy_std": 0.004, "seeds": [0, 1, 2]}}
    lines = teacher_warnings(0.716, rows)
    assert len(lines) == 1 and "student erm" in lines[0] and "by 0.40 points" in lines[0]
    assert teacher_warnings(0.760, rows) == []  # kd is not trained without the teachers


def test_the_table_prints_mean_std_seeds_and_views_seen() -> None:
    seen = [{"set": "real", "stored": True, "samples": 400, "seen": 2.5}]
    report = {
        "teacher": {"accuracy": 0.8, "members": [0.7, 0.72], "members_mean": 0.71, "members_std": 0.0141},
        "students": {"kd": {"objective": "kd", "parameters": 10, "steps": 5, "seeds": [0, 1, 2],
                            "accuracy": 0.64, "accuracy_std": 0.03, "gap": 0.16, "agreement": 0.9, "kl": 0.2,
                            "seen": seen}},
        "gap_reduction": {"xcl_vs_kd": 0.5},
        "gap_reduction_spread": {"xcl_vs_kd": {"value": 0.5, "mean": 0.45, "std": 0.1, "pairs": 3}},
        "warnings": ["the teacher is weak"],
    }
    table = format_table(report)
    assert "0.6400 ± 0.0300" in table and "real 2.5×" in table and "0.900" in table
    assert "+50.0% (over 3 seed pairs +45.0% ± 10.0%)" in table
    assert "members 0.7100 ± 0.0141" in table
    assert table.splitlines()[-1] == "warning: the teacher is weak"


def test_teacher_entropy_and_the_overfit_note() -> None:
    from pipeline.report.classification import normalized_entropy, overfit_note

    assert normalized_entropy(np.full((3, 4), 0.25)) == pytest.approx(1.0)
    assert normalized_entropy(np.eye(4)) == pytest.approx(0.0, abs=1e-9)
    half = np.array([[0.5, 0.5, 0.0, 0.0]])
    assert normalized_entropy(half) == pytest.approx(np.log(2) / np.log(4))
    assert "much more certain" in overfit_note({"entropy_train": 0.044, "entropy_test": 0.299})
    assert overfit_note({"entropy_train": 0.36, "entropy_test": 0.37}) is None
    assert overfit_note({"entropy_test": 0.37}) is None
