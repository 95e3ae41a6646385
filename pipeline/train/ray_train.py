"""Ray around the Ray-free trainer: teacher members and student runs (student × seed) as
parallel Ray tasks, and students on a cluster through Ray Train's TorchTrainer
(``transferset train --ray``).

One of the three driver modules that import Ray (with :mod:`pipeline.generate.driver` and
:mod:`pipeline.generate.supervisor`): each task or Ray Train worker calls the same functions as a local
run (:mod:`pipeline.train.runs`, hence :func:`student.train.train_model`); Ray only places the
processes. Ray Train initialises the torch process group itself, which
:mod:`student.distributed` picks up. Ray is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.config import Config
from core.errors import FormatError, UserError
from core.progress import Progress
from core.tasks import score
from pipeline.generate.driver import ensure_ray
from pipeline.train.job import Job, load_splits, open_job
from pipeline.train.members import train_member
from pipeline.train.runs import StudentRun, student_dir, student_runs, train_student_run
from pipeline.train.step_spec import reusable

ERROR_KEY = "__error__"


def _user_errors_as_values(body: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A task body whose bad-input errors come back as ``{ERROR_KEY: message}``: the driver then
    raises the same one-line error as a local run, never a Ray traceback or a retry."""

    @functools.wraps(body)
    def task(*args: Any) -> dict[str, Any]:
        try:
            return body(*args)
        except (UserError, FormatError) as err:
            return {ERROR_KEY: str(err)}

    return task


def _result(value: dict[str, Any]) -> dict[str, Any]:
    if ERROR_KEY in value:
        raise UserError(value[ERROR_KEY])
    return value


@_user_errors_as_values
def _train_member(cfg_json: str, member: int, member_dir: str, seed: int, threads: int) -> dict[str, Any]:
    """Body of one Ray task: load the splits and train teacher member ``member``."""
    torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    train, test = load_splits(cfg)
    return train_member(cfg, member, Path(member_dir), seed, train, test)


