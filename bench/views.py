"""How many stored views a KD student needs: the saturation study of issue 15 on cifar10-mini.

    python bench/views.py [--config examples/cifar10.yaml] [--out runs/cifar10] [--views 2,8,32,128]
                          [--steps 780] [--seeds 0] [--seeds-of kd_2=0,1,2 ...] [--members 2] [--width 8]
                          [--no-online] [--default-buffer] [--set key=value ...]

The example's source, its first ``--members`` teachers (default 2 of its 4: labelling 340 000
samples through 4 does not fit two shared cores in the study's ~45 min), its recipe and KD
(τ = 4, α = 0.9) for a ResNet-8 of ``--width`` (default 8, a quarter of a member's parameters, for
the same reason); every set is a replay set (``store: replay``, tens of bytes per stored sample),
so 128 views of 1 000 images cost megabytes, not the ~830 MB of pixels. For each K of ``--views``:

* ``kd_K``: KD from ``views_K`` (``sampler: {kind: views, views: K}``: every training image and
  K − 1 augmented views of it, K × images samples);
* ``xcl_K``: XCL-Mix at the **same number of stored samples**, as the example's ``xcl_mix`` student
  reads them: ``views_{K/2}`` (K/2 views per image) and ``mix_{K/2}`` (K/2 × images XCL-Mix
  samples of augmented pairs), half of each batch from each. Same steps, so each stored sample is
  seen as often as in ``kd_K``;

and ``kd_online`` (``objective: kd_online``: the teachers label fresh augmentations every step,
never the same view twice) as the ceiling. Every student trains for ``--steps`` steps of the
example's batch with the example's recipe.

One change to the example's reader, the same for every offline student: the shuffle buffer holds
``max(K) × images`` samples and is filled once per run (``epoch_steps`` = steps). The study's
figures (docs/RESULTS.md) were measured on format-1 views sets, enumerated image by image (K
consecutive samples were K views of one image, a 4 000-sample shard held 32 images at K = 128);
the trainer draws whole shards with replacement, so through the default 2 000-sample buffer a
batch of 128 held ~54 distinct images at K = 128 instead of ~115, and a 780-step run read about
half of the 1 000 images, ~88 % through the study's buffer (``img/batch, images read``, measured
by :func:`reader_reach` with the trainer's own reader); what the default reader cost is the
``kd_K_buffer2000`` row (``--default-buffer``). Format 2 writes views sets view-major (each shard
holds different images, docs/FORMAT.md), so a rerun makes other sets and other reader figures.

Everything runs through the project's chain into ``--out``: teachers, sets and students already
made there are reused (the default is the example's run directory, so after ``transferset run
examples/cifar10.yaml`` no teacher trains). Prints a table (accuracy vs stored samples per image,
each set's views-seen figure from result.json ``seen``, bytes per stored sample on disk); the last
line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import ROOT  # noqa: E402  (also puts the repo on sys.path)

from core.config import apply_override, parse_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "cifar10.yaml"
ONLINE = "kd_online"
DEFAULT_BUFFER = 2000  # the trainer's default shuffle buffer (core/train_config.py)


def views_set(k: int, per_shard: int) -> dict[str, Any]:
    return {"sampler": {"kind": "views", "views": k}, "store": "replay", "samples_per_shard": per_shard}


def mix_set(samples: int, per_shard: int) -> dict[str, Any]:
    return {"sampler": {"kind": "mix", "augment": True}, "samples": samples, "store": "replay",
            "samples_per_shard": per_shard}


def study_config(raw: dict[str, Any], views: list[int], images: int, steps: int, seeds: list[int], width: int,
                 online: bool, default_buffer: bool, seeds_of: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The example with the study's replay sets and students in place of its own; ``seeds_of``
    gives some students other seeds than ``seeds``."""
    kd = copy.deepcopy(raw["students"]["kd"])
    kd["model"] = {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": width}}
    buffer = max(views) * images
    train = {**kd["train"], "steps": steps, "shuffle_buffer": buffer, "epoch_steps": steps}
    per_shard = 4000
    sets: dict[str, Any] = {}
    for k in sorted({v for point in views for v in (point, point // 2)}):
        sets[f"views_{k}"] = views_set(k, per_shard)
    for k in sorted(views):
        sets[f"mix_{k // 2}"] = mix_set(k // 2 * images, per_shard)

    def student(sets_weights: dict[str, float], **changes: Any) -> dict[str, Any]:
        return copy.deepcopy({**kd, "sets": sets_weights, "train": train, "seeds": seeds, **changes})

    students: dict[str, Any] = {ONLINE: student({}, objective="kd_online")} if online else {}
    for k in views:
        students[f"kd_{k}"] = student({f"views_{k}": 1.0})
        students[f"xcl_{k}"] = student({f"views_{k // 2}": 0.5, f"mix_{k // 2}": 0.5})
    if default_buffer:
        k = max(views)
        students[f"kd_{k}_buffer2000"] = student({f"views_{k}": 1.0}, train=kd["train"] | {"steps": steps})
    for name, own in (seeds_of or {}).items():
        if name not in students:
            raise SystemExit(f"--seeds-of {name}: not a student of the study ({', '.join(students)})")
        students[name]["seeds"] = own
    return {**{key: raw[key] for key in ("seed", "source", "teachers", "teacher_stage", "student_stage")},
            "name": "views_study", "sets": dict(sorted(sets.items(), key=lambda s: set_samples(s[1], images))),
            "students": students, "report": {}}


def set_samples(set_cfg: dict[str, Any], images: int) -> int:
    return set_cfg.get("samples") or set_cfg["sampler"]["views"] * images


def bytes_per_sample(set_dir: Path, samples: int) -> float:
    """Every file of the set on disk (shards, index, manifest) ÷ its samples."""
    return sum(p.stat().st_size for p in set_dir.rglob("*") if p.is_file()) / samples


def reader_reach(set_dir: str, source: Any, buffer: int, batch: int, steps: int) -> dict[str, float]:
    """What the student's reader gives a run on a views set: mean distinct source images in a batch
    and distinct images read in ``steps`` batches — the trainer's own ``ShardStream`` and
    ``ShuffledMix`` (student/stream.py), fed each shard's stored ``image`` column (numpy only) in
    place of its rebuilt pixels (its own seed, not the run's)."""
    from student.shards import ShardArrays, open_transfer_sets
    from student.stream import ReadLog, ShardStream, ShuffledMix

    (opened,) = open_transfer_sets([(set_dir, 1.0)], source=source)

    class ImageIds:  # the decoded-shard cache's place: a shard's source indices, not its pixels
        def get(self, url: str, expected: int, width: int, replay: Any = None) -> ShardArrays:
            ids = np.load(url)["image"].astype(np.int64)
            return ShardArrays(url, ids, np.zeros((len(ids), 1), np.float32), ids)

    rng = np.random.default_rng(0)
    part = [(i, 0, 1) for i in range(len(opened.urls))]
    stream = ShardStream(opened, part, rng, ImageIds(), "error", ReadLog())  # type: ignore[arg-type]
    mix = ShuffledMix([stream], [1.0], buffer, rng)
    batches = [mix.next(batch)["image"] for _ in range(steps)]
    return {"per_batch": float(np.mean([len(np.unique(b)) for b in batches])),
            "images_read": int(len(np.unique(np.concatenate(batches))))}


def seen_of(row: dict[str, Any]) -> dict[str, float]:
    return {s["set"]: round(float(s["seen"]), 3) for s in row.get("seen", [])}


def summary(row: dict[str, Any]) -> dict[str, Any]:
    by_seed = [float(a) for a in row["accuracy_by_seed"]]
    return {"accuracy": statistics.mean(by_seed), "std": statistics.stdev(by_seed) if len(by_seed) > 1 else None,
            "by_seed": by_seed, "seeds": row["seeds"], "seen": seen_of(row),
            "agreement": row.get("agreement"), "kl": row.get("kl")}


def accuracy_text(s: dict[str, Any]) -> str:
    spread = f" ± {s['std']:.4f} ({len(s['by_seed'])} seeds)" if s["std"] is not None else " (1 seed)"
    return f"{s['accuracy']:.4f}{spread}"


def seen_text(s: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:.2f}×" for name, value in s["seen"].items()) or "-"


def table(figures: dict[str, Any]) -> str:
    lines = [f"teacher ensemble ({figures['members']} members): {figures['teacher_accuracy']:.4f}; "
             f"{figures['steps']} steps of batch {figures['batch_size']}, seeds {figures['seeds']} unless a row says",
             f"{'stored/img':>17}  {'kd':<34}{'kd seen':<18}{'xcl':<34}{'xcl seen':<32}{'B/sample':<13}"
             "img/batch, images read"]
    for k, point in figures["views"].items():
        kd, xcl = point["kd"], point["xcl"]
        diversity = "; ".join(f"{r['per_batch']:.1f}, {r['images_read']}" for r in point["reader"].values())
        lines.append(f"{k:>17}  {accuracy_text(kd):<34}{seen_text(kd):<18}{accuracy_text(xcl):<34}"
                     f"{seen_text(xcl):<32}{point['bytes_kd']:.1f}, {point['bytes_xcl']:.1f}   {diversity}")
    for name, row in figures["extra"].items():
        lines.append(f"{name:>17}  {accuracy_text(row):<34}{seen_text(row)}")
    lines.append(f"B/sample: every file of the set on disk ÷ its samples (kd's set, mean of xcl's two); img/batch, "
                 f"images read: distinct images in a batch of the kd set's reader and over the run's steps, shuffle "
                 f"buffer {figures['buffer']} (the study's); the same with {DEFAULT_BUFFER} (the default)")
    return "\n".join(lines)


def parse_ints(text: str, what: str, least: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise SystemExit(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < least:
        raise SystemExit(f"{what}: {text!r}; give integers of at least {least}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=EXAMPLE, help="the base config (default the example)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cifar10")
    parser.add_argument("--views", default="2,8,32,128", help="stored samples per image, each even")
    parser.add_argument("--steps", type=int, default=780, help="steps of every student (default the example's 1×)")
    parser.add_argument("--seeds", default="0", help="comma-separated student seeds")
    parser.add_argument("--seeds-of", action="append", default=[], metavar="NAME=SEEDS",
                        help="other seeds for one student, e.g. kd_2=0,1,2 (repeatable)")
    parser.add_argument("--members", type=int, default=2, help="teacher members: the example's first ones (default 2)")
    parser.add_argument("--width", type=int, default=8, help="the student's ResNet-8 width (default 8; members: 16)")
    parser.add_argument("--no-online", dest="online", action="store_false", help="skip the kd_online ceiling")
    parser.add_argument("--default-buffer", action="store_true",
                        help="also KD from the largest set with the example's 2 000-sample shuffle buffer")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override the example")
    args = parser.parse_args()
    views = parse_ints(args.views, "--views", 2)
    if any(k % 2 for k in views):
        raise SystemExit(f"--views: {args.views!r}; each K must be even (XCL-Mix stores K/2 views and K/2 mixes)")
    seeds = parse_ints(args.seeds, "--seeds", 0)
    seeds_of = {name: parse_ints(value, f"--seeds-of {name}", 0)
                for name, _, value in (item.partition("=") for item in args.seeds_of)}
    raw = json.loads(json.dumps(yaml.safe_load(args.config.read_text())))
    for assignment in args.overrides:
        apply_override(raw, assignment)
    raw["teachers"]["members"] = args.members

    from core.sources import load_source
    from pipeline.chain import generate_sets, train_students, train_teachers
    from pipeline.cli import progress
    from pipeline.driver import shutdown_ray
    from pipeline.report import build_report
    from pipeline.runs import load_splits, set_dir

    images = len(load_source(parse_config(raw, origin=str(args.config)).source, "train"))
    study = study_config(raw, views, images, args.steps, seeds, args.width, args.online, args.default_buffer,
                         seeds_of)
    cfg = parse_config(study, origin=f"{args.config} (bench/views.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "views_study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))  # what ran
    phases: dict[str, float] = {}
    started = time.perf_counter()
    try:
        train, test = load_splits(cfg)
        teachers = train_teachers(cfg, args.out, train, test, progress)
        phases["teachers"] = time.perf_counter() - started
        generate_sets(cfg, args.out, teachers, progress)
        phases["sets"] = time.perf_counter() - started - sum(phases.values())
        students = train_students(cfg, args.out, list(cfg.students), train, test, progress)
        phases["students"] = time.perf_counter() - started - sum(phases.values())
        report = build_report(cfg, teachers, students, test, args.out, train)
    finally:
        shutdown_ray()
    phases["total"] = time.perf_counter() - started
    (args.out / "views_study.json").write_text(json.dumps(report, indent=1))
    rows = report["students"]
    batch, buffer = cfg.students[f"kd_{views[0]}"].train.batch_size, max(views) * images
    size = {name: bytes_per_sample(Path(set_dir(args.out, name)), set_samples(s.model_dump(), images))
            for name, s in cfg.sets.items()}
    figures: dict[str, Any] = {
        "images": images, "steps": args.steps, "batch_size": batch, "buffer": buffer,
        "seeds": seeds, "members": cfg.teachers.members, "width": args.width,
        "teacher_accuracy": report["teacher"]["accuracy"], "views": {}, "extra": {},
        "seconds": {k: round(v, 1) for k, v in phases.items()}}
    for k in views:
        figures["views"][k] = {
            "kd": summary(rows[f"kd_{k}"]), "xcl": summary(rows[f"xcl_{k}"]), "bytes_kd": size[f"views_{k}"],
            "bytes_xcl": (size[f"views_{k // 2}"] + size[f"mix_{k // 2}"]) / 2,
            "reader": {str(b): reader_reach(set_dir(args.out, f"views_{k}"), train, b, batch, args.steps)
                       for b in (buffer, DEFAULT_BUFFER)}}
    figures["extra"] = {name: summary(row) for name, row in rows.items()
                        if not any(name in (f"kd_{k}", f"xcl_{k}") for k in views)}
    print(table(figures))
    print(f"study: {args.out / 'views_study.json'}; phases {figures['seconds']} s", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
