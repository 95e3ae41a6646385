"""Replay shards made in this process, without Ray or teachers: the stages' draw (``draw_shard``),
random ensemble outputs labelled by the task (``CLASSIFY.labelled``, so dense, top-k and sampled
targets are stored as generation stores them) and the records' encoder. Fast enough for unit
tests of the reader; the sets of ``test_replay_sets.py`` check the real stages end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.config import SetConfig
from core.records.format import sample_key
from core.records.replay import encode_records, record_layout
from core.sets.replay_shards import ReplayShards
from core.sources import Source
from core.tasks import CLASSIFY
from core.tasks.classification import EnsembleOutput
from stages.samplers import draw_shard, sample_label, set_size


def ensemble_output(rng: np.random.Generator, count: int, classes: int) -> EnsembleOutput:
    """Peaked random log p̄ rows (some classes far below the float16 floor, as real teachers give)."""
    logits = rng.normal(size=(count, classes)) * rng.uniform(1, 12, size=(count, 1))
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    entropy = -(np.exp(logp) * logp).sum(1) / np.log(classes)
    return EnsembleOutput(logp.astype(np.float32), entropy.astype(np.float32), rng.uniform(0, 1, count).astype(
        np.float32), logp.argmax(1), np.ones(count, bool))


def write_replay_shards(out: Path, set_cfg: dict[str, Any], source: Source, classes: int, shards: int,
                        seed: int = 0) -> tuple[list[tuple[str, int]], ReplayShards]:
    """``shards`` replay shards of ``set_cfg`` drawn from ``source``: their (url, samples) and the
    reader's :class:`ReplayShards` format over ``source`` itself."""
    cfg = SetConfig.model_validate({**set_cfg, "store": "replay"})
    layout = record_layout(cfg, source, classes)
    total = set_size(cfg, source)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shard in range(shards):
        drawn = draw_shard(cfg, source, seed, shard, total)
        output = ensemble_output(np.random.default_rng([seed, shard]), len(drawn), classes)
        samples = []
        for index, (kind, params) in enumerate(drawn):
            meta = {"key": sample_key(shard, index), "shard": shard, "index": index, "sampler": kind,
                    "params": params}
            samples.append(CLASSIFY.labelled(meta["key"], np.zeros((1, 1, 1), np.uint8), meta, output, index,
                                             sample_label(kind, params, source), cfg.targets,
                                             identity=(seed, shard, index)))
        path = out / f"shard-{shard:06d}.npy"
        np.save(path, encode_records(layout, samples), allow_pickle=False)
        written.append((str(path), len(samples)))
    return written, ReplayShards(layout, source)
