"""Bytes and fidelity of top-k targets on a 100-class set, measured with ``transferset inspect``.

The 100 classes are two-digit numbers: two of scikit-learn's bundled digits side by side
(8×16 grey), label 10·a + b, pairs drawn from the train split for training and from the test
split for testing. It is real data a small CNN learns to high accuracy, so the teachers are as
confident as real teachers are (a flat, barely trained teacher would make any top-k look bad:
KL(full ‖ top-k) is the tail mass times the tail's divergence from uniform). The job trains a
teacher ensemble with the project's trainer, generates a dense and a top-k XCL-Mix set, a top-k
set of real-image views and an XCL-Mix set with the largest k that fits 64 bytes, and runs
``transferset inspect --json`` on each.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/topk_kl.py [--k 10] [--steps 1500]

The last line is JSON: ``target_bytes_per_sample``, ``topk_kl_mean`` (KL(full ‖ top-k), by
re-running the teachers on the stored images), the dense set's figures, the teachers' test
accuracy, and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from common import ROOT  # also puts the repo on sys.path

from core.records.target_codec import target_payload_bytes

# The largest k whose 100-class record fits 64 bytes: 19 × (2-byte value + 1-byte index) +
# 2-byte tail + 4-byte class count = 63 bytes.
MAX_K_64B = max(k for k in range(1, 100) if target_payload_bytes(100, k) <= 64)


def SETS(k: int) -> dict[str, tuple[dict, int]]:  # noqa: N802 — a table, named like one
    """Set name → (sampler, top-k k or 0 for dense): XCL-Mix dense and top-k, real-image views
    top-k, and XCL-Mix with the largest k that fits 64 bytes."""
    return {"dense": ({"kind": "mix"}, 0), "topk": ({"kind": "mix"}, k),
            "topk_views": ({"kind": "views", "views": 2}, k), "topk_max": ({"kind": "mix"}, MAX_K_64B)}


def digit_pairs(out: Path, train_pairs: int, test_pairs: int) -> Path:
    """An ``.npz`` source of two-digit numbers: uint8 (N, 8, 16, 1) images and labels 10·a + b.
    Every number appears equally often; the digits of a pair are drawn from one split only."""
    from core.config import SourceConfig
    from core.sources import load_source

    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, count in (("train", "", train_pairs), ("test", "test_", test_pairs)):
        source = load_source(SourceConfig(kind="digits"), split)
        images, labels = source.images(), source.labels
        by_digit = [np.flatnonzero(labels == d) for d in range(10)]
        numbers = np.arange(count) % 100
        left = np.array([rng.choice(by_digit[n // 10]) for n in numbers])
        right = np.array([rng.choice(by_digit[n % 10]) for n in numbers])
        arrays[f"{prefix}images"] = np.concatenate([images[left], images[right]], axis=2)
        arrays[f"{prefix}labels"] = numbers
    path = out / "digit_pairs.npz"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays, classes=np.array([f"{c:02d}" for c in range(100)]))
    return path


def pairs_job(name: str, data: Path, members: int, steps: int) -> dict:
    """The job around a 100-class digit-pair set: its source and the teachers both benchmarks use."""
    return {
        "name": name, "seed": 0,
        "source": {"kind": "npz", "path": str(data), "pad": 1, "flip": False},
        "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 32, "hidden": 256}},
                     "members": members,
                     "train": {"steps": steps, "batch_size": 128, "lr": 0.05, "num_workers": 0}},
        "teacher_stage": {"batch_size": 512},
    }


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    if result.returncode != 0:
        raise SystemExit(f"transferset {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--train-pairs", type=int, default=20000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "topk")
    args = parser.parse_args()
    data = digit_pairs(args.out, args.train_pairs, args.test_pairs)
    config = {
        **pairs_job("topk100", data, args.members, args.steps),
        "sets": {name: {"sampler": sampler, "samples": args.samples, "samples_per_shard": 1024,
                        **({"targets": {"kind": "topk", "k": k}} if k else {})}
                 for name, (sampler, k) in SETS(args.k).items()},
    }
    path = args.out / "topk100.yaml"
    path.write_text(yaml.safe_dump(config))
    run = args.out / "run"
    cli("train", str(path), "--teachers", "--out", str(run))
    cli("generate", str(path), "--out", str(run))
    accuracy = [json.loads((run / "teachers" / f"member-{m}" / "result.json").read_text())["accuracy"]
                for m in range(args.members)]
    print(f"teachers' test accuracy on the 100 classes: {', '.join(f'{a:.3f}' for a in accuracy)}")
    stats = {name: json.loads(cli("inspect", str(run / "sets" / name), "--json", "--kl-samples", "1024"))
             for name in SETS(args.k)}
    for name, s in stats.items():
        print(f"{name}: {s['target_bytes_per_sample']} B of targets per sample ({s['target_npy_bytes_per_sample']:.0f} "
              f"B as .npy, {s['shard_bytes_per_sample']:.0f} B of shard), mean Ĥ {s['entropy']['mean']:.3f}, "
              f"KL(full ‖ stored) mean {s['target_kl_mean']:.3g} max {s['target_kl_max']:.3g} nats")
    print(json.dumps({
        "k": args.k, "num_classes": 100, "teacher_steps": args.steps, "members": args.members,
        "teacher_accuracy": accuracy,
        "target_bytes_per_sample": stats["topk"]["target_bytes_per_sample"],
        "topk_kl_mean": stats["topk"]["topk_kl_mean"], "topk_kl_max": stats["topk"]["target_kl_max"],
        "dense_bytes_per_sample": stats["dense"]["target_bytes_per_sample"],
        "dense_kl_mean": stats["dense"]["target_kl_mean"],
        "entropy_mean": stats["topk"]["entropy"]["mean"],
        "views_topk_kl_mean": stats["topk_views"]["topk_kl_mean"],
        "views_entropy_mean": stats["topk_views"]["entropy"]["mean"],
        "k_max_64b": MAX_K_64B, "topk_max_64b_bytes": stats["topk_max"]["target_bytes_per_sample"],
        "topk_max_64b_kl_mean": stats["topk_max"]["topk_kl_mean"],
        "shard_bytes_per_sample_topk": round(stats["topk"]["shard_bytes_per_sample"], 1),
        "shard_bytes_per_sample_dense": round(stats["dense"]["shard_bytes_per_sample"], 1),
    }))


if __name__ == "__main__":
    main()
