"""The pruned students' part of a classification report (kd-orthogonality-ensemble §4), read from
what the chain left on disk (:mod:`pipeline.train.pruning`).

Per student and recipe: parameters (non-zero ones for magnitude pruning), multiply-adds as
torch-pruning counts them, checkpoint bytes and CPU latency at batch 1 and 64, pruned beside
unpruned (the medians measured in one process, averaged over the seeds). Then the paper's
Table 1 per arch and recipe: one row per pre-training (Scratch: objective erm; Label: kd),
columns Unpruned, Finetuned / Pre-Distill (the row's erm phase), Post-Distill (the scratch
row's kd phase), Pre-Post (the label row's kd phase), Self-Distill (its self_distill phase) and
Surplus = (Self-Distill − Finetuned) − (Unpruned label − Unpruned scratch), §4's worked example,
computed per seed index (seed s of each student) and then averaged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Config, recipes_of
from pipeline.report.aggregate import mean_std, shown
from pipeline.train.pruning import MEASURE_NAME, pruned_students, recipe_dir
from pipeline.train.runs import student_dir

SIZE_KEYS = ("parameters", "nonzero", "macs", "checkpoint_bytes", "latency_b1_s", "latency_b64_s")
COLUMNS = (("unpruned", "Unpruned"), ("pruned", "Pruned"), ("finetuned", "Finetuned/Pre-Distill"),
           ("post_distill", "Post-Distill"), ("pre_post", "Pre-Post"), ("self_distill", "Self-Distill"))


def _accuracy(path: Path) -> float | None:
    return float(json.loads(path.read_text())["accuracy"]) if path.is_file() else None


def _stat(values: list[float | None]) -> list[float] | None:
    present = [v for v in values if v is not None]
    return list(mean_std(present)) if present else None


def _remaining(record: dict[str, Any]) -> list[float]:
    """The share of channels kept per stage (layers grouped by their width before pruning), or of
    non-zero convolution weights for magnitude pruning."""
    if not record.get("structured", True):
        return [1.0 - record["conv_sparsity"]]
    stages: dict[int, list[int]] = {}
    for name, before in record["widths_before"].items():
        stages.setdefault(before, []).append(record["widths"][name])
    return [sum(kept) / (width * len(kept)) for width, kept in stages.items()]


def recipe_entry(cfg: Config, out: Path, name: str, recipe: Any) -> dict[str, Any]:
    """One student's recipe over its seeds: sizes, and accuracy by phase and seed index."""
    student = cfg.students[name]
    measured, by_seed = [], {}
    for seed_index in student.seeds:
        where = recipe_dir(out, name, seed_index, recipe)
        if (where / MEASURE_NAME).is_file():
            measured.append(json.loads((where / MEASURE_NAME).read_text()))
        by_seed[seed_index] = {"unpruned": _accuracy(student_dir(out, name, seed_index) / "result.json"),
                               "pruned": measured[-1]["pruned_accuracy"] if measured else None,
                               **{phase: _accuracy(where / phase / "result.json") for phase in recipe.then.objective}}
    sizes = {side: {key: _stat([m[side].get(key) for m in measured]) for key in SIZE_KEYS}
             for side in ("unpruned", "pruned")}
    return {"student": name, "recipe": recipe.label, "method": recipe.method, "pre": student.objective,
            "seeds": student.seeds, "by_seed": by_seed, "sizes": sizes,
            "remaining": _remaining(measured[0]["record"]) if measured else [],
            "group": json.dumps([student.model.model_dump(), recipe.identity()], sort_keys=True)}


