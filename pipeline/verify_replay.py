"""``transferset verify`` for replay sets: every record decodes, every parameter lies in range of
the source it indexes, and every image rebuilds at the index's shape (what a trainer will do).

The source is opened from the set's own ``index.json`` (``config.source``) and must still be the
one the records were made from (its fingerprint): records of another source would rebuild into
other images without any error, so a changed source is the first problem reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import format as fmt
from core.replay_record import RecordLayout, decode_record, record_layout, source_fingerprint
from core.sample_apply import apply_params
from core.set_index import SetIndex
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


def _view_problems(where: str, aug: dict[str, Any], image: int, ctx: ReplayContext) -> list[str]:
    if "box" in aug:
        top, left, height, width = aug["box"]
        full_h, full_w = ctx.source.raw_size(image)
        if not (height > 0 and width > 0 and top + height <= full_h and left + width <= full_w):
            return [f"{where}: view box {aug['box']} outside image {image} ({full_h}×{full_w})"]
    elif "dx" in aug and not (0 <= aug["dx"] <= 2 * ctx.source.pad and 0 <= aug["dy"] <= 2 * ctx.source.pad):
        return [f"{where}: view offset ({aug['dx']}, {aug['dy']}) outside [0, {2 * ctx.source.pad}]"]
    if aug.get("flip") not in (0, 1):
        return [f"{where}: flip {aug.get('flip')}"]
    return []


def param_problems(where: str, kind: str, params: dict[str, Any], ctx: ReplayContext) -> list[str]:
    """Parameters a record's kind cannot have with this source (indices, boxes, λ, offsets)."""
    images = ctx.layout.params.indices(kind, params)
    problems = [f"{where}: real image {i} outside the source's {len(ctx.source)}" for i in images
                if not 0 <= i < len(ctx.source)]
    if problems:
        return problems
    views = [(params["aug"], params["image"])] if "aug" in params else \
        [(params[f"aug_{p}"], params[p]) for p in ("i", "j") if f"aug_{p}" in params]
    for aug, image in views:
        problems += _view_problems(where, aug, image, ctx)
    if "lam" in params and not 0.0 <= params["lam"] <= 1.0:
        problems.append(f"{where}: lam {params['lam']} outside [0, 1]")
    if "box" in params:
        y0, y1, x0, x1 = params["box"]
        height, width = ctx.source.shape[:2]
        if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
            problems.append(f"{where}: box {params['box']} outside the {height}×{width} image")
    return problems


def check_replay_shard(path: str, name: str, shard: int, index: SetIndex, ctx: ReplayContext,
                       seen: dict[str, str], check: Check) -> tuple[int, list[str]]:
    """``(records read, problems)`` of one replay shard; ``check`` is the task's record check."""
    try:
        records = fmt.read_records(path, ctx.layout.dtype)
    except fmt.FormatError as err:
        return 0, [f"{name}: {err}"]
    problems: list[str] = []
    for position, row in enumerate(records):
        try:
            meta, members = decode_record(ctx.layout, shard, row)
        except Exception as err:  # noqa: BLE001 — a record that does not decode is a finding
            problems.append(f"{name}: record {position}: cannot decode ({type(err).__name__}: {err})")
            continue
        where = f"{name}: sample {meta['key']}"
        if meta["key"] in seen:
            problems.append(f"{where}: also in {seen[meta['key']]}")
        seen[meta["key"]] = name
        found = param_problems(where, meta["sampler"], meta["params"], ctx)
        if found:
            problems += found
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
