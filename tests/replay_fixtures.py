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


def mix_job(name: str, store: str, targets: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """A whole job around one 512-sample digits mix set stored as ``store``: one tiny teacher, a KD
    ``student`` on the set and the real split (``transferset run`` makes it in about 40 s)."""
    return {
        "name": name, "seed": 0, "source": {"kind": "digits"},
        "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                     "train": {"steps": 30, "batch_size": 128}},
        "teacher_stage": {"batch_size": 512, "actors": 1, "num_cpus": 0.5, "threads": 1},
        "student_stage": {"parallel": "off"},
        "sets": {"mix": {"sampler": {"kind": "mix"}, "samples": 512, "samples_per_shard": 256, "store": store,
                         "targets": targets}},
        "students": {"kd": {"model": student, "objective": "kd", "sets": {"mix": 1.0, "source": 0.5},
                            "kd": {"alpha": 0.5}, "train": {"steps": 20, "batch_size": 64, "num_workers": 1}}},
    }


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


def opened_set(set_dir: Path, source_cfg: dict[str, Any]) -> Any:
    """The trainer's view of one set (``student.shards.open_transfer_sets``) over the split of ``source_cfg``."""
    from core.config import SourceConfig
    from core.sources import load_source
    from student.shards import open_transfer_sets

    source = load_source(SourceConfig.model_validate(source_cfg), "train")
    (found,) = open_transfer_sets([(str(set_dir), 1.0)], source=source)
    return found


def trainer_arrays(set_dir: Path, source_cfg: dict[str, Any]) -> list:
    """Every shard of a set decoded as the trainer decodes it (images, targets, labels)."""
    from student.shards import decode_shard

    found = opened_set(set_dir, source_cfg)
    return [decode_shard(url, n, found.width, found.shard_format) for url, n in zip(found.urls, found.samples,
                                                                                      strict=True)]
