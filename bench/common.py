"""What the benchmarks share: where the real data for benchmarks lives (cifar10-mini)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cifar10_mini() -> Path | None:
    """cifar10-mini's folder: $CIFAR10_MINI, else the workspace's shared/data beside the repo;
    None where it is absent (benchmarks then fall back to the bundled digits)."""
    candidates = [os.environ.get("CIFAR10_MINI"), ROOT.parent / "shared" / "data" / "cifar10-mini",
                  Path("/work/shared/data/cifar10-mini")]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
