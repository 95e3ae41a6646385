"""How many stored views a KD student needs: the saturation study of issue 15 (rerun for issue 23)
on cifar10-mini, every student read by the trainer's own stream with its defaults.

    python bench/views.py [--config examples/cifar10.yaml] [--out runs/cifar10] [--views 2,16,128]
                          [--xcl 16] [--steps 780] [--seeds 0,1,2] [--seeds-of kd_2=0 ...]
                          [--members 2] [--width 8] [--no-online] [--set key=value ...]

The example's source, its first ``--members`` teachers (default 2 of its 4: labelling ~160 000
samples through 4 does not fit two shared cores), its recipe and KD (τ = 4, α = 0.9) for a
ResNet-8 of ``--width`` (default 8, a quarter of a member's parameters, for the same reason);
every set is a replay set (``store: replay``, tens of bytes per stored sample), so 128 views of
1 000 images cost megabytes, not the ~830 MB of pixels. The students:

* ``kd_K`` for each K of ``--views``: KD from ``views_K`` (``sampler: {kind: views, views: K}``:
  every training image and K − 1 augmented views of it, K × images samples);
* ``xcl_K`` for each K of ``--xcl``: XCL-Mix at the **same number of stored samples**, as the
  example's ``xcl_mix`` student reads them: ``views_{K/2}`` (K/2 views per image) and
  ``mix_{K/2}`` (K/2 × images XCL-Mix samples of augmented pairs), half of each batch from each;
* ``kd_online`` (``objective: kd_online``: the teachers label fresh augmentations every step,
  never the same view twice) as the ceiling.

Every student trains for ``--steps`` steps of the example's batch with the example's recipe and
the trainer's default reader (student/stream: each set read in epochs without replacement,
shards shuffled in windows of several shards, fixed per-batch quotas when sets are mixed). Views
sets are format 2 (view-major: a shard holds different images, docs/FORMAT.md). What the reader
gave each run is read from its ``result.json`` (``seen``: per set the distinct samples and
distinct source images read and the distinct images per batch; ``images_per_batch`` of whole
batches), averaged over the seeds. The format-1 study with its 128 000-sample shuffle buffer
(docs/RESULTS.md, 2026-12-02) is what this one replaces.

Everything runs through the project's chain into ``--out``: teachers, sets and students already
made there are reused (after ``transferset run examples/cifar10.yaml`` into the same directory, or
with its ``teachers/member-*`` copied there, no teacher trains). Prints a table (accuracy,
agreement and KL to the ensemble on the test split, bytes per stored sample on disk, what the
reader gave); the last line is one JSON object of the figures.
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

import yaml
from common import ROOT  # noqa: E402  (also puts the repo on sys.path)

from core.config import apply_override, parse_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "cifar10.yaml"
ONLINE = "kd_online"
PER_SHARD = 4000  # samples per shard of every study set
READER_KEYS = ("distinct_samples", "distinct_images", "images_per_batch")


def views_set(k: int) -> dict[str, Any]:
    return {"sampler": {"kind": "views", "views": k}, "store": "replay", "samples_per_shard": PER_SHARD}


def mix_set(samples: int) -> dict[str, Any]:
    return {"sampler": {"kind": "mix", "augment": True}, "samples": samples, "store": "replay",
            "samples_per_shard": PER_SHARD}


def study_config(raw: dict[str, Any], views: list[int], xcl: list[int], images: int, steps: int, seeds: list[int],
                 width: int, online: bool, seeds_of: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The example with the study's replay sets and students in place of its own; the students
    keep the example's reader (no train option of the stream is set); ``seeds_of`` gives some
    students other seeds than ``seeds``."""
    kd = copy.deepcopy(raw["students"]["kd"])
    kd["model"] = {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": width}}
    train = {**kd["train"], "steps": steps}
    sets: dict[str, Any] = {f"views_{k}": views_set(k) for k in {*views, *(k // 2 for k in xcl)}}
    sets |= {f"mix_{k // 2}": mix_set(k // 2 * images) for k in xcl}

    def student(sets_weights: dict[str, float], **changes: Any) -> dict[str, Any]:
        return copy.deepcopy({**kd, "sets": sets_weights, "train": train, "seeds": seeds, **changes})

    students: dict[str, Any] = {ONLINE: student({}, objective="kd_online")} if online else {}
    for k in views:
        students[f"kd_{k}"] = student({f"views_{k}": 1.0})
    for k in xcl:
        students[f"xcl_{k}"] = student({f"views_{k // 2}": 0.5, f"mix_{k // 2}": 0.5})
    for name, own in (seeds_of or {}).items():
        if name not in students:
            raise SystemExit(f"--seeds-of {name}: not a student of the study ({', '.join(students)})")
        students[name]["seeds"] = own
    return {**{key: raw[key] for key in ("seed", "source", "teachers", "teacher_stage", "student_stage")},
            "name": "views_study", "sets": dict(sorted(sets.items(), key=lambda s: (set_samples(s[1], images), s[0]))),
            "students": students, "report": {}}


def set_samples(set_cfg: dict[str, Any], images: int) -> int:
    return set_cfg.get("samples") or set_cfg["sampler"]["views"] * images


def stored_per_image(student: dict[str, Any], sets: dict[str, Any], images: int) -> int | None:
    """Stored samples per training image behind a student (None: online)."""
    return sum(set_samples(sets[name], images) for name in student.get("sets", {})) // images or None


def bytes_per_sample(set_dir: Path, samples: int) -> float:
    """Every file of the set on disk (shards, index, manifest) ÷ its samples."""
    return sum(p.stat().st_size for p in set_dir.rglob("*") if p.is_file()) / samples


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def reader_figures(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What the reader gave a student's runs, from their result.json, mean over the seeds: per
    set (``seen`` rows) how often each sample was seen and the distinct samples, distinct source
    images and distinct images per batch it read; ``images_per_batch`` of whole batches."""
    per_set: dict[str, dict[str, list[float]]] = {}
    for result in results.values():
        for row in result.get("seen", []):
            figures = per_set.setdefault(row["set"], {key: [] for key in ("seen", *READER_KEYS)})
            for key in figures:
                if key in row:
                    figures[key].append(float(row[key]))
    whole = [float(r["images_per_batch"]) for r in results.values() if "images_per_batch" in r]
    return {"sets": {name: {key: mean(values) for key, values in figures.items()} for name, figures in per_set.items()},
            "images_per_batch": mean(whole)}


def train_loss(metrics: Path, steps: int, tail: float = 0.1) -> float | None:
    """Mean logged train loss over the last ``tail`` of the run's steps (metrics.jsonl train rows)."""
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train" and r["step"] > (1 - tail) * steps and "loss" in r]
    return mean(losses) if losses else None


def summary(row: dict[str, Any]) -> dict[str, Any]:
    by_seed = [float(a) for a in row["accuracy_by_seed"]]
    return {"accuracy": statistics.mean(by_seed), "std": statistics.stdev(by_seed) if len(by_seed) > 1 else None,
            "by_seed": by_seed, "seeds": row["seeds"], "agreement": row.get("agreement"), "kl": row.get("kl")}


def accuracy_text(s: dict[str, Any]) -> str:
    spread = f" ± {s['std']:.4f} ({len(s['by_seed'])} seeds)" if s["std"] is not None else " (1 seed)"
    return f"{s['accuracy']:.4f}{spread}"


def reader_text(reader: dict[str, Any]) -> str:
    """Per set: views seen, distinct samples / images read, distinct images per batch."""
    parts = []
    for name, f in reader["sets"].items():
        parts.append(f"{name} {f['seen']:.2f}× {f.get('distinct_samples', float('nan')):.0f}/"
                     f"{f.get('distinct_images', float('nan')):.0f} {f.get('images_per_batch', float('nan')):.1f}")
    return "; ".join(parts) or "-"


def table(figures: dict[str, Any]) -> str:
    lines = [f"teacher ensemble ({figures['members']} members): {figures['teacher_accuracy']:.4f}; "
             f"{figures['steps']} steps of batch {figures['batch_size']}, the trainer's default reader",
             f"{'student':<10}{'stored/img':>10}  {'accuracy':<28}{'agree':>6}{'KL':>6}{'B/sample':>9}"
             f"{'img/batch':>10}  per set: seen, samples/images read, img/batch"]
    for name, row in figures["students"].items():
        stored = "-" if row["stored"] is None else str(row["stored"])
        size = "-" if row["bytes"] is None else f"{row['bytes']:.1f}"
        agree = "-" if row["agreement"] is None else f"{row['agreement']:.3f}"
        kl = "-" if row["kl"] is None else f"{row['kl']:.2f}"
        lines.append(f"{name:<10}{stored:>10}  {accuracy_text(row):<28}{agree:>6}{kl:>6}{size:>9}"
                     f"{row['reader']['images_per_batch']:>10.1f}  {reader_text(row['reader'])}")
    lines.append("B/sample: every file of the student's sets on disk ÷ their samples (mean over its sets); img/batch: "
                 "distinct source images in a batch; per set: each sample seen ×, distinct samples / distinct "
                 "images read in the run, distinct images among the set's rows of a batch (result.json, mean over "
                 "seeds)")
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
    parser.add_argument("--views", default="2,16,128", help="KD points: stored views per image")
    parser.add_argument("--xcl", default="16", help="XCL-Mix points: stored samples per image, each even ('' for none)")
    parser.add_argument("--steps", type=int, default=780, help="steps of every student (default the example's 1×)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds")
    parser.add_argument("--seeds-of", action="append", default=[], metavar="NAME=SEEDS",
                        help="other seeds for one student, e.g. xcl_16=0 (repeatable)")
    parser.add_argument("--members", type=int, default=2, help="teacher members: the example's first ones (default 2)")
    parser.add_argument("--width", type=int, default=8, help="the student's ResNet-8 width (default 8; members: 16)")
    parser.add_argument("--no-online", dest="online", action="store_false", help="skip the kd_online ceiling")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override the example")
    args = parser.parse_args()
    views = parse_ints(args.views, "--views", 1)
    xcl = parse_ints(args.xcl, "--xcl", 2) if args.xcl else []
    if any(k % 2 for k in xcl):
        raise SystemExit(f"--xcl: {args.xcl!r}; each K must be even (XCL-Mix stores K/2 views and K/2 mixes)")
    seeds = parse_ints(args.seeds, "--seeds", 0)
    seeds_of = {name: parse_ints(value, f"--seeds-of {name}", 0)
                for name, _, value in (item.partition("=") for item in args.seeds_of)}
    raw = json.loads(json.dumps(yaml.safe_load(args.config.read_text())))
    for assignment in args.overrides:
        apply_override(raw, assignment)
    raw["teachers"]["members"] = args.members

    from core.sources import load_source
    from pipeline.chain import generate_sets, train_students
    from pipeline.cli import progress
    from pipeline.generate.driver import shutdown_ray
    from pipeline.report import build_report
    from pipeline.train.job import open_job
    from pipeline.train.runs import set_dir, student_dir
    from pipeline.train.teachers import make_teachers

    images = len(load_source(parse_config(raw, origin=str(args.config)).source, "train"))
    study = study_config(raw, views, xcl, images, args.steps, seeds, args.width, args.online, seeds_of)
    cfg = parse_config(study, origin=f"{args.config} (bench/views.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "views_study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))  # what ran
    phases: dict[str, float] = {}
    started = time.perf_counter()
    try:
        job = open_job(cfg, args.out, progress)
        teachers = make_teachers(job)
        phases["teachers"] = time.perf_counter() - started
        generate_sets(cfg, args.out, teachers, progress)
        phases["sets"] = time.perf_counter() - started - sum(phases.values())
        students = train_students(job, list(cfg.students))
        phases["students"] = time.perf_counter() - started - sum(phases.values())
        report = build_report(cfg, teachers, students, job.test, args.out, job.train)
    finally:
        shutdown_ray()
    phases["total"] = time.perf_counter() - started
    (args.out / "views_study.json").write_text(json.dumps(report, indent=1))
    size = {name: bytes_per_sample(Path(set_dir(args.out, name)), set_samples(s, images))
            for name, s in study["sets"].items()}
    figures: dict[str, Any] = {
        "images": images, "steps": args.steps, "batch_size": cfg.students[next(iter(cfg.students))].train.batch_size,
        "seeds": seeds, "members": cfg.teachers.members, "width": args.width,
        "teacher_accuracy": report["teacher"]["accuracy"], "students": {},
        "seconds": {k: round(v, 1) for k, v in phases.items()}}
    for name, student in study["students"].items():
        own = list(student.get("sets", {}))
        figures["students"][name] = {
            **summary(report["students"][name]), "stored": stored_per_image(student, study["sets"], images),
            "bytes": mean([size[s] for s in own]) if own else None, "reader": reader_figures(students[name]),
            "train_loss_last_10pct": [train_loss(student_dir(args.out, name, s) / "metrics.jsonl", args.steps)
                                      for s in sorted(students[name])]}
    print(table(figures))
    print(f"study: {args.out / 'views_study.json'}; phases {figures['seconds']} s", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
