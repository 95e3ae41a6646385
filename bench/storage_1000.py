"""Bytes per stored view at 1 000 classes, every file of the set counted, and what the packed
targets cost: KL to the teachers' p̄ and the student's accuracy.

One ``transferset run`` (embedded 2-CPU Ray) on three-digit numbers (bench/digit_numbers.py:
1 000 classes, 8×24 images, random-resized-crop views of an image contract):

* two teachers (tiny_cnn) trained by the job, their ensemble's p̄ the targets;
* ``views_*``: every training image × 2 views (view 0 the evaluation image, view 1 a
  random-resized crop; ≥ 100 000 views), and ``mix_*``: XCL-Mix of random pairs, 100 000 samples;
* each stored ``packed`` (top-10, 8-bit values; ``views_packed6``: 6-bit), ``derived`` /
  ``derived6`` (the same, ``params: derived``: no parameter bits) and ``dense`` (a replay
  set of float16 log p̄ over all 1 000 classes: the reference), and the mixes as ``topk16``
  (today's float16 top-10 replay records: the students' control);
* KD students on the mixes alone (dense, float16 top-10, packed), at τ = 1 and τ = 4, three seeds.

Reported per set: bytes per view of every file of the set directory (shards, ``index.json``,
``manifest.parquet`` where there is one, ``_fingerprint``) and of the record alone. KL(p̄ ‖ stored)
is measured on the dense sets' own views — their float16 log p̄ re-encoded as float16 top-10
(today's ``targets: {kind: topk}``) and as the packed 8- and 6-bit grids — so every quantiser is
compared on exactly the same distributions; the packed sets' ``target_kl`` (written from float32
p̄) is reported beside it. A view set's views are identical across stores; a packed mix set draws λ
on the 1/255 grid, so its mixes are the dense set's up to ≤ 1/510 in λ.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/storage_1000.py [--out DIR] [--seeds 0 1 2]   # ~35 min

A rerun in the same ``--out`` reuses the teachers, sets and students the job already made.

The last line is JSON: per set its bytes per view and record bytes, the KL means and 99th
percentiles and the students' accuracies (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import ROOT  # also puts the repo on sys.path
from digit_numbers import digit_numbers
from topk_kl import cli

from core.config import SourceConfig, TargetConfig
from core.records.packed_target import PackedTopk
from core.records.targets import stored_target
from core.sets import index as sx
from core.sets.formats import format_of

K = 10
CASES = {"views": {"kind": "views", "views": 2}, "mix": {"kind": "mix"}}
MIX_SAMPLES = 100_000
DERIVED = {"kind": "packed", "params": "derived"}
STORES = {  # set suffix → store and targets
    "packed": ("packed", {"kind": "topk", "k": K, "bits": 8}),
    "packed6": ("packed", {"kind": "topk", "k": K, "bits": 6}),
    "derived": (DERIVED, {"kind": "topk", "k": K, "bits": 8}),  # parameters re-derived from (seed, shard, index)
    "derived6": (DERIVED, {"kind": "topk", "k": K, "bits": 6}),
    "dense": ("replay", {}),
    "topk16": ("replay", {"kind": "topk", "k": K}),  # today's float16 top-10: the students' control
}
# The students (KD, α = 1, on the mixes alone): dense, float16 top-10 and packed targets at τ = 1,
# and at the default τ = 4, where a top-10 record's tail, spread evenly over 990 classes and
# raised to 1/τ, outweighs its ten classes (the tempered target is nearly uniform).
STUDENT_SETS = {"dense": (1.0, 4.0), "topk16": (1.0, 4.0), "packed": (1.0, 4.0)}
GOALS = {"views_packed": 32, "views_packed6": 32, "mix_packed": 40,  # B/view with stored parameters
         "views_derived": 24, "views_derived6": 24, "mix_derived": 24, "mix_derived6": 24}  # derived
TEACHER = {"arch": "tiny_cnn", "arch_kwargs": {"width": 32, "hidden": 512}}
STUDENT = {"arch": "tiny_cnn", "arch_kwargs": {"width": 16, "hidden": 256}}


def set_names() -> list[str]:
    """Every case in every store but the two controls: 6-bit mixes and float16 top-10 views."""
    skipped = {"mix_packed6", "views_topk16"}
    return [name for case in CASES for store in STORES if (name := f"{case}_{store}") not in skipped]


def student_names() -> dict[str, tuple[str, float]]:
    """Student name → (its set, τ); the τ = 4 students keep the plain name."""
    return {f"kd_mix_{store}" + ("" if tau == 4.0 else f"_t{tau:g}"): (f"mix_{store}", tau)
            for store, taus in STUDENT_SETS.items() for tau in taus}


def config(data: Path, seeds: list[int], teacher_steps: int, student_steps: int) -> dict[str, Any]:
    # the crops keep a number's 3:1 aspect and are never flipped (a mirrored number is another class)
    source = {"kind": "npz", "path": str(data), "flip": False,
              "image": {"size": [8, 24], "views": "random_resized_crop", "scale": [0.7, 1.0], "ratio": [2.25, 4.0]}}
    sets = {}
    for name in set_names():
        case, store = name.split("_")
        kind, targets = STORES[store]
        sets[name] = {"sampler": CASES[case], "store": kind, "samples_per_shard": 1024,
                      **({"targets": targets} if targets else {}),
                      **({"samples": MIX_SAMPLES} if case == "mix" else {})}
    students = {name: {"model": STUDENT, "objective": "kd", "sets": {set_name: 1.0}, "seeds": seeds,
                       "kd": {"temperature": tau, "alpha": 1.0},
                       "train": {"steps": student_steps, "batch_size": 256, "num_workers": 0}}
                for name, (set_name, tau) in student_names().items()}
    return {"name": "storage1000", "seed": 0, "source": source,
            "teachers": {"model": TEACHER, "members": 2,
                         "train": {"steps": teacher_steps, "batch_size": 128, "lr": 0.05, "num_workers": 0}},
            "teacher_stage": {"batch_size": 1024, "actors": 1, "num_cpus": 0.5, "threads": 1},
            "student_stage": {"parallel": "off"}, "sets": sets, "students": students}


def set_bytes(set_dir: Path) -> dict[str, Any]:
    """Bytes per view of every file under the set directory, and of its record."""
    index = json.loads((set_dir / sx.INDEX_NAME).read_text())
    views = int(index["totals"]["samples"])
    files = {str(p.relative_to(set_dir)): p.stat().st_size for p in set_dir.rglob("*") if p.is_file()}
    shards = sum(size for name, size in files.items() if name.startswith(sx.SHARDS_DIR))
    return {"views": views, "total_B": sum(files.values()) / views, "shards_B": shards / views,
            "other_files_B": {name: size / views for name, size in files.items()
                              if not name.startswith(sx.SHARDS_DIR)},
            "record_B": int(index["replay"]["record_bytes"])}


def dense_logp(set_dir: Path, source_cfg: dict) -> np.ndarray:
    """Every record's float16 log p̄ of a dense replay set, as float64 rows."""
    from core.sources import load_source

    index = sx.read_index(set_dir)
    reader = format_of(index).opened(str(set_dir), index, load_source(SourceConfig.model_validate(source_cfg), "train"))
    rows = [reader.read_records(url)["logp"] for url in sx.shard_urls(set_dir, index)]
    return np.concatenate(rows).astype(np.float64)