def cluster_cpus(cfg: Config) -> float:
    """CPUs the members could use: the cluster's when connected to one, else this machine's."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0.0))
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return float("inf")  # a real cluster: let Ray schedule
    return float(cfg.ray.num_cpus or os.cpu_count() or 1)


def use_ray_for_members(cfg: Config, pending: int) -> bool:
    """``parallel: auto`` trains members on Ray when at least two fit side by side."""
    mode = cfg.teachers.parallel
    if mode == "off" or pending < 2:
        return mode == "ray" and pending > 0
    return mode == "ray" or cluster_cpus(cfg) >= 2 * cfg.teachers.cpus_per_member


def train_members(cfg: Config, jobs: list[tuple[int, Path, int]], progress: Progress) -> dict[int, dict[str, Any]]:
    """Train ``(member, directory, seed)`` jobs as Ray tasks of ``cpus_per_member`` CPUs each,
    reporting each member as it finishes. Returns the results by member."""
    import ray

    ensure_ray(cfg.ray)
    cpus = cfg.teachers.cpus_per_member
    task = ray.remote(num_cpus=cpus, max_retries=1)(_train_member)
    threads = max(1, int(cpus))
    cfg_json = cfg.model_dump_json()
    pending = {task.remote(cfg_json, member, str(path), seed, threads): member for member, path, seed in jobs}
    progress(f"teachers: training {len(jobs)} member(s) as Ray tasks ({cpus:g} CPU each)")
    results: dict[int, dict[str, Any]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        member = pending.pop(done[0])
        results[member] = _result(ray.get(done[0]))
        progress(f"teacher {member}: {score(results[member])}")
    return results


@_user_errors_as_values
def _train_student_task(cfg_json: str, out: str, run_json: str, threads: int) -> dict[str, Any]:
    """Body of one Ray task: load the splits and train one run (student × seed)."""
    torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    return train_student_run(open_job(cfg, out), StudentRun.from_json(run_json))


def use_ray_for_runs(cfg: Config, pending: int) -> bool:
    """``student_stage.parallel: auto`` trains student runs on Ray when at least two fit side by side."""
    mode = cfg.student_stage.parallel
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False  # under torchrun every process trains the same run (DDP)
    if mode == "off" or pending < 2:
        return mode == "ray" and pending > 0
    return mode == "ray" or cluster_cpus(cfg) >= 2 * cfg.student_stage.cpus_per_run


def train_runs_on_ray(cfg: Config, out: Path, runs: list[StudentRun], progress: Progress) -> list[dict[str, Any]]:
    """Train student runs (:func:`pipeline.train.runs.student_runs`) as Ray tasks of
    ``student_stage.cpus_per_run`` CPUs each, reporting each as it finishes; results in order."""
    import ray

    ensure_ray(cfg.ray)
    cpus = cfg.student_stage.cpus_per_run
    task = ray.remote(num_cpus=cpus, max_retries=1)(_train_student_task)
    cfg_json, threads = cfg.model_dump_json(), max(1, int(cpus))
    refs = [task.remote(cfg_json, str(out), run.to_json(), threads) for run in runs]
    progress(f"students: training {len(runs)} run(s) as Ray tasks ({cpus:g} CPU each)")
    label = {ref: run.label for ref, run in zip(refs, runs, strict=True)}
    waiting = list(refs)
    results: dict[Any, dict[str, Any]] = {}
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        results[done[0]] = _result(ray.get(done[0]))
        progress(f"student {label[done[0]]}: {score(results[done[0]])}")
    return [results[ref] for ref in refs]


def train_runs(job: Job, runs: list[StudentRun], force: bool = False) -> list[dict[str, Any]]:
    """Each run (:func:`pipeline.train.runs.student_runs`, or a pruned student's fine-tuning): reused
    when its ``spec.json`` is unchanged, else trained — as parallel Ray tasks when the CPUs allow
    (``student_stage.parallel``), else one after the other here. Results in order."""
    cfg, out, progress = job.cfg, job.out, job.progress
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for at, run in enumerate(runs):
        if not force and reusable(run.out_dir, run.spec, "result.json"):
            progress(f"student {run.label}: reused {run.out_dir}")
            results[at] = {**json.loads((run.out_dir / "result.json").read_text()), "seed_index": run.seed_index}
        else:
            pending.append(at)
    if use_ray_for_runs(cfg, len(pending)):
        for at, result in zip(pending, train_runs_on_ray(cfg, out, [runs[a] for a in pending], progress), strict=True):
            results[at] = result
    else:
        for at in pending:
            results[at] = train_student_run(job, runs[at])
    return [results[at] for at in range(len(runs))]


def train_student_on_ray(cfg: Config, out: Path, name: str, workers: int, use_gpu: bool,
                         progress: Progress, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Each run (seed) of one student trained by ``workers`` Ray Train workers (DDP; gloo on CPU,
    NCCL on GPUs), one run after the other."""
    import ray.train
    from ray.train.torch import TorchTrainer

    ensure_ray(cfg.ray)
    cfg_json, out_dir = cfg.model_dump_json(), str(out.resolve())

    def loop(config_: dict[str, Any]) -> None:
        config = Config.model_validate_json(cfg_json)
        job = open_job(config, out_dir)
        for run in student_runs(config, Path(out_dir), name, job.train.task, [config_["seed_index"]]):
            train_student_run(job, run)

    cpus = max(0.5, (cluster_cpus(cfg) if cluster_cpus(cfg) != float("inf") else workers) / max(workers, 1) - 0.25)
    results = []
    for seed_index in seeds or cfg.students[name].seeds:
        trainer = TorchTrainer(
            loop, train_loop_config={"seed_index": seed_index}, scaling_config=ray.train.ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus} if not use_gpu else None),
            run_config=ray.train.RunConfig(storage_path=str(Path(out_dir) / "ray_train"), name=f"{name}-{seed_index}"),
        )
        progress(f"student {name}/seed-{seed_index}: Ray Train with {workers} worker(s)")
        trainer.fit()
        results.append(json.loads((student_dir(Path(out_dir), name, seed_index) / "result.json").read_text()))
    return results
