"""The steps of pruned students (kd-orthogonality-ensemble §4), after their own runs: prune,
make the Self-Distill sets, fine-tune once per phase. Each step is reused while its
``spec.json`` is unchanged, as every step of the chain.

Layout, under a student run's directory ``OUT/students/NAME/seed-S`` (the unpruned model)::

    prune-<recipe>/model.pt, measure.json      the pruned model, its sizes and latencies
    prune-<recipe>/<phase>/                      a fine-tuning run (erm, kd, self_distill)
    self-sets/<set>-<fingerprint>/               the set's samplers labelled by the unpruned model

A Self-Distill set is the student's set with one teacher, the unpruned checkpoint: the set's
fingerprint (and its ``index.json``) name that checkpoint's sha256, so a retrained student gets a
new set beside the old one rather than a refused directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from core.config import SOURCE_SET, Config, PruneConfig, recipes_of
from core.errors import UserError
from core.models import build_model, load_model, probe_forward, save_checkpoint
from core.progress import Progress
from core.records.format import sha256_file
from core.seeds import part_seed
from core.sources import Source, load_in_memory
from core.store import storage
from core.tasks import CLASSIFY
from pipeline.generate.driver import execute
from pipeline.generate.plan import AUTO, plan_set
from pipeline.generate.supervisor import supervise
from pipeline.train.job import Job
from pipeline.train.ray_train import train_runs
from pipeline.train.runs import StudentRun, read_back, set_dir, set_identity, student_dir, student_sets
from pipeline.train.step_spec import mark_done, reusable
from student.pruning.measure import compare
from student.pruning.recipe import check_recipe, example_input, prune_model
from student.pruning.shaping import Shaping
from student.tasks import EVALUATE

MEASURE_NAME = "measure.json"


def pruned_students(cfg: Config, names: list[str] | None = None) -> list[str]:
    return [name for name in names or list(cfg.students) if recipes_of(cfg.students[name].prune)]


def recipe_dir(out: Path, name: str, seed_index: int, recipe: PruneConfig) -> Path:
    return student_dir(out, name, seed_index) / f"prune-{recipe.label}"


def check_pruning(cfg: Config, train: Source) -> None:
    """Every recipe tried on a freshly built model of its student (refused in one line: no batch
    norm for slimming, ratios that do not fit the stages, torch-pruning absent), before the chain
    writes anything."""
    for name in pruned_students(cfg):
        student = cfg.students[name]
        if train.task.name != CLASSIFY.name:
            raise UserError(f"students.{name}.prune: pruned students are classifiers; source {train.name} has a "
                            f"{train.task.name!r} task")
        model = build_model(student.model.arch, train.shape[2], train.num_classes, student.model.arch_kwargs,
                            allowed_factories=cfg.factories)
        probe_forward(model, train.shape[2], train.shape[:2], train.num_classes, f"students.{name}.model")
        example = example_input({"size": list(train.shape[:2]), "channels": train.shape[2]})
        for recipe in recipes_of(student.prune):
            try:
                check_recipe(model, recipe, example)
            except UserError as err:
                raise UserError(f"students.{name}.prune {recipe.label}: {err}") from err


def prune_run(cfg: Config, out: Path, name: str, seed_index: int, recipe: PruneConfig, test: Source,
              progress: Progress) -> dict[str, Any]:
    """Prune one unpruned run by one recipe; measure both models side by side (sizes, bytes,
    latency at batch 1 and 64) and the pruned model's accuracy before fine-tuning."""
    unpruned_path = student_dir(out, name, seed_index) / "model.pt"
    where, label = recipe_dir(out, name, seed_index, recipe), f"{name}/seed-{seed_index}/{recipe.label}"
    spec = {"recipe": recipe.identity(), "unpruned_sha256": sha256_file(unpruned_path)}
    if reusable(where, spec, MEASURE_NAME):
        progress(f"student {label}: pruned model reused {where}")
        return json.loads((where / MEASURE_NAME).read_text())
    model, payload = load_model(unpruned_path, outputs=test.num_classes, allowed_factories=cfg.factories)
    unpruned, example = copy.deepcopy(model), example_input(payload["input"])
    record = prune_model(model, recipe, example)
    sha = save_checkpoint(where / "model.pt", model, arch=payload["arch"], arch_kwargs=payload["arch_kwargs"],
                          num_classes=payload["num_classes"], input=payload["input"], train=payload["train"],
                          pruned=record)
    measured = compare(unpruned, model, example)
    measured["unpruned"]["checkpoint_bytes"] = unpruned_path.stat().st_size
    measured["pruned"]["checkpoint_bytes"] = (where / "model.pt").stat().st_size
    accuracy = EVALUATE[CLASSIFY.name]([model], [payload["input"]], load_in_memory(test))["accuracy"]
    result = {"recipe": recipe.label, "method": recipe.method, "record": record, "checkpoint_sha256": sha,
              "pruned_accuracy": accuracy, **measured}
    storage.atomic_write(where / MEASURE_NAME, json.dumps(result, indent=1).encode())
    mark_done(where, spec)
    progress(f"student {label}: {recipe.method} → {measured['pruned']['parameters']} of "
             f"{measured['unpruned']['parameters']} parameters, {measured['pruned']['macs']} of "
             f"{measured['unpruned']['macs']} MACs, accuracy before fine-tuning {accuracy:.4f}")
    return result


