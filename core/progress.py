"""How a long step says what it is doing: one line at a time, which the command line prints to
stderr (results go to stdout). Every floor takes the same callable, so a step can be run quietly."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A :data:`Progress` that says nothing."""
