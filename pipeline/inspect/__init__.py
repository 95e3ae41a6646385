"""``transferset inspect``: what a transfer set holds, from its manifest and a sample of records.

The statistics, their text and the plots depend on the set's task: classification
(:mod:`pipeline.inspect.classification`: samplers, Ĥ and disagreement, Ĥ by λ, argmax classes,
target bytes and the KL the stored target loses) or regression
(:mod:`pipeline.inspect.regression`: predicted σ, its aleatoric and epistemic parts, σ by λ).
A new task registers its own in :data:`INSPECTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.tasks import CLASSIFY, REGRESS
from pipeline.inspect.classification import (
    format_classification,
    inspect_classification,
    write_classification_plots,
)
from pipeline.inspect.common import open_set
from pipeline.inspect.regression import format_regression, inspect_regression, write_regression_plots

# task → (statistics, their text, plots)
Inspector = tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str], Callable[..., list[str]]]
INSPECTORS: dict[str, Inspector] = {
    CLASSIFY.name: (inspect_classification, format_classification, write_classification_plots),
    REGRESS.name: (inspect_regression, format_regression, write_regression_plots),
}


def inspect_set(set_dir: str | Path, kl_samples: int = 256) -> dict[str, Any]:
    """The statistics of a set as one JSON-able dict (a classification set's carry no ``task``)."""
    set_dir = str(set_dir)
    index, table = open_set(set_dir)
    return INSPECTORS[index.kind.name][0](set_dir, index, table, kl_samples)


def format_report(stats: dict[str, Any]) -> str:
    """The statistics as text for the terminal."""
    return INSPECTORS[stats.get("task", CLASSIFY.name)][1](stats)


def write_plots(set_dir: str | Path, out_dir: str | Path, models: dict[str, str | Path] | None = None) -> list[str]:
    """The set's PNG plots in ``out_dir``; returns their paths. A regression set's σ-vs-λ plot
    also shows the σ the ``models`` (name → regression checkpoint) predict on its stored mixes."""
    import matplotlib

    matplotlib.use("Agg")
    set_dir, out = str(set_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index, table = open_set(set_dir)
    return INSPECTORS[index.kind.name][2](set_dir, out, index, table, models or {})
