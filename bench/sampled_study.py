"""Which stored target a student trained on mixes prefers: the quickstart's teachers and XCL-Mix
set (16 384 digits mixes, augmented), stored three ways — dense float16, top-k and sampled-class
(the same k) — and the quickstart's KD student (tiny_cnn width 6, τ = 4, α = 1, 3000 steps)
trained on each set alone, over three seeds, through ``transferset run``.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/sampled_study.py [--k 3] [--seeds 0 1 2]

With 10 classes, k must stay below 10 for top-k to lose anything (k = 3: 15 B per sample for
top-k, 22 B sampled, 20 B dense). The last line is JSON: per target, the test accuracies by seed,
their mean and std (ddof 1), and the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml
from common import ROOT  # also puts the repo on sys.path
from topk_kl import cli

TARGETS = {"dense": {}, "topk": {"kind": "topk"}, "sampled": {"kind": "sampled"}}


def config(k: int, seeds: list[int], steps: int) -> dict:
    quickstart = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    student = quickstart["students"]["xcl_mix"]
    sets = {f"mix_{name}": {**quickstart["sets"]["mix"], **({"targets": {**t, "k": k}} if t else {})}
            for name, t in TARGETS.items()}
    students = {f"kd_{name}": {**student, "sets": {f"mix_{name}": 1.0}, "seeds": seeds,
                               "train": {**student["train"], "steps": steps, "num_workers": 0}}
                for name in TARGETS}
    return {**{key: quickstart[key] for key in ("seed", "source", "teachers", "teacher_stage")},
            "name": "sampled_study", "sets": sets, "students": students, "student_stage": {"parallel": "off"},
            "report": {"baseline": "kd_dense", "compare": ["kd_topk", "kd_sampled"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sampled_study")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "study.yaml"
    path.write_text(yaml.safe_dump(config(args.k, args.seeds, args.steps), sort_keys=False))
    cli("run", str(path), "--out", str(args.out / "run"))
    report = json.loads((args.out / "run" / "report.json").read_text())
    results = {}
    for name in TARGETS:
        accuracy = report["students"][f"kd_{name}"]["accuracy_by_seed"]
        results[name] = {"accuracy_by_seed": accuracy, "mean": statistics.mean(accuracy),
                         "std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0}
        print(f"{name}: accuracy {results[name]['mean']:.4f} ± {results[name]['std']:.4f} over seeds {args.seeds}")
    print(json.dumps({"k": args.k, "seeds": args.seeds, "steps": args.steps,
                      "teacher_accuracy": report["teacher"]["accuracy"], "targets": results}))


if __name__ == "__main__":
    main()
