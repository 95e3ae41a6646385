"""A finished step's ``spec.json``: what it was made from, so a rerun reuses it or redoes it.

Every step of a job (a teacher member, a student run, a pruning phase) leaves one beside its
artifact; a rerun whose spec is unchanged reuses the artifact instead of making it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.store import storage

SPEC_NAME = "spec.json"


def reusable(out_dir: Path, spec: dict[str, Any], artifact: str) -> bool:
    """The step in ``out_dir`` finished (``artifact`` is there) from ``spec``, compared as the JSON
    :func:`mark_done` wrote: a tuple in the spec (an image contract's ``scale``) reads back as a
    list and is the same value."""
    spec_path = out_dir / SPEC_NAME
    return (out_dir / artifact).is_file() and spec_path.is_file() \
        and json.loads(spec_path.read_text()) == json.loads(json.dumps(spec))


def mark_done(out_dir: Path, spec: dict[str, Any]) -> None:
    storage.atomic_write(out_dir / SPEC_NAME, json.dumps(spec, sort_keys=True, indent=1).encode())


def first_difference(found: Any, wanted: Any, where: str = "") -> str:
    """``key.path = recorded, the config says wanted`` for the first value that differs."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        for key in sorted(set(found) | set(wanted)):
            if found.get(key) != wanted.get(key):
                return first_difference(found.get(key), wanted.get(key), f"{where}.{key}".lstrip("."))
    return f"{where} = {json.dumps(found)}, the config says {json.dumps(wanted)}"
