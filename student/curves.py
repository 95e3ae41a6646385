"""Training curves: ``curves.png`` from ``metrics.jsonl``, and optional TensorBoard logging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError


def plot_curves(metrics_path: Path, out_path: Path, title: str) -> None:
    """Loss and learning rate against the step, and the eval accuracy / ECE when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train loss")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    lr_axis = left.twinx()
    lr_axis.plot([r["step"] for r in train], [r["lr"] for r in train], color="grey", lw=0.6, ls="--")
    lr_axis.set_ylabel("learning rate")
    if evals and "error" in evals[0]:  # a regression model
        steps = [r["step"] for r in evals]
        right.plot(steps, [r["error"] for r in evals], marker="o", label=f"{evals[0].get('metric', '')} error")
        calibration = right.twinx()
        calibration.plot(steps, [r.get("calibration_error", float("nan")) for r in evals], marker="x", color="C1")
        calibration.set_ylabel("σ calibration error (x)")
        right.legend(loc="best")
    elif evals:
        steps = [r["step"] for r in evals]
        right.plot(steps, [r["accuracy"] for r in evals], marker="o", label="top-1")
        right.plot(steps, [r.get("top5", float("nan")) for r in evals], marker=".", label="top-5")
        right.plot(steps, [r.get("ece", float("nan")) for r in evals], marker="x", label="ECE")
        right.legend(loc="best")
    right.set_xlabel("step")
    right.set_title("held-out split")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


class TensorBoard:
    """Scalars of the metrics rows to a TensorBoard event file (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UserError("train.tensorboard: the tensorboard package is not installed "
                            "(pip install tensorboard), or set train.tensorboard: false") from err
        self.writer = SummaryWriter(str(log_dir))

    def write(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("kind", "step") and isinstance(value, int | float):
                self.writer.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()
