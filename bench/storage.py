"""Bytes per stored view on disk of replay sets (``store: replay``), beside the same sets as pixels.

Four sets of at least 100 000 views, made by the project's stages (``pipeline.generate.driver.generate_set``
in an embedded 2-CPU Ray: draw → images → a 2-member ensemble of tiny CNN teachers trained by the
project's trainer → ``write_shard``), with the default 1024 samples per shard:

* ``dense10_views``: the bundled digits (1437 images, 10 classes) × 70 views, dense float16 targets;
* ``topk100_views``: bench/topk_kl.py's 100-class digit pairs (20 000 images, 8×16) × 5 views, top-10;
* ``mix_topk100``: XCL-Mix of the digit pairs, 100 000 samples, top-10 targets;
* ``mix_sampled100``: the same mixes with sampled-class targets (k = 10).

Each row gives the record (the structured ``.npy`` row), the shard files per view (the ``.npy``
header included: what the goals are on), what the file system allocates for them (4 KiB blocks),
``index.json`` and ``manifest.parquet`` per view, and the set's total. Pixel sets of 100 000 views
are large, so the pixel figure is measured on a smaller set of the same config: the first 10 240
samples of the same draw for the mixes, fewer views per image for the views sets (listed). The
teachers' quality does not change a byte: every column is fixed-width and stored uncompressed.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/storage.py [--out DIR]    # ~20 min on 2 cores

The first three cases are also made packed (``store: packed``: the same records in bits, top-10 on
an 8-bit grid, no ``manifest.parquet``); their goal is today's replay record alone, now with every
file of the set counted (``<case>_packed_B``). The 1 000-class measurement is bench/storage_1000.py.

The last line is JSON: ``<case>_B`` (shard bytes per view of each replay set, the goal's figure),
``<case>_total_B``, ``<case>_pixels_B``, ``<case>_packed_B``, the records' widths and the goals.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT  # also puts the repo on sys.path
from made_sets import generate, job, shutdown, splits, train_teachers
from topk_kl import digit_pairs

from core.config import ModelConfig, SourceConfig
from core.sets import index as sx

TEACHER = ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4})
MIX_SAMPLES, MIX_PIXEL_SAMPLES = 100_000, 10_240
# case → (source, sampler, targets, pixel subset (sampler, samples), goal B/view)
CASES: dict[str, tuple[str, dict, dict, tuple[dict, int | None], float]] = {
    "dense10_views": ("digits", {"kind": "views", "views": 70}, {}, ({"kind": "views", "views": 7}, None), 40),
    "topk100_views": ("pairs", {"kind": "views", "views": 5}, {"kind": "topk", "k": 10},
                      ({"kind": "views", "views": 1}, None), 64),
    "mix_topk100": ("pairs", {"kind": "mix"}, {"kind": "topk", "k": 10}, ({"kind": "mix"}, MIX_PIXEL_SAMPLES), 80),
    "mix_sampled100": ("pairs", {"kind": "mix"}, {"kind": "sampled", "k": 10},
                       ({"kind": "mix"}, MIX_PIXEL_SAMPLES), 80),
}


# case → today's record-only figure, the goal of the same set packed (store: packed, top-10 on an
# 8-bit grid) with every file counted (issue 26); the sampled set has no packed form
PACKED_GOALS = {"dense10_views": 32.31, "topk100_views": 46.44, "mix_topk100": 57.50}
PACKED_TARGETS = {"kind": "topk", "k": 10, "bits": 8}


def set_config(sampler: dict, targets: dict, store: str, samples: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"sampler": sampler, "store": store, **({"targets": targets} if targets else {})}
    if samples is not None:
        cfg["samples"] = samples
    return cfg


def file_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sizes(set_dir: Path) -> dict[str, Any]:
    """What a set holds on disk, per stored view: shard files (their bytes and the blocks the file
    system allocates for them), index.json, manifest.parquet."""
    index = json.loads((set_dir / sx.INDEX_NAME).read_text())
    views = int(index["totals"]["samples"])
    shards = [set_dir / "shards" / entry["name"] for entry in index["shards"]]
    stats = [path.stat() for path in shards]
    shard_bytes = sum(s.st_size for s in stats)
    found = {
        "views": views, "shards": len(shards), "shard_bytes": shard_bytes,
        "shard_B": shard_bytes / views, "allocated_B": sum(s.st_blocks * 512 for s in stats) / views,
        "index_B": (set_dir / sx.INDEX_NAME).stat().st_size / views,
        "manifest_B": file_bytes(set_dir / sx.MANIFEST_NAME) / views,  # a packed set writes none
    }
    found["total_B"] = found["shard_B"] + found["index_B"] + found["manifest_B"]
    found["all_files_B"] = sum(p.stat().st_size for p in set_dir.rglob("*") if p.is_file()) / views
    replay = index.get("replay")
    if replay is not None:
        record = int(replay["record_bytes"])
        dtype = np.load(shards[0], mmap_mode="r").dtype  # numpy alone reads a replay shard
        found.update(record_B=record, header_B=(shard_bytes - views * record) / views,
                     columns={name: dtype[name].itemsize for name in dtype.names or ()})
    return found


def columns_text(columns: dict[str, int]) -> str:
    return " + ".join(f"{name} {size}" for name, size in columns.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "storage")
    parser.add_argument("--teacher-steps", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the sets (default: delete each once measured)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = digit_pairs(args.out / "data", 20000, 2000)
    sources = {"digits": {"kind": "digits"}, "pairs": {"kind": "npz", "path": str(pairs), "pad": 1, "flip": False}}
    teachers = {name: train_teachers(args.out / f"teachers-{name}", *splits(SourceConfig.model_validate(source)),
                                     TEACHER, members=2, steps=args.teacher_steps)
                for name, source in sources.items()}
    measured: dict[str, dict[str, Any]] = {}
    for case, (source, sampler, targets, (pixel_sampler, pixel_samples), _) in CASES.items():
        samples = MIX_SAMPLES if sampler["kind"] == "mix" else None
        sets = {"replay": set_config(sampler, targets, "replay", samples),
                "pixels": set_config(pixel_sampler, targets, "pixels", pixel_samples)}
        if case in PACKED_GOALS:
            sets["packed"] = set_config(sampler, PACKED_TARGETS, "packed", samples)
        cfg = job(sources[source], sets)
        for store in sets:
            out = args.out / "sets" / f"{case}-{store}"
            began = time.perf_counter()
            made = generate(cfg, store, out, teachers[source])
            measured[f"{case}/{store}"] = {**sizes(out), "seconds": round(time.perf_counter() - began, 1),
                                           "samples_per_s": made["samples_per_s"]}
            print(f"{case} {store}: {measured[f'{case}/{store}']['views']} views in "
                  f"{measured[f'{case}/{store}']['seconds']} s", flush=True)
            if not args.keep:
                shutil.rmtree(out)
    shutdown()
    report(measured)


def report(measured: dict[str, dict[str, Any]]) -> None:
    print("\nbytes per stored view (file bytes; 'allocated' = 4 KiB file-system blocks; 1024 views per shard)")
    print(f"{'case':16} {'views':>7} {'record':>6} {'shards':>7} {'alloc':>6} {'index':>6} {'manif.':>6} "
          f"{'total':>6} | {'pixel views':>11} {'shards':>7} {'total':>7} {'ratio':>6} | goal")
    figures: dict[str, Any] = {}
    for case, (*_, goal) in CASES.items():
        r, p = measured[f"{case}/replay"], measured[f"{case}/pixels"]
        met = r["shard_B"] <= goal
        print(f"{case:16} {r['views']:>7} {r['record_B']:>6} {r['shard_B']:>7.2f} {r['allocated_B']:>6.1f} "
              f"{r['index_B']:>6.2f} {r['manifest_B']:>6.1f} {r['total_B']:>6.1f} | {p['views']:>11} "
              f"{p['shard_B']:>7.0f} {p['total_B']:>7.0f} {p['shard_B'] / r['shard_B']:>5.0f}× | "
              f"≤ {goal} {'met' if met else 'MISSED'}")
        figures.update({f"{case}_B": round(r["shard_B"], 2), f"{case}_total_B": round(r["total_B"], 2),
                        f"{case}_allocated_B": round(r["allocated_B"], 2),
                        f"{case}_manifest_B": round(r["manifest_B"], 2), f"{case}_index_B": round(r["index_B"], 3),
                        f"{case}_record_B": r["record_B"], f"{case}_views": r["views"],
                        f"{case}_pixels_B": round(p["shard_B"], 1), f"{case}_pixels_total_B": round(p["total_B"], 1),
                        f"{case}_pixel_views": p["views"], f"{case}_goal_B": goal, f"{case}_met": met})
    print("\npacked (top-10, 8-bit values; no manifest.parquet): bytes per view, every file of the set counted")
    for case, goal in PACKED_GOALS.items():
        q = measured[f"{case}/packed"]
        met = q["all_files_B"] <= goal
        print(f"{case:16} {q['views']:>7} record {q['record_B']:>3} shards {q['shard_B']:>6.2f} all files "
              f"{q['all_files_B']:>6.2f} | ≤ {goal} (the replay record alone today) {'met' if met else 'MISSED'}")
        figures.update({f"{case}_packed_B": round(q["all_files_B"], 2), f"{case}_packed_record_B": q["record_B"],
                        f"{case}_packed_goal_B": goal, f"{case}_packed_met": met})
    print("\nrecord columns (bytes):")
    for case in CASES:
        r = measured[f"{case}/replay"]
        print(f"  {case}: {columns_text(r['columns'])} = {r['record_B']} (+ {r['header_B']:.2f} of .npy header)")
    print("\ngeneration (embedded Ray, 2 CPUs, one 0.5-CPU teacher actor):")
    for key, m in measured.items():
        print(f"  {key}: {m['views']} views, {m['seconds']} s ({m['samples_per_s']} samples/s in the actors)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
