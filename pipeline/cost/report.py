"""The text of ``transferset plan``: the cost of :func:`pipeline.cost.job_cost` as a table."""

from __future__ import annotations

from typing import Any

COLUMNS = ("set", "samplers", "shards", "samples", "forward passes", "member forwards", "batches/member",
           "bytes/sample", "stored", "to make")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _to_make(part: dict[str, Any]) -> str:
    return f"{part['shards']} shards, {part['teacher_forward_samples']} passes"


def set_rows(cost: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [COLUMNS]
    for s in cost["sets"]:
        rows.append((s["name"], ",".join(s["samplers"]), str(s["shards"]), str(s["samples"]),
                     str(s["teacher_forward_samples"]), str(s["member_forwards"]), str(s["batches_per_member"]),
                     f"{s['bytes_per_sample']:.0f}", human_bytes(s["bytes"]), _to_make(s["to_make"])))
    t = cost["totals"]
    rows.append(("total", "", str(t["shards"]), str(t["samples"]), str(t["teacher_forward_samples"]),
                 str(t["member_forwards"]), "", "", human_bytes(t["bytes"]), _to_make(t["to_make"])))
    return rows


def seconds_lines(cost: dict[str, Any]) -> list[str]:
    """The --probe part: what was measured, and the estimate made of it."""
    probe, teachers, totals = cost["probe"], cost["teachers"], cost["totals"]
    lines = []
    if "teacher_batch_s" in probe:
        times = ", ".join(f"{s:.4f}" for s in probe["teacher_batch_s"])
        weights = "random weights, not trained yet" if teachers["to_train"] else "trained weights"
        lines.append(f"probe on {probe['teacher_device']}: one teacher batch of {probe['teacher_batch_size']} takes "
                     f"{times} s (members in order; {weights}; {probe['repeats']})")
    rows: list[tuple[str, ...]] = [("part", "seconds", "from")]
    if teachers.get("seconds") is not None:
        rows.append(("teacher training", f"{teachers['seconds']:.1f}", f"{teachers['to_train']} members × "
                     f"{teachers['train_steps']} steps × {teachers['step_s']:.4f} s on {teachers['device']}"))
    for s in cost["sets"]:
        if "seconds" in s:
            part = s["seconds"]
            rows.append((f"set {s['name']}", f"{part['total']:.1f}",
                         f"teachers {part['teachers']:.1f} s ({s['to_make']['batches_per_member']} batches × "
                         f"{len(probe['teacher_batch_s'])} members) + samples {part['samples']:.1f} s "
                         f"({s['to_make']['shards']} shards; shard 0 made in {s['probe']['make_s']:.3f} s, "
                         f"encoded in {s['probe']['encode_s']:.3f} s)"))
    for s in cost["students"]:
        rows.append((f"student {s['name']}", f"{s['seconds']:.1f}",
                     f"{plural(s['runs'], 'run')} × {s['steps']} steps × {s['step_s']:.4f} s on {s['device']}"))
    seconds = totals["seconds"]["total"]
    rows.append(("total", f"{seconds:.1f}", f"= {totals['device_hours']:.4f} device-hours (serial, this machine)"))
    return [*lines, *table(rows)]


def format_cost(cost: dict[str, Any]) -> str:
    t, teachers = cost["totals"], cost["teachers"]
    arch = f" × {teachers['arch']}" if teachers["arch"] else " (teachers.checkpoints)"
    trained = (f"{teachers['to_train']} to train ({teachers['train_steps']} steps, batch {teachers['batch_size']}); "
               "sets planned with random-weight stand-ins" if teachers["to_train"]
               else "imported" if teachers["weights"] == "imported" else "all trained")
    lines = [f"plan of {cost['config']} into {cost['out']} (nothing written)",
             f"teachers: {teachers['members']}{arch}, {trained}", ""]
    lines += table(set_rows(cost)) if cost["sets"] else ["no sets"]
    students = ", ".join(f"{s['name']} {s['runs']}×{s['steps']}" for s in cost["students"]) or "none"
    lines += ["", f"students: {plural(t['student_runs'], 'run')}, {plural(t['student_steps'], 'step')} ({students})",
              f"teacher forward passes (samples through the ensemble): {t['teacher_forward_samples']}; "
              f"this run: {t['to_make']['teacher_forward_samples']}"]
    if "probe" in cost:
        lines += ["", *seconds_lines(cost)]
    return "\n".join(lines)
