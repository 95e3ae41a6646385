"""Ray around the Ray-free trainer: teacher members as parallel Ray tasks, and students on a
cluster through Ray Train's TorchTrainer (``transferset train --ray``).

This is a driver module (Ray lives only in ``pipeline/`` driver code): each task or Ray Train
worker imports ``student.train`` and calls :func:`student.train.train_model` exactly as a local
run does; Ray only places the processes. Ray Train initialises the torch process group itself,
which :mod:`student.distributed` picks up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config

Progress = Callable[[str], None]


def _train_member(cfg_json: str, member: int, member_dir: str, seed: int, threads: int) -> dict[str, Any]:
    """Body of one Ray task: load the splits and train teacher member ``member``."""
    import torch

    from pipeline.chain import load_splits
    from student.train import train_model

    torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    train, test = load_splits(cfg)
    return train_model(
        name=f"teacher-{member}", model_cfg=cfg.teachers.model, train_cfg=cfg.teachers.train, objective="erm",
        kd_cfg=None, sets=[], train_source=train, test_source=test, out_dir=Path(member_dir), seed=seed,
    )


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

    from pipeline.driver import ensure_ray
    from pipeline.report import score

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
        results[member] = ray.get(done[0])
        progress(f"teacher {member}: {score(results[member])}")
    return results


def train_student_on_ray(cfg: Config, out: Path, name: str, workers: int, use_gpu: bool,
                         progress: Progress) -> dict[str, Any]:
    """One student trained by ``workers`` Ray Train workers (DDP; gloo on CPU, NCCL on GPUs)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.driver import ensure_ray

    ensure_ray(cfg.ray)
    cfg_json, out_dir = cfg.model_dump_json(), str(out.resolve())

    def loop(_: dict[str, Any]) -> None:
        from pipeline.chain import load_splits, train_student

        config = Config.model_validate_json(cfg_json)
        train, test = load_splits(config)
        train_student(config, Path(out_dir), name, train, test, lambda line: None, force=True)

    cpus = max(0.5, (cluster_cpus(cfg) if cluster_cpus(cfg) != float("inf") else workers) / max(workers, 1) - 0.25)
    trainer = TorchTrainer(
        loop, scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus} if not use_gpu else None),
        run_config=ray.train.RunConfig(storage_path=str(Path(out_dir) / "ray_train"), name=name),
    )
    progress(f"student {name}: Ray Train with {workers} worker(s)")
    trainer.fit()
    import json

    return json.loads((Path(out_dir) / "students" / name / "result.json").read_text())
