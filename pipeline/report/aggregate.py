"""Figures over the seeds of a student, and how close a student came to its teacher.

A single run is one draw: on a 1 000-image test split one image is 0.1 points, and the seed
alone moves a student by more than that. So every student is trained once per seed, the report
shows mean ± std (sample standard deviation, n − 1) with the number of seeds, and an ordering is
claimed only when the difference is larger than the spread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def gap_reduction(teacher: float, baseline: float, method: float) -> float | None:
    """``1 − gap(method) / gap(baseline)``, gap = teacher accuracy − student accuracy (None when
    the baseline already matches the teacher: nothing to reduce)."""
    gap_baseline = teacher - baseline
    if gap_baseline <= 0:
        return None
    return 1.0 - (teacher - method) / gap_baseline


def gap_reduction_spread(teacher: float, baseline: dict[int, float], method: dict[int, float]) -> dict[str, Any]:
    """The gap reduction of ``method`` against ``baseline`` (accuracies by seed): ``value`` from
    the two means, and its spread over the seeds both have — seed s of the method against seed s
    of the baseline, which are independent runs, so the pairs' std holds both students' noise.
    ``pairs`` counts the pairs with a defined reduction."""
    value = gap_reduction(teacher, mean_std(list(baseline.values()))[0], mean_std(list(method.values()))[0])
    per_pair = [gap_reduction(teacher, baseline[s], method[s]) for s in sorted(set(baseline) & set(method))]
    defined = [r for r in per_pair if r is not None]
    mean, std = mean_std(defined)
    return {"value": value, "mean": mean if defined else None, "std": std if len(defined) > 1 else None,
            "pairs": len(defined)}


def agreement(teacher_probs: np.ndarray, student_probs: np.ndarray) -> dict[str, float]:
    """How far a student's predictions are from the teacher's on the same images: the share of
    images where their top-1 classes agree, and the mean ``KL(p_T ‖ p_S)`` in nats (τ = 1).

    High agreement with low accuracy says the teacher was wrong; low agreement says the student
    could not follow it."""
    if teacher_probs.shape != student_probs.shape or not len(teacher_probs):
        raise ValueError(f"need probabilities of the same images, got {teacher_probs.shape} and {student_probs.shape}")
    p = np.clip(np.asarray(teacher_probs, dtype=np.float64), 1e-12, 1.0)
    q = np.clip(np.asarray(student_probs, dtype=np.float64), 1e-12, 1.0)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    same = np.argmax(teacher_probs, axis=1) == np.argmax(student_probs, axis=1)
    return {"agreement": float(same.mean()), "kl": float(kl.mean())}


def summarize_runs(results: dict[int, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """One student's row from its runs by seed: for each key in ``keys`` the mean (under the key)
    and ``<key>_std``, and the per-seed values under ``<key>_by_seed``; ``seeds`` lists them."""
    seeds = sorted(results)
    row: dict[str, Any] = {"seeds": seeds}
    for key in keys:
        values = [float(results[s][key]) for s in seeds if key in results[s]]
        if len(values) != len(seeds):
            continue
        row[key], row[f"{key}_std"] = mean_std(values)
        row[f"{key}_by_seed"] = values
    return row


def seen_summary(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over the seeds of how often each sample of each set was seen (:func:`student.train.views_seen`)."""
    rows: dict[str, dict[str, Any]] = {}
    for result in results.values():
        for entry in result.get("seen", []):
            row = rows.setdefault(entry["set"], {"set": entry["set"], "stored": entry["stored"],
                                                 "samples": entry["samples"], "seen": []})
            row["seen"].append(float(entry["seen"]))
    return [{**row, "seen": mean_std(row["seen"])[0]} for row in rows.values()]


def shown(mean: float, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` as the table prints it (``mean`` alone without a spread)."""
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
