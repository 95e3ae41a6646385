"""Bytes and fidelity of top-k targets on a 100-class set, measured with ``transferset inspect``.

There is no 100-class data set on this machine, so one is built from cifar10-mini: each CIFAR
class is split into 10 sub-classes by the image's mean brightness (deciles within the class),
giving 100 classes that a CNN can partly learn (a sharp-ish, realistic teacher rather than
random logits). The job trains a teacher ensemble on it with the project's trainer, generates a
dense and a top-k XCL-Mix set, and runs ``transferset inspect --json`` on both.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/topk_kl.py [--k 10] [--steps 600]

The last line is JSON: ``target_bytes_per_sample``, ``topk_kl_mean`` (KL(full ‖ top-k), by
re-running the teachers on the stored images), the dense set's figures, and the settings.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CIFAR_MINI = Path(os.environ.get("CIFAR10_MINI", ROOT.parent / "shared" / "data" / "cifar10-mini"))
if not CIFAR_MINI.is_dir():
    CIFAR_MINI = Path("/work/shared/data/cifar10-mini")


def hundred_classes(out: Path) -> Path:
    """cifar10-mini relabelled into 100 classes: class·10 + brightness decile within the class."""
    from pipeline.config import SourceConfig
    from stages.sources import load_in_memory, load_source

    arrays = {}
    for split, prefix in (("train", ""), ("test", "test_")):
        source = load_in_memory(load_source(SourceConfig(kind="imagefolder", path=str(CIFAR_MINI)), split))
        images = source.images()
        brightness = images.reshape(len(images), -1).mean(axis=1)
        labels = np.zeros(len(images), dtype=np.int64)
        for cls in range(10):
            members = np.flatnonzero(source.labels == cls)
            edges = np.quantile(brightness[members], np.linspace(0, 1, 11)[1:-1])
            labels[members] = cls * 10 + np.searchsorted(edges, brightness[members], side="right")
        arrays[f"{prefix}images"], arrays[f"{prefix}labels"] = images, labels
    path = out / "cifar100ish.npz"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays, classes=np.array([f"c{c // 10}b{c % 10}" for c in range(100)]))
    return path


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    if result.returncode != 0:
        raise SystemExit(f"transferset {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "topk")
    args = parser.parse_args()
    data = hundred_classes(args.out)
    config = {
        "name": "topk100", "seed": 0,
        "source": {"kind": "npz", "path": str(data), "pad": 4, "flip": True},
        "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 32, "hidden": 256}},
                     "members": args.members,
                     "train": {"steps": args.steps, "batch_size": 128, "lr": 0.05, "num_workers": 0}},
        "teacher_stage": {"batch_size": 512},
        "sets": {name: {"sampler": {"kind": "mix"}, "samples": args.samples, "samples_per_shard": 1024,
                        **({"targets": {"kind": "topk", "k": args.k}} if name == "topk" else {})}
                 for name in ("dense", "topk")},
    }
    path = args.out / "topk100.yaml"
    path.write_text(yaml.safe_dump(config))
    run = args.out / "run"
    cli("train", str(path), "--teachers", "--out", str(run))
    cli("generate", str(path), "--out", str(run))
    stats = {name: json.loads(cli("inspect", str(run / "sets" / name), "--json", "--kl-samples", "1024"))
             for name in ("dense", "topk")}
    for name, s in stats.items():
        print(f"{name}: {s['target_bytes_per_sample']} B of targets per sample ({s['target_npy_bytes_per_sample']:.0f} "
              f"B as .npy, {s['shard_bytes_per_sample']:.0f} B of shard), mean Ĥ {s['entropy']['mean']:.3f}, "
              f"KL(full ‖ stored) mean {s['target_kl_mean']:.3g} max {s['target_kl_max']:.3g} nats")
    print(json.dumps({
        "k": args.k, "num_classes": 100, "teacher_steps": args.steps, "members": args.members,
        "target_bytes_per_sample": stats["topk"]["target_bytes_per_sample"],
        "topk_kl_mean": stats["topk"]["topk_kl_mean"], "topk_kl_max": stats["topk"]["target_kl_max"],
        "dense_bytes_per_sample": stats["dense"]["target_bytes_per_sample"],
        "dense_kl_mean": stats["dense"]["target_kl_mean"],
        "entropy_mean": stats["topk"]["entropy"]["mean"],
        "shard_bytes_per_sample_topk": round(stats["topk"]["shard_bytes_per_sample"], 1),
        "shard_bytes_per_sample_dense": round(stats["dense"]["shard_bytes_per_sample"], 1),
    }))


if __name__ == "__main__":
    main()
