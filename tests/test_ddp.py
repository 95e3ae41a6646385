"""DDP with 2 CPU processes (torchrun, gloo): ranks read disjoint shards and end with equal weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transfer_fixtures import write_set

from core.config import SourceConfig
from core.models import read_checkpoint
from core.sources import load_source
from student.train import _weights_sha

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def test_two_ranks_read_disjoint_shards_and_end_with_equal_weights(tmp_path):
    train = load_source(SourceConfig(kind="digits"), "train")
    probs = np.full((len(train), 10), 0.02)
    probs[np.arange(len(train)), train.labels] = 0.82
    set_dir = tmp_path / "set"
    write_set(set_dir, train.images(), np.log(probs), [None] * len(train), samples_per_shard=128)  # 12 shards
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_train.py"), str(out), str(set_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    visited = [set(r["visited"]) for r in ranks]
    assert visited[0] and visited[1] and visited[0].isdisjoint(visited[1])
    shard_ids = [{int(url[-10:-4]) for url in v} for v in visited]
    assert {i % 2 for i in shard_ids[0]} == {0} and {i % 2 for i in shard_ids[1]} == {1}
    model = read_checkpoint(out / "model.pt")["state_dict"]

    class Holder:
        def state_dict(self):
            return model

    assert _weights_sha(Holder()) == ranks[0]["weights_sha256"]  # rank 0 saved the shared weights
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 31))
