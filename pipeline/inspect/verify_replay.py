"""``transferset verify`` for replay sets: every record decodes, every parameter lies in range of
the source it indexes, and every image rebuilds at the index's shape (what a trainer will do).

The source is opened from the set's own ``index.json`` (``config.source``) and must still be the
one the records were made from (its fingerprint): records of another source would rebuild into
other images without any error, so a changed source is the first problem reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.records import format as fmt
from core.records.replay import RecordLayout, decode_record, record_layout, source_fingerprint
from core.records.replay_checks import record_problems
from core.samplers import apply_params
from core.sets.index import SetIndex
from core.sources import Source, load_source
from core.tasks import CLASSIFY, Record

Check = Callable[[str, Record, dict[str, bytes], SetIndex], list[str]]


@dataclass(frozen=True)
class ReplayContext:
    layout: RecordLayout
    source: Source


def replay_context(index: SetIndex) -> ReplayContext | str:
    """The layout and source to check a replay set's records with, or the problem that stops it."""
    source_cfg, set_cfg = index.source_config(), index.set_config()
    if source_cfg is None or set_cfg is None:
        return "index.json: a replay set's index must give config.source and config.set"
    try:
        source = load_source(source_cfg, "train")
    except Exception as err:  # noqa: BLE001 — an unreadable source is a finding
        return f"replay source: cannot open the set's source ({type(err).__name__}: {err})"
    if source_fingerprint(source) != (index.replay or {}).get("source"):
        return (f"replay source: {source.name} is not the source the records were made from (fingerprint "
                f"{source_fingerprint(source)[:12]}…, index says {str((index.replay or {}).get('source'))[:12]}…); "
                f"its images would rebuild differently")
    return ReplayContext(record_layout(set_cfg, source, index.outputs), source)


def shard_problems(records: np.ndarray, ctx: ReplayContext) -> dict[int, list[str]]:
    """The range problems of a shard's records by row (:func:`core.records.replay_checks.record_problems`,
    the trainer's checks, with each view box checked against its image's header)."""
    found: dict[int, list[str]] = {}
    for row, problem in record_problems(ctx.layout.params, records, ctx.layout.num_classes, ctx.source.raw_size):
        found.setdefault(row, []).append(problem)
    return found


def check_replay_shard(path: str, name: str, shard: int, index: SetIndex, ctx: ReplayContext,
                       seen: dict[str, str], check: Check) -> tuple[int, list[str]]:
    """``(records read, problems)`` of one replay shard; ``check`` is the task's record check."""
    try:
        records = fmt.read_records(path, ctx.layout.dtype)
    except fmt.FormatError as err:
        return 0, [f"{name}: {err}"]
    problems: list[str] = []
    out_of_range = shard_problems(records, ctx)
    for position, row in enumerate(records):
        key = fmt.sample_key(shard, int(row["index"]))
        where = f"{name}: sample {key}"
        if key in seen:
            problems.append(f"{where}: also in {seen[key]}")
        seen[key] = name
        if position in out_of_range:
            problems += [f"{where}: {problem}" for problem in out_of_range[position]]
            continue
        try:
            meta, members = decode_record(ctx.layout, shard, row)
        except Exception as err:  # noqa: BLE001 — a record that does not decode is a finding
            problems.append(f"{where}: cannot decode ({type(err).__name__}: {err})")
            continue
        try:
            image = apply_params(meta["sampler"], meta["params"], ctx.source)
            record = {**CLASSIFY.decode_targets(members), "meta": meta, "image": image}
        except Exception as err:  # noqa: BLE001
            problems.append(f"{where}: cannot rebuild ({type(err).__name__}: {err})")
            continue
        expected = index.image.shape if index.image is not None else (None,)
        if None not in expected and tuple(image.shape) != expected:
            problems.append(f"{where}: rebuilt image {tuple(image.shape)}, index says {expected}")
        problems += check(where, record, members, index)
    return len(records), problems
