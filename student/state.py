"""Resumable train states: model, optimizer, AMP scaler and step, written every
``checkpoint_steps`` steps.

Why nothing else (but the rows counted so far and what they covered, for the result's figures):
the learning rate is a pure function of the step (:mod:`student.optim`), the stream is a pure
function of the step it starts at (:mod:`student.stream`) and the step's own draws are seeded by
``(seed, step, rank)`` (:mod:`student.objectives`), so a run resumed from the state of step s
continues exactly as the uninterrupted run did. A state from a different run (another config, seed, data or reader
layout) is never resumed: its ``spec`` hash differs.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.store.storage import atomic_write

STATE_NAME = "state.pt"
STATE_FORMAT = "transferset-train-state/2"


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def save_state(path: Path, *, spec: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, counts: dict[str, list[int]] | None = None,
               coverage: dict[str, Any] | None = None) -> None:
    """``counts``: the objective's rows by origin so far (:class:`student.objectives.RowCounts`);
    ``coverage``: what they covered (:meth:`student.stream.coverage.Coverage.state`)."""
    payload = {
        "format": STATE_FORMAT, "spec": spec, "step": step, "counts": dict(counts or {}),
        "coverage": coverage or {},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


def load_state(path: Path, spec: str) -> dict[str, Any] | None:
    """The saved state if it belongs to this run (``spec``), else None. Loaded weights-only."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged state file is not worth failing a run for: start over
        return None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT or payload.get("spec") != spec:
        return None
    return payload


def restore(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None) -> int:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])
