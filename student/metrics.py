"""``metrics.jsonl`` of a training run: windowed train rows, eval rows, optional TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from student.curves import TensorBoard

# At most this many train rows in metrics.jsonl (each averages the steps since the previous one).
MAX_TRAIN_ROWS = 1000


def log_interval(steps: int) -> int:
    """Steps between train rows of metrics.jsonl (the last step always gets a row)."""
    return max(1, math.ceil(steps / MAX_TRAIN_ROWS))


class Window:
    """Mean loss and extras and throughput since the last report; sums stay on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.seconds = torch.zeros((), device=self.device), 0, 0.0
        self.extras: dict[str, float] = {}

    def add(self, loss: torch.Tensor, seconds: float, extras: dict[str, float]) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.seconds += seconds
        for key, value in extras.items():
            self.extras[key] = self.extras.get(key, 0.0) + value

    def take(self, batch_size: int) -> tuple[float, float, dict[str, float]]:
        """``(mean loss, samples/s, mean extras)`` of the window, which then starts again."""
        steps = max(self.steps, 1)
        result = (float(self.loss) / steps, self.steps * batch_size / max(self.seconds, 1e-9),
                  {k: v / steps for k, v in self.extras.items()})
        self.reset()
        return result


class MetricsLog:
    """The rows of ``metrics.jsonl`` (rank 0 only; other ranks write nothing). A resumed run keeps
    the rows up to the step it resumes at and continues after them."""

    def __init__(self, path: Path, start_step: int, is_main: bool, tensorboard: TensorBoard | None) -> None:
        self.path, self.tensorboard, self.file = path, tensorboard, None
        if not is_main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
        self.file = open(path, "w")  # noqa: SIM115  # closed by close()
        self.file.write("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.write(row)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
