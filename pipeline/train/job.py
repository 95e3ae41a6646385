"""A job in progress: its config, where its outputs go, its two splits and how it reports — the
context the chain's steps take, instead of five arguments handed down one by one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.progress import Progress, quiet
from core.sources import Source, check_readable, load_source


@dataclass(frozen=True)
class Job:
    cfg: Config
    out: Path
    train: Source
    test: Source
    progress: Progress = quiet


def load_splits(cfg: Config) -> tuple[Source, Source]:
    """Both splits, every image checked readable (its header) before anything is written."""
    train, test = load_source(cfg.source, "train"), load_source(cfg.source, "test")
    check_readable(train)
    check_readable(test)
    return train, test


def open_job(cfg: Config, out: str | Path, progress: Progress = quiet) -> Job:
    """The job with both splits loaded, every image checked readable before anything is written."""
    train, test = load_splits(cfg)
    return Job(cfg, Path(out), train, test, progress)