def kl_rows(logp: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    p = np.exp(logp)
    return np.maximum((p * (logp - estimate)).sum(axis=1), 0.0)


def quantisers_kl(logp: np.ndarray) -> dict[str, np.ndarray]:
    """KL(p̄ ‖ stored) of each row for float16 top-10 (today's) and the packed 8- and 6-bit grids."""
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))  # float16 rows renormalised
    topk = stored_target(TargetConfig(kind="topk", k=K))
    out = {"float16_top10": np.array([topk.loss(row.astype(np.float32), topk.encode(row.astype(np.float32),
                                                                                    TargetConfig(kind="topk", k=K),
                                                                                    (0, 0, 0))) for row in logp])}
    for bits in (8, 6):
        codec = PackedTopk(logp.shape[1], K, bits)
        out[f"packed{bits}_top10"] = kl_rows(logp, codec.decode(codec.encode(logp)).astype(np.float64))
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "storage1000")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=50_000, help="training images (50 a class)")
    parser.add_argument("--teacher-steps", type=int, default=4000)
    parser.add_argument("--student-steps", type=int, default=1500)
    args = parser.parse_args()
    data = digit_numbers(args.out / "data", 3, args.train, 5000)
    cfg = config(data, args.seeds, args.teacher_steps, args.student_steps)
    path = args.out / "storage1000.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    run = args.out / "run"
    cli("run", str(path), "--out", str(run))
    report(run, cfg, args.seeds)