def _cells(scratch: dict[str, Any] | None, label: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Table-1 rows of one arch and recipe, each column's accuracies by seed index."""
    rows = []
    # Fine-tuning with KD is Post-Distill after a scratch pre-training, Pre-Post after a KD one.
    for row, train_type, kd_column in ((scratch, "Scratch", "post_distill"), (label, "Label", "pre_post")):
        if row is None:
            continue
        seeds = row["by_seed"]
        columns = {"unpruned": {s: v["unpruned"] for s, v in seeds.items()},
                   "pruned": {s: v["pruned"] for s, v in seeds.items()},
                   "finetuned": {s: v.get("erm") for s, v in seeds.items()}}
        columns[kd_column] = {s: v.get("kd") for s, v in seeds.items()}
        columns["self_distill"] = {s: v.get("self_distill") for s, v in seeds.items()}
        rows.append({"train_type": train_type, "student": row["student"], "recipe": row["recipe"],
                     "seeds": len(seeds), **{
            key: _stat(list(values.values())) for key, values in columns.items()}})
    return rows


def surplus(scratch: dict[str, Any], label: dict[str, Any]) -> list[float] | None:
    """§4: (Self-Distill − Finetuned) − (Unpruned label − Unpruned scratch), per seed index."""
    values = []
    for seed in sorted(set(scratch["by_seed"]) & set(label["by_seed"])):
        s, k = scratch["by_seed"][seed], label["by_seed"][seed]
        parts = (k.get("self_distill"), s.get("erm"), k["unpruned"], s["unpruned"])
        if all(p is not None for p in parts):
            values.append((parts[0] - parts[1]) - (parts[2] - parts[3]))
    return list(mean_std(values)) if values else None


def pruning_report(cfg: Config, out: Path) -> dict[str, Any] | None:
    """The pruned students' sizes and the Table-1 blocks (None: the job prunes nothing)."""
    names = pruned_students(cfg)
    if not names:
        return None
    entries = [recipe_entry(cfg, out, name, recipe)
               for name in names for recipe in recipes_of(cfg.students[name].prune)]
    tables = []
    for group in dict.fromkeys(entry["group"] for entry in entries):
        members = [e for e in entries if e["group"] == group]
        scratch = next((e for e in members if e["pre"] == "erm"), None)
        label = next((e for e in members if e["pre"] == "kd"), None)
        rows = _cells(scratch, label)
        first = members[0]
        tables.append({"arch": cfg.students[first["student"]].model.arch, "method": first["method"],
                       "remaining": first["remaining"], "rows": rows,
                       "surplus": surplus(scratch, label) if scratch and label else None})
    for entry in entries:
        entry.pop("group")
    return {"recipes": entries, "tables": tables}


def _pair(sizes: dict[str, Any], key: str, scale: float = 1.0, digits: int = 0) -> str:
    before, after = sizes["unpruned"][key], sizes["pruned"][key]
    if before is None or after is None:
        return "-"
    return f"{before[0] * scale:.{digits}f} → {after[0] * scale:.{digits}f}"


def _cell(value: list[float] | None, seeds: int) -> str:
    return "-" if value is None else shown(value[0], value[1] if seeds > 1 else None)


def format_pruning(section: dict[str, Any]) -> str:
    """The sizes block and the Table-1 blocks for the terminal."""
    lines = ["pruned students (measured: unpruned → pruned; latency is the median of timed CPU passes, "
             "1 thread, mean over seeds)",
             f"{'student':<14} {'recipe':<10} {'params':>17} {'non-zero':>17} {'MACs':>21} {'checkpoint bytes':>19} "
             f"{'b1 ms':>13} {'b64 ms':>15}  remaining"]
    for entry in section["recipes"]:
        sizes = entry["sizes"]
        remaining = "/".join(f"{100 * r:.0f}%" for r in entry["remaining"])
        lines.append(f"{entry['student']:<14} {entry['recipe']:<10} {_pair(sizes, 'parameters'):>17} "
                     f"{_pair(sizes, 'nonzero'):>17} {_pair(sizes, 'macs'):>21} {_pair(sizes, 'checkpoint_bytes'):>19} "
                     f"{_pair(sizes, 'latency_b1_s', 1e3, 2):>13} {_pair(sizes, 'latency_b64_s', 1e3, 1):>15}  "
                     f"{remaining}")
    for table in section["tables"]:
        remaining = "/".join(f"{100 * r:.0f}%" for r in table["remaining"])
        kept = "params" if table["method"] == "magnitude" else "channels"
        lines += ["", f"Table 1: {table['arch']}, {table['method']} (remaining {kept} {remaining}); accuracy"]
        lines.append(f"{'train type':<10} {'student':<14} " + " ".join(f"{title:>21}" for _, title in COLUMNS)
                     + f" {'Surplus':>17}")
        for row in table["rows"]:
            cells = " ".join(f"{_cell(row.get(key), row['seeds']):>21}" for key, _ in COLUMNS)
            extra = _cell(table["surplus"], row["seeds"]) if row["train_type"] == "Label" else ""
            lines.append(f"{row['train_type']:<10} {row['student']:<14} {cells} {extra:>17}")
    return "\n".join(lines)
