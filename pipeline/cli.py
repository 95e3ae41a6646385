"""``transferset`` command line: run, generate, train, plan, verify, gc, inspect, import-teacher.

Bad input ends with one ``error: ...`` line on stderr and exit code 2; ``verify`` exits 1 when a
set has problems. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from core.config import Config, TeacherModelConfig, describe_validation_error, load_config
from core.errors import FormatError, JobFailure, UserError
from core.store import storage

# The pipeline (torch, Ray) is imported inside the commands, after the config is read: a bad
# config or `--help` answers at once instead of after two seconds of imports.


def plain(doc: str | None) -> str:
    """Help text for a terminal: no reStructuredText backticks, paragraphs joined into lines."""
    text = re.sub(r"`{1,2}([^`]+)`{1,2}", r"\1", doc or "")
    return "\n\n".join(" ".join(part.split()) for part in text.strip().split("\n\n"))


app = typer.Typer(add_completion=False, no_args_is_help=True, help=plain(__doc__))


def command(function: Callable[..., None]) -> Callable[..., None]:
    """Register a subcommand whose docstring is shown as plain help."""
    return app.command(help=plain(function.__doc__))(function)


OutOption = Annotated[str | None, typer.Option(
    "--out", help="output directory (default runs/<config name>); generate also takes an fsspec URL (s3://…)")]
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
    path = storage.local_path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"{command} --out {out}: exists and is not a directory; choose another --out")
    return path


@command
def run(config: Path, out: OutOption = None, set_: SetOption = None, address: AddressOption = None,
        max_restarts: RestartsOption = None) -> None:
    """The whole chain: teachers → transfer sets → students → report."""
    cfg, out_url = _setup(config, out, set_, address, max_restarts)
    out_dir = _local(out_url, "run")
    from pipeline.chain import run_job
    from pipeline.report import format_table

    started = time.perf_counter()
    report = run_job(cfg, out_dir, progress)
    print(format_table(report))
    print(f"report: {out_dir / 'report.json'} ({time.perf_counter() - started:.0f} s)")


@command
def generate(config: Path, out: OutOption = None, set_: SetOption = None, address: AddressOption = None,
             only: Annotated[list[str] | None, typer.Option("--only", help="generate only these sets")] = None,
             max_restarts: RestartsOption = None) -> None:
    """Only the transfer sets (the teachers must exist)."""
    cfg, out_dir = _setup(config, out, set_, address, max_restarts)
    if storage.is_local(out_dir):
        _local(out_dir, "generate")
    unknown = [name for name in only or [] if name not in cfg.sets]
    if unknown:
        raise UserError(f"--only {unknown[0]!r}: not one of the config's sets {sorted(cfg.sets)}")
    from pipeline.chain import generate_sets
    from pipeline.train.members import require_teachers

    results = generate_sets(cfg, out_dir, require_teachers(cfg, out_dir), progress, names=only or None)
    for name, result in results.items():
        shown = {k: result[k] for k in ("shards_made", "shards_total", "samples", "rejected",
                                        "teacher_forward_samples", "samples_per_s", "set_dir", "restarts")}
        print(json.dumps({"set": name, **shown}))


@command
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
    from pipeline.chain import train_students
    from pipeline.train.job import open_job
    from pipeline.train.runs import student_runs
    from pipeline.train.teachers import make_teachers

    job = open_job(cfg, out_dir, progress)
    if teachers:
        for path in make_teachers(job):
            print(path)
        return
    assert student is not None
    student_runs(cfg, out_dir, student, job.train.task, seed)  # check the sets exist before training
    if ray:
        from pipeline.train.ray_train import train_student_on_ray

        for result in train_student_on_ray(cfg, out_dir, student, workers, gpu, progress, seed):
            print(json.dumps(result))
        return
    results = train_students(job, [student], seeds=seed)
    if int(os.environ.get("RANK", "0")) == 0:
        for result in results[student].values():
            print(json.dumps(result))


@command
def plan(config: Path, out: OutOption = None, set_: SetOption = None,
         probe: Annotated[bool, typer.Option(
             "--probe", help="time a teacher batch and a training step on this machine's device")] = False,
         as_json: Annotated[bool, typer.Option("--json", help="print the plan as one JSON object")] = False) -> None:
    """The cost of a job before it runs: per set shards, samples, teacher forward passes and stored
    bytes (from one probe shard made in a temporary directory); with --probe the measured seconds and
    device-hours. Writes nothing under --out and starts no Ray."""
    cfg, out_dir = _setup(config, out, set_, None)
    if storage.is_local(out_dir):
        _local(out_dir, "plan")
    from pipeline.cost import job_cost
    from pipeline.cost.report import format_cost

    cost = job_cost(cfg, out_dir, probe=probe, progress=progress)
    print(json.dumps(cost) if as_json else format_cost(cost))


@command
def verify(set_dir: str, index: Annotated[str | None, typer.Option(
        "--index", help="check the set against this index.json (a copy kept from earlier) instead of its own")]
        = None) -> None:
    """Check a transfer set: checksums, counts, every record decodes. Exit 1 on any problem."""
    if not storage.is_dir(set_dir):
        raise UserError(f"verify: {set_dir} is not a directory")
    if index is not None and not storage.is_file(index):
        raise UserError(f"verify --index {index}: no such file")
    from pipeline.inspect.verify import unlisted_shards, verify_set

    problems = verify_set(set_dir, index)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"error: verify {set_dir}: {len(problems)} problem(s), the first: {problems[0]}", file=sys.stderr)
        raise typer.Exit(1)  # main() passes the code on (click returns it without standalone mode)
    unlisted = unlisted_shards(set_dir)
    if unlisted:
        print(f"note: {len(unlisted)} shard file(s) not listed in the index ({', '.join(unlisted[:3])}"
              f"{', …' if len(unlisted) > 3 else ''}): completed short shards or a killed run's; "
              "`transferset gc` removes them")
    print(f"{set_dir}: OK")


@command
def gc(set_dir: str) -> None:
    """Remove the shard files a set's index no longer lists (a short shard completed when the set
    grew, a killed run's shards) and dead writers' temp files. Refused while a writer holds the set."""
    from pipeline.generate.set_gc import collect

    print(json.dumps(collect(set_dir, progress)))


@command
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
    from pipeline.inspect import format_report, inspect_set, write_plots

    stats = inspect_set(set_dir, kl_samples=kl_samples)
    if plots is not None:
        named = {(p.parent.name if p.name == "model.pt" else p.stem): p for p in model or []}
        stats["plots"] = write_plots(set_dir, plots, named)
    print(json.dumps(stats) if as_json else format_report(stats))
    if plots is not None and not as_json:
        print("plots: " + ", ".join(stats["plots"]))


@command
def import_teacher(
    arch: Annotated[str, typer.Option("--arch", help="timm:NAME, torchvision:NAME, a built-in name or module:factory")],
    weights: Annotated[str, typer.Option(
        "--weights", help="a state dict, timm/torchvision checkpoint or .safetensors (path or URL), or "
                          "pretrained[:TAG] (the library's weights: needs internet)")],
    classes: Annotated[int, typer.Option("--classes", min=1, help="the classes of the data (the head's width)")],
    out: Annotated[Path, typer.Option("--out", help="the checkpoint file to write")],
    input_size: Annotated[str | None, typer.Option("--input-size", help="input side or HxW (default: published)")]
    = None,
    mean: Annotated[str | None, typer.Option("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")] = None,
    std: Annotated[str | None, typer.Option("--std", help="per-channel std, e.g. 0.229,0.224,0.225")] = None,
    interpolation: Annotated[str | None, typer.Option("--interpolation", help="bilinear, bicubic or nearest")] = None,
    crop_pct: Annotated[float | None, typer.Option("--crop-pct", help="eval center-crop fraction (timm's)")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="input channels (default: published, else 3)")]
    = None,
    arch_kwargs: Annotated[str, typer.Option("--arch-kwargs", help="the arch's keyword arguments as JSON")] = "{}",
) -> None:
    """Write one teacher checkpoint from weights made elsewhere (what teachers.models does for each
    member), with its input contract: the library's published one, overridden by the options."""
    from pipeline.generate.teacher_import import prepare_teacher

    def numbers(option: str, text: str | None, kind: type) -> list | None:
        try:
            return None if text is None else [kind(v) for v in re.split(r"[x,×\s]+", text.strip()) if v]
        except ValueError:
            raise UserError(f"import-teacher {option} {text!r}: expected numbers, e.g. 224 or 224x224") from None

    given = {"size": numbers("--input-size", input_size, int), "mean": numbers("--mean", mean, float),
             "std": numbers("--std", std, float), "interpolation": interpolation, "crop_pct": crop_pct,
             "channels": channels}
    try:
        kwargs = json.loads(arch_kwargs)
        entry = TeacherModelConfig.model_validate({"arch": arch, "weights": weights, "arch_kwargs": kwargs, "input": {
            k: v for k, v in given.items() if v is not None}})
    except ValueError as err:  # bad JSON, or a ValidationError (a ValueError too)
        shown = describe_validation_error(err) if isinstance(err, ValidationError) else f"--arch-kwargs: {err}"
        raise UserError(f"import-teacher: {shown}") from err
    if out.is_dir():
        raise UserError(f"import-teacher --out {out}: is a directory; give the checkpoint file to write")
    teacher = prepare_teacher(entry, classes, default_channels=3, where=f"import-teacher --arch {arch}",
                              allowed_factories=(entry.factory,) if entry.factory else ())
    sha = teacher.save(out)
    print(json.dumps({"checkpoint": str(out), "sha256": sha, "arch": arch, "classes": classes,
                      "input": teacher.contract}))


def main() -> None:
    """Console entry point: one-line errors with exit 2 for bad input, no traceback.

    RAY_AUTH_MODE is left alone here: the driver disables token auth only for the embedded
    local Ray it starts itself, never for a cluster the user connects to.
    """
    ray_was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # a caller's: left running
    try:
        # Without standalone mode click *returns* the code of a ``typer.Exit`` (verify's 1)
        # instead of raising it: pass it on, or a damaged set would exit 0.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
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
    except typer.TyperException as err:  # usage errors (unknown command or option) of typer's own click
        print(f"error: {err.format_message()}", file=sys.stderr)
        sys.exit(err.exit_code)
    finally:
        if "ray" in sys.modules and not ray_was_running:
            from pipeline.generate.driver import shutdown_ray

            shutdown_ray()


if __name__ == "__main__":
    main()
