"""Views-only sets as format 1 wrote them, for the tests that old sets are still read and never
grown or replaced by format-2 shards.

Format 1 enumerated a views set image by image: position p was view ``p % K`` of image
``order[p // K]``, one seeded ``order`` for the whole set, and its fingerprint hashed ``format: 1``.
:func:`write_format1_set` makes such a set in this process (no Ray) with the project's own
writer — the same make/label/commit/finish steps a run takes — with only the order swapped back,
then stamps ``format: 1`` in its index and gives a short last shard the name sets had before
counted names (``shard-N.tar``, :func:`legacy_names`). ``tests/test_golden_bytes.py`` checks that
it gives the bytes format 1 recorded, so the sets it makes are the real old ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from conftest import plan_in

from core.config import SetConfig
from core.samplers import sample_rng
from core.samplers.base import SET_STREAM, draw_view, identity_view
from core.sets import index as sx
from core.sets.fingerprint import fingerprint_payload
from core.sources import Source, load_source_cached
from pipeline.generate.plan import SetPlan, finish, resume, start
from stages import writer
from stages.teachers import Ensemble


def format1_draw_shard(set_cfg: SetConfig, source: Source, seed: int, shard: int, total: int) -> list[tuple[str, Any]]:
    """``draw_shard`` of a views-only set in format 1's order (image by image)."""
    spp, views = set_cfg.samples_per_shard, set_cfg.sampler_list()[0].views
    order = np.random.default_rng([seed, SET_STREAM]).permutation(len(source))
    drawn = []
    for index in range(max(0, min(spp, total - shard * spp))):
        slot, view = divmod(shard * spp + index, views)
        image = int(order[slot])
        aug = identity_view(source, image) if view == 0 else draw_view(sample_rng(seed, shard, index), source, image)
        drawn.append(("views", {"image": image, "view": int(view), "aug": aug}))
    return drawn


@contextlib.contextmanager
def format1_order() -> Iterator[None]:
    """The writer draws views sets in format 1's order while this is open (this process only)."""
    saved = writer.draw_shard
    writer.draw_shard = format1_draw_shard
    try:
        yield
    finally:
        writer.draw_shard = saved


def format1_fingerprint(plan: SetPlan, autocast: str = "none") -> str:
    """What format 1 computed: the same payload with ``format: 1``."""
    spec = plan.spec
    identity = load_source_cached(spec.source_cfg, "train").identity
    payload = fingerprint_payload(spec.set_cfg, identity, [t.sha256 for t in spec.teachers], spec.seed, autocast)
    text = json.dumps({**payload, "format": 1}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_format1_set(out: Path, set_cfg: SetConfig, teachers: list[Path], seed: int = 0, name: str = "real",
                      **job: Any) -> SetPlan:
    """A finished format-1 views set at ``out`` (fingerprint, marker and index as format 1 wrote
    them); returns its plan, whose spec carries the format-1 fingerprint."""
    assert set_cfg.enumerates_source()
    plan = plan_in(out, set_cfg, teachers, seed=seed, name=name, **job)
    plan = SetPlan(spec=plan.spec.model_copy(update={"fingerprint": format1_fingerprint(plan)}), index=None)
    spec, stage = plan.spec, plan.spec.teacher_stage
    start(plan)
    ensemble = Ensemble(teachers, spec.outputs, task=spec.task_name, device="cpu", threads=stage.torch_threads(),
                        batch_size=stage.batch_size)
    state = resume(plan, lambda _: None)
    with format1_order():
        for shard in state.missing(spec):
            images, drawn, labels = writer.make_shard(spec, shard)
            state.summaries[shard] = writer.write_shard(spec, shard, images, drawn, labels, ensemble.predict(images),
                                                        count=spec.planned(shard))
    finish(plan, state)
    index = out / "index.json"
    index.write_text(json.dumps({**legacy_names(out, json.loads(index.read_text())), "format": 1}, indent=1,
                                sort_keys=True))
    return plan


def legacy_names(set_dir: Path, index: dict[str, Any]) -> dict[str, Any]:
    """Rename a counted short shard (``shard-N-C.tar``) to the plain name every set had before
    counted names, as a set made by an earlier version holds it; returns the index with its name."""
    for entry in index["shards"]:
        shard, count = sx.parse_shard(entry["name"]) or (0, None)
        if count is not None:
            plain = sx.shard_name(shard, suffix=Path(entry["name"]).suffix)
            (set_dir / sx.SHARDS_DIR / entry["name"]).rename(set_dir / sx.SHARDS_DIR / plain)
            entry["name"] = plain
    return index