def report(run: Path, cfg: dict[str, Any], seeds: list[int]) -> None:
    teachers = [json.loads((run / "teachers" / f"member-{m}" / "result.json").read_text())["accuracy"]
                for m in range(cfg["teachers"]["members"])]
    sizes = {name: set_bytes(run / "sets" / name) for name in set_names()}
    kls = {case: quantisers_kl(dense_logp(run / "sets" / f"{case}_dense", cfg["source"])) for case in CASES}
    written = {name: _target_kl(run / "sets" / name, cfg) for name in set_names() if "dense" not in name
               and "topk16" not in name}
    students = {name: summary([json.loads((run / "students" / name / f"seed-{s}" / "result.json")
                                          .read_text())["accuracy"] for s in seeds])
                for name in student_names()}
    figures: dict[str, Any] = {"classes": 1000, "k": K, "teacher_accuracy": teachers, "seeds": seeds}
    print(f"teachers' test accuracy on 1 000 classes: {', '.join(f'{a:.3f}' for a in teachers)}")
    print(f"\n{'set':15} {'views':>7} {'record':>6} {'shards':>7} {'all files':>9} | goal")
    for name, found in sizes.items():
        goal = GOALS.get(name)
        met = "" if goal is None else f"≤ {goal} {'met' if found['total_B'] <= goal else 'MISSED'}"
        print(f"{name:15} {found['views']:>7} {found['record_B']:>6} {found['shards_B']:>7.2f} "
              f"{found['total_B']:>9.2f} | {met}")
        figures[f"{name}_B"] = round(found["total_B"], 2)
        figures[f"{name}_record_B"] = found["record_B"]
        figures[f"{name}_views"] = found["views"]
    print("\nKL(p̄ ‖ stored), nats, on the dense sets' views (float16 p̄ re-encoded):")
    for case, found in kls.items():
        for quantiser, values in found.items():
            mean, p99 = float(values.mean()), float(np.quantile(values, 0.99))
            print(f"  {case} {quantiser:15} mean {mean:.4g}  p99 {p99:.4g}")
            figures[f"{case}_{quantiser}_kl_mean"], figures[f"{case}_{quantiser}_kl_p99"] = mean, p99
        for bits in (8, 6):
            ratio = float(found[f"packed{bits}_top10"].mean() / found["float16_top10"].mean())
            figures[f"{case}_packed{bits}_kl_ratio"] = ratio
            print(f"  {case}: packed {bits}-bit ÷ float16 top-10 mean KL = {ratio:.3f} (goal ≤ 1.10)")
    for name, values in written.items():
        p99 = np.quantile(values, 0.99)
        print(f"  {name}: target_kl as written (float32 p̄) mean {values.mean():.4g} p99 {p99:.4g}")
        figures[f"{name}_written_kl_mean"] = float(values.mean())
    print("\nKD students (tiny_cnn width 16, α = 1, on the mixes alone), test accuracy over seeds:")
    for name, found in students.items():
        set_name, tau = student_names()[name]
        print(f"  {set_name:12} τ = {tau:g}: {found['mean']:.4f} ± {found['std']:.4f}")
        figures[f"{name}_accuracy"] = found
    print(json.dumps(figures))


def _target_kl(set_dir: Path, cfg: dict[str, Any]) -> np.ndarray:
    """The ``target_kl`` column of a packed set's records (written from float32 p̄)."""
    from core.sources import load_source

    index = sx.read_index(set_dir)
    reader = format_of(index).opened(str(set_dir), index,
                                     load_source(SourceConfig.model_validate(cfg["source"]), "train"))
    return np.concatenate([reader.read_records(url)["target_kl"] for url in sx.shard_urls(set_dir, index)]
                          ).astype(np.float64)


if __name__ == "__main__":
    main()