def self_distill_sets(cfg: Config, out: Path, name: str, seed_index: int, weights: dict[str, float],
                      train: Source, progress: Progress, make: bool) -> list[tuple[str, float]]:
    """The Self-Distill sets of one run: each of ``weights``' transfer sets with the same samplers,
    labelled by the unpruned checkpoint alone (``make``: made where missing, else only located)."""
    teacher = student_dir(out, name, seed_index) / "model.pt"
    root = student_dir(out, name, seed_index) / "self-sets"
    sets: list[tuple[str, float]] = []
    for set_name, weight in weights.items():
        if set_name == SOURCE_SET:
            sets.append((SOURCE_SET, weight))
            continue
        own = cfg.model_copy(update={"cache_root": str(root), "sets": {
            set_name: cfg.sets[set_name].model_copy(update={"out": AUTO})}})

        def plan_of(own: Config = own, set_name: str = set_name) -> Any:
            return plan_set(own, set_name, set_dir(out, set_name), [teacher], source=train)

        plan = plan_of()
        if make:
            progress(f"student {name}/seed-{seed_index}: Self-Distill set {set_name} into {plan.spec.out_dir}")
            supervise(plan, lambda p, own=own: execute(p, own.ray, progress), progress, own.ray.max_restarts,
                      replan=plan_of)
        sets.append((plan.spec.out_dir, weight))
    return sets


def phase_runs(cfg: Config, out: Path, name: str, train: Source) -> list[StudentRun]:
    """The fine-tuning runs of a pruned student: seed × recipe × phase, each from its pruned
    checkpoint (which must exist)."""
    student = cfg.students[name]
    source = cfg.source.model_dump(exclude=cfg.source.unused_keys())
    runs = []
    for seed_index in student.seeds:
        for recipe in recipes_of(student.prune):
            then, start = recipe.then, recipe_dir(out, name, seed_index, recipe) / "model.pt"
            weights = then.sets or student.sets
            kd = then.kd or student.kd
            for phase in then.objective:
                if phase == "erm":
                    sets: list[tuple[str, float]] = []
                elif phase == "kd":
                    sets = student_sets(cfg, out, name, train.task, weights)
                else:
                    sets = self_distill_sets(cfg, out, name, seed_index, weights, train, lambda line: None, False)
                spec = {"phase": phase, "train": then.train.model_dump(), "kd": kd.model_dump() if sets else None,
                        "pruned_sha256": sha256_file(start), "source": source,
                        "sets": {storage.name_of(d): [w, set_identity(d) if d != SOURCE_SET else None]
                                 for d, w in sets}}
                runs.append(StudentRun(
                    name=name, seed_index=seed_index, sets=sets, spec=spec,
                    seed=part_seed(cfg.seed, "student", name, seed_index, "prune", recipe.label, phase),
                    out_dir=recipe_dir(out, name, seed_index, recipe) / phase,
                    objective="erm" if phase == "erm" else "kd", train=read_back(then.train), kd=kd,
                    shaping=Shaping(init=str(start), keep_zeros=recipe.method == "magnitude"),
                    label=f"{name}/seed-{seed_index}/{recipe.label}/{phase}"))
    return runs


def prune_students(job: Job, names: list[str]) -> dict[str, Any]:
    """Prune every run of the pruned students among ``names``, make their Self-Distill sets and
    fine-tune them; returns ``{name: {"measured": [...], "phases": [...]}}``."""
    cfg, out, train, test, progress = job.cfg, job.out, job.train, job.test, job.progress
    names = pruned_students(cfg, names)
    done: dict[str, Any] = {}
    for name in names:
        student = cfg.students[name]
        measured = [prune_run(cfg, out, name, seed_index, recipe, test, progress)
                    for seed_index in student.seeds for recipe in recipes_of(student.prune)]
        for seed_index in student.seeds:
            for weights in {json.dumps(r.then.sets or student.sets, sort_keys=True)
                            for r in recipes_of(student.prune) if "self_distill" in r.then.objective}:
                self_distill_sets(cfg, out, name, seed_index, json.loads(weights), train, progress, True)
        done[name] = {"measured": measured}
    runs = [run for name in names for run in phase_runs(cfg, out, name, train)]
    for run, result in zip(runs, train_runs(job, runs), strict=True):
        done[run.name].setdefault("phases", []).append({"label": run.label, **result})
    return done
