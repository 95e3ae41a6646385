"""``transferset`` command line: run, generate, train, verify, inspect.

Bad input ends with one ``error: ...`` line on stderr and exit code 2; ``verify`` exits 1 when a
set has problems. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from core import storage
from core.config import Config, load_config
from core.errors import FormatError, JobFailure, UserError
from pipeline.chain import generate_sets, run_job, train_students, train_teachers
from pipeline.driver import shutdown_ray
from pipeline.inspect import format_report, inspect_set, write_plots
from pipeline.ray_train import train_student_on_ray
from pipeline.report import format_table
from pipeline.runs import load_splits, require_teachers, student_runs
from pipeline.verify import verify_set

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

OutOption = Annotated[str | None, typer.Option(
    "--out", help="output directory (default runs/<config name>); `generate` also takes an fsspec URL (s3://…)")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config value: key.path=value")]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
]
RestartsOption = Annotated[int | None, typer.Option(
    "--max-restarts", min=0, help="restarts from the committed shards after a stall or cluster failure (default 2)")]


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _setup(config: Path, out: str | None, overrides: list[str] | None, address: str | None,
           max_restarts: int | None = None) -> tuple[Config, str]:
    cfg = load_config(config, overrides)
    if address:
        cfg.ray.address = address
    if max_restarts is not None:
        cfg.ray.max_restarts = max_restarts
    return cfg, out or str(Path("runs") / cfg.name)


def _local(out: str, command: str) -> Path:
    """Teachers and students are trained into a local directory (a shared file system on a cluster)."""
    if not storage.is_local(out):
        raise UserError(f"{command} --out {out}: teachers and students are written to a local directory; "
                        f"only `transferset generate` writes to a URL (or give the set an `out:` URL)")
    return storage.local_path(out)


@app.command()
def run(config: Path, out: OutOption = None, set_: SetOption = None, address: AddressOption = None,
        max_restarts: RestartsOption = None) -> None:
    """The whole chain: teachers → transfer sets → students → report."""
    cfg, out_url = _setup(config, out, set_, address, max_restarts)
    out_dir = _local(out_url, "run")
    started = time.perf_counter()
    report = run_job(cfg, out_dir, progress)
    print(format_table(report))
    print(f"report: {out_dir / 'report.json'} ({time.perf_counter() - started:.0f} s)")


@app.command()
def generate(config: Path, out: OutOption = None, set_: SetOption = None, address: AddressOption = None,
             only: Annotated[list[str] | None, typer.Option("--only", help="generate only these sets")] = None,
             max_restarts: RestartsOption = None) -> None:
    """Only the transfer sets (the teachers must exist)."""
    cfg, out_dir = _setup(config, out, set_, address, max_restarts)
    unknown = [name for name in only or [] if name not in cfg.sets]
    if unknown:
        raise UserError(f"--only {unknown[0]!r}: not one of the config's sets {sorted(cfg.sets)}")
    results = generate_sets(cfg, out_dir, require_teachers(cfg, out_dir), progress, names=only or None)
    for name, result in results.items():
        shown = {k: result[k] for k in ("shards_made", "shards_total", "samples", "rejected",
                                        "teacher_forward_samples", "samples_per_s", "set_dir", "restarts")}
        print(json.dumps({"set": name, **shown}))


@app.command()
def train(config: Path, student: Annotated[str | None, typer.Option("--student", help="student to train")] = None,
          teachers: Annotated[bool, typer.Option("--teachers", help="train the teacher ensemble")] = False,
          out: OutOption = None, set_: SetOption = None,
          ray: Annotated[bool, typer.Option("--ray", help="train the student with Ray Train (DDP workers)")] = False,
          workers: Annotated[int, typer.Option("--workers", help="--ray: number of training workers")] = 2,
          gpu: Annotated[bool, typer.Option("--gpu", help="--ray: one GPU per worker")] = False,
          seed: Annotated[list[int] | None, typer.Option(
              "--seed", help="train only this run of the student's seeds (repeatable)")] = None,
          address: AddressOption = None) -> None:
    """Train one student from existing transfer sets, each of its seeds (or, with --teachers, the ensemble).

    Under ``torchrun --nproc_per_node N -m pipeline.cli train ...`` the student is trained with
    DDP over N processes; ``--ray`` does the same through Ray Train on a Ray cluster.
    """
    cfg, out_url = _setup(config, out, set_, address)
    out_dir = _local(out_url, "train")
    if teachers == (student is not None):
        raise UserError("train: give exactly one of --student NAME or --teachers")
    if ray and (teachers or workers < 1):
        raise UserError("train --ray: needs --student NAME and --workers >= 1")
    if teachers and seed:
        raise UserError("train --seed: picks runs of a student; teachers are trained as members")
    train_split, test_split = load_splits(cfg)
    if teachers:
        for path in train_teachers(cfg, out_dir, train_split, test_split, progress):
            print(path)
        return
    assert student is not None
    student_runs(cfg, out_dir, student, train_split.task, seed)  # check the sets exist before training
    if ray:
        for result in train_student_on_ray(cfg, out_dir, student, workers, gpu, progress, seed):
            print(json.dumps(result))
        return
    results = train_students(cfg, out_dir, [student], train_split, test_split, progress, seeds=seed)
    if int(os.environ.get("RANK", "0")) == 0:
        for result in results[student].values():
            print(json.dumps(result))


@app.command()
def verify(set_dir: str) -> None:
    """Check a transfer set: checksums, counts, every record decodes. Exit 1 on any problem."""
    if not storage.is_dir(set_dir):
        raise UserError(f"verify: {set_dir} is not a directory")
    problems = verify_set(set_dir)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{set_dir}: {len(problems)} problem(s)")
        raise typer.Exit(1)
    print(f"{set_dir}: OK")


@app.command()
def inspect(set_dir: str,
            plots: Annotated[Path | None, typer.Option("--plots", help="write PNG plots into this directory")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="print the statistics as one JSON object")] = False,
            kl_samples: Annotated[int, typer.Option("--kl-samples", help="records used to measure the target KL")]
            = 256,
            model: Annotated[list[Path] | None, typer.Option(
                "--model", help="regression sets, with --plots: a student checkpoint whose σ on the stored mixes "
                                "joins the σ-vs-λ plot (repeatable)")] = None) -> None:
    """Statistics of a transfer set: samplers, entropy (by λ), argmax classes, target size and KL
    (regression sets: predicted σ, aleatoric/epistemic parts, σ by λ)."""
    if model and plots is None:
        raise UserError("inspect --model: give --plots DIR too (the models' σ goes into the σ-vs-λ plot)")
    stats = inspect_set(set_dir, kl_samples=kl_samples)
    if plots is not None:
        named = {(p.parent.name if p.name == "model.pt" else p.stem): p for p in model or []}
        stats["plots"] = write_plots(set_dir, plots, named)
    print(json.dumps(stats) if as_json else format_report(stats))
    if plots is not None and not as_json:
        print("plots: " + ", ".join(stats["plots"]))


def main() -> None:
    """Console entry point: one-line errors with exit 2 for bad input, no traceback.

    RAY_AUTH_MODE is left alone here: the driver disables token auth only for the embedded
    local Ray it starts itself, never for a cluster the user connects to.
    """
    try:
        app(standalone_mode=False)
    except (UserError, FormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except JobFailure as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # click's usage errors arrive here in non-standalone mode
        from click.exceptions import ClickException

        if isinstance(err, ClickException):
            print(f"error: {err.format_message()}", file=sys.stderr)
            sys.exit(err.exit_code)
        raise
    finally:
        if "ray" in sys.modules:
            shutdown_ray()


if __name__ == "__main__":
    main()
