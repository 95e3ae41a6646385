"""Why KD trailed ERM on real images: the study behind docs/RESULTS.md, one factor at a time.

    python bench/kd_study.py [--config examples/cifar10.yaml] [--out runs/cifar10] [--groups views,budget,alpha,lr,mix]
                             [--budgets 2x,1x] [--base] [--set key=value ...]

Takes examples/cifar10.yaml — its source, teachers, sets and student recipe — and adds students that
each change one thing of its ``erm``, ``kd`` or ``xcl_mix`` student (member architecture, 2× budget,
every seed of the example):

* ``methods``: ERM + label smoothing (ε = 0.1), TLCutMix + pick (real 0.5 + cutmix 0.5, the 128
  hardest of 256 by KL) and GAN-free XCL-Gen (real 0.5 + PCA-generated class mixes 0.5), at 1× and 2×;
* ``small``: ERM, KD and XCL-Mix for a student of a quarter of the members' parameters, at 1× and 2×;
* ``views``: the same recipe with the teachers in the loop on fresh augmentations
  (``kd_online``; ``online_mix: 0.5`` for XCL-Mix), at 1× and 2×: separates the stored views
  and mixes from the loss;
* ``budget``: ERM, KD and XCL-Mix at 4× the steps (longer than the teachers were trained);
* ``alpha``: KD with α = 1 (pure distillation);
* ``lr``: KD at half and at twice the learning rate;
* ``mix``: XCL-Mix with 25 % and 75 % mixes instead of 50 %.

Everything runs through the project's chain into ``--out`` (default the example's run directory):
teachers, sets and students already made there are reused, so after ``transferset run
examples/cifar10.yaml`` only the study's own students train. ``--set`` overrides the example (e.g.
``--set teachers.train.steps=1560 --out runs/cifar10-short-teachers`` for teachers trained only as
long as the 2× students). Prints the report table; the last line is one JSON object with each
student's accuracy mean, std and seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT  # noqa: E402  (also puts the repo on sys.path)

from core.config import apply_override, parse_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "cifar10.yaml"
GROUPS = ("methods", "small", "views", "budget", "alpha", "lr", "mix")


def variant(students: dict[str, Any], base: str, steps_factor: float = 1.0, **changes: Any) -> dict[str, Any]:
    """A copy of student ``base`` with ``changes`` (dotted keys into its section) and its steps
    scaled by ``steps_factor``."""
    student = copy.deepcopy(students[base])
    student["train"]["steps"] = int(round(student["train"]["steps"] * steps_factor))
    for dotted, value in changes.items():
        node = student
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return student


def study_students(
    raw: dict[str, Any], groups: list[str], budgets: tuple[str, ...] = ("2x", "1x")
) -> dict[str, dict[str, Any]]:
    """The study's students, built from the example's 2× ``erm``, ``kd`` and ``xcl_mix``;
    ``budgets`` picks the 2× and/or 1× variants of the groups that have both."""
    students = raw["students"]
    online = {"objective": "kd_online", "sets": {}}
    small = {"arch": "resnet_cifar", "arch_kwargs": {"depth": 8, "width": 8}}
    pick = {"ratio": 2.0, "criterion": "kl"}
    chosen: dict[str, dict[str, Any]] = {}
    for suffix, factor in [(s, f) for b, s, f in (("2x", "", 1.0), ("1x", "_1x", 0.5)) if b in budgets]:
        if "methods" in groups:
            chosen[f"erm_ls{suffix}"] = variant(students, "erm", factor, train__label_smoothing=0.1)
            chosen[f"tlcutmix_pick{suffix}"] = variant(
                students, "xcl_mix", factor, sets={"real": 0.5, "cutmix": 0.5}, kd__pick=pick
            )
            chosen[f"xcl_gen{suffix}"] = variant(students, "xcl_mix", factor, sets={"real": 0.5, "gen": 0.5})
        if "small" in groups:
            for name in ("erm", "kd", "xcl_mix"):
                chosen[f"small_{name}{suffix}"] = variant(students, name, factor, model=small)
        if "views" in groups:
            chosen[f"kd_online{suffix}"] = variant(students, "kd", factor, **online)
            chosen[f"xcl_online{suffix}"] = variant(students, "xcl_mix", factor, **online, kd__online_mix=0.5)
    if "budget" in groups:
        chosen["erm_4x"] = variant(students, "erm", 2.0)
        chosen["kd_4x"] = variant(students, "kd", 2.0)
        chosen["xcl_mix_4x"] = variant(students, "xcl_mix", 2.0)
    if "alpha" in groups:
        chosen["kd_alpha1"] = variant(students, "kd", kd__alpha=1.0)
    if "lr" in groups:
        lr = float(students["kd"]["train"]["lr"])
        chosen["kd_lr_half"] = variant(students, "kd", train__lr=lr / 2)
        chosen["kd_lr_twice"] = variant(students, "kd", train__lr=lr * 2)
    if "mix" in groups:
        chosen["xcl_mix25"] = variant(students, "xcl_mix", sets={"real": 0.75, "mix": 0.25})
        chosen["xcl_mix75"] = variant(students, "xcl_mix", sets={"real": 0.25, "mix": 0.75})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=EXAMPLE, help="the base config (default the example)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cifar10")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {','.join(GROUPS)}")
    parser.add_argument("--budgets", default="2x,1x", help="the budgets of methods/small/views: 2x, 1x or both")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override the example")
    parser.add_argument("--base", action="store_true", help="also (re)use the example's own students")
    args = parser.parse_args()
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"--groups: unknown {unknown}; choose from {list(GROUPS)}")
    raw = json.loads(json.dumps(yaml.safe_load(args.config.read_text())))
    for assignment in args.overrides:
        apply_override(raw, assignment)
    budgets = tuple(b for b in args.budgets.split(",") if b)
    if not budgets or set(budgets) - {"1x", "2x"}:
        raise SystemExit(f"--budgets: {args.budgets!r}; give 2x, 1x or 2x,1x")
    study = study_students(raw, groups, budgets)
    base = {name: raw["students"][name] for name in ("erm", "kd", "xcl_mix")} if args.base else {}
    raw["students"] = {**base, **study}
    raw["report"] = {"baseline": "kd", "compare": [n for n in raw["students"] if n != "kd"]} if args.base else {}
    cfg = parse_config(raw, origin=str(args.config))

    from pipeline.chain import generate_sets, train_students
    from pipeline.cli import progress
    from pipeline.generate.driver import shutdown_ray
    from pipeline.report import build_report, format_table
    from pipeline.train.job import open_job
    from pipeline.train.teachers import make_teachers

    started = time.perf_counter()
    try:
        job = open_job(cfg, args.out, progress)
        teachers = make_teachers(job)
        generate_sets(cfg, args.out, teachers, progress)
        students = train_students(job, list(cfg.students))
        report = build_report(cfg, teachers, students, job.test, args.out, job.train)
    finally:
        shutdown_ray()
    (args.out / "study.json").write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"study: {args.out / 'study.json'} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print(
        json.dumps(
            {
                name: {"accuracy": row["accuracy"], "std": row["accuracy_std"], "seeds": row["seeds"]}
                for name, row in report["students"].items()
            }
        )
    )


if __name__ == "__main__":
    main()
