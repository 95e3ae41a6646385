"""Generation throughput and memory: the Ray pipeline against the bare ensemble forward.

1. Builds a teacher ensemble (seeded CIFAR ResNets; weights do not change the cost) and picks
   the source (cifar10-mini if present, else digits).
2. Makes the images of the large set in-process (``make_shard`` of every shard: the same
   tensors the pipeline labels) and times ``Ensemble.predict`` on them alone, with the teacher
   stage's threads and batch size: the *bare* samples/s, measured before and after the
   pipeline runs (the machine is shared); the ratio uses the faster of the two.
3. Runs ``generate_set`` for N and 10·N samples, each in a fresh process (its own embedded Ray,
   start-up excluded from its rate), sampling the resident memory of that process and every
   Ray process it started.

Prints the figures, then one JSON line with ``pipeline_vs_bare`` (10·N run) and
``rss_ratio_10x`` (peak RSS at 10·N / at N). Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/generate.py [--samples 2048] [--members 2]

``--gan`` measures XCL-GAN generation instead (a 32×32 BigGAN of 732k parameters with seeded
random weights, loaded from a local directory like a user's; ``gan`` sampler, N samples): the
generator alone in-process, the generator stage alone on Ray (generator actors, no teachers),
the teachers alone on the generated images, and generation + labelling + writing unfused
(generator actor → shard actor), fused (one actor) and fused with two actors, each in a fresh
process. See ``gan_main``.

``--large`` measures images of a few hundred pixels decoded and cropped per shard (JPEG
ImageFolders of ``--images`` N and 10·N pictures, ``image: {size: 64, views:
random_resized_crop}``, a mix set of ``--samples``): decode + crop + the teachers in-process
against ``generate_set``, and peak RSS at the 10·N source over the N one. See ``large_main``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, cifar10_mini

CIFAR_MINI = cifar10_mini()
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def source_config():
    from core.config import SourceConfig

    if CIFAR_MINI is not None:
        return SourceConfig(kind="imagefolder", path=str(CIFAR_MINI))
    return SourceConfig(kind="digits")


def build_teachers(out: Path, members: int, depth: int, width: int, channels: int, size: int) -> list[str]:
    import torch

    from core.models import CifarResNet, input_spec, save_checkpoint

    paths = []
    for member in range(members):
        torch.manual_seed(member)
        model = CifarResNet(channels, 10, depth=depth, width=width).eval()
        path = out / "teachers" / f"resnet{depth}-w{width}-{member}.pt"
        mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ([0.5], [0.25])
        save_checkpoint(path, model, arch="resnet_cifar", arch_kwargs={"depth": depth, "width": width},
                        num_classes=10, input=input_spec(size, size, channels, mean, std))
        paths.append(str(path))
    return paths


def set_config(samples: int, per_shard: int):
    from core.config import SetConfig, sampler_config

    return SetConfig(sampler=sampler_config(kind="mix"), samples=samples, samples_per_shard=per_shard)


def stage_config(batch_size: int):
    from core.config import TeacherStageConfig

    return TeacherStageConfig(batch_size=batch_size, threads=1)


def bench_config(set_cfg, teachers: list[str], stage, generator_stage=None, source=None):
    """The job config of one benchmark set, named ``bench`` (``source``: default ``source_config()``)."""
    from core.config import GeneratorStageConfig, parse_config

    return parse_config({"name": "bench", "seed": 0, "source": source or source_config(),
                         "teachers": {"model": {"arch": "resnet_cifar"}, "train": {"steps": 1},
                                      "checkpoints": list(teachers)},
                         "teacher_stage": stage, "generator_stage": generator_stage or GeneratorStageConfig(),
                         "ray": {"num_cpus": 2}, "sets": {"bench": set_cfg}})


# ---------------------------------------------------------------- measurements


def bare_rate(args: argparse.Namespace, teachers: list[str], samples: int) -> tuple[float, int]:
    """Samples/s of the ensemble alone on the images the pipeline labels for ``samples``."""
    import numpy as np

    from pipeline.generate.plan import plan_set
    from stages.teachers import Ensemble
    from stages.writer import make_shard

    set_cfg, stage = set_config(samples, args.per_shard), stage_config(args.batch_size)
    spec = plan_set(bench_config(set_cfg, teachers, stage), "bench", args.out / "bare", teachers).spec
    images = np.concatenate([make_shard(spec, s)[0] for s in range(spec.shards)])
    ensemble = Ensemble(teachers, 10, device="cpu", threads=stage.torch_threads(), batch_size=stage.batch_size,
                        channels_last=stage.channels_last)
    ensemble.predict(images[: stage.batch_size])  # warm-up, as the actor's first shard would be
    began = time.perf_counter()
    for start in range(0, len(images), args.per_shard):  # one call per shard, as the actor does
        ensemble.predict(images[start:start + args.per_shard])
    return len(images) / (time.perf_counter() - began), len(images)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def session_processes(sid: int) -> dict[int, tuple[int, float, str]]:
    """``pid → (resident bytes, CPU seconds so far, command line)`` of every process in session
    ``sid`` (the run and the Ray it started)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) != sid:
                continue
            rss = next(int(line.split()[1]) * 1024 for line in (entry / "status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(entry.name)] = (rss, (int(stat[11]) + int(stat[12])) / CLOCK_TICKS, command)
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return found


# Which process of a run a command line is, for the CPU breakdown (first match wins).
PROCESS_KINDS = (("ShardActor", "shard_actor"), ("GeneratorActor", "generator_actor"), ("--worker", "driver"),
                 ("raylet", "raylet"), ("gcs_server", "gcs"), ("dashboard", "dashboard"), ("ray::", "ray_worker"))


def process_kind(command: str) -> str:
    return next((kind for needle, kind in PROCESS_KINDS if needle in command), "other")


def pipeline_run(args: argparse.Namespace, teachers: list[str], samples: int, out: Path, **extra: object) -> dict:
    """One generate_set in a fresh process group; its result plus peak RSS of the whole group and
    the CPU seconds of its processes by kind (sampled every 0.2 s: what the run itself consumed,
    which a machine's load changes less than the wall clock)."""
    job = {"samples": samples, "teachers": teachers, "out": str(out), "per_shard": args.per_shard,
           "batch_size": args.batch_size, **extra}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    peak, cpu = [0], {}

    def sample() -> None:
        while proc.poll() is None:
            processes = session_processes(proc.pid)
            peak[0] = max(peak[0], sum(rss for rss, _, _ in processes.values()))
            cpu.update({pid: (seconds, process_kind(command)) for pid, (_, seconds, command) in processes.items()})
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"generate_set for {samples} samples failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    by_kind: dict[str, float] = {}
    for seconds, kind in cpu.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    return {**result, "peak_rss_session_mb": peak[0] / 2**20, "cpu_s_session": sum(by_kind.values()),
            "cpu_s_by_kind": {kind: round(seconds, 2) for kind, seconds in sorted(by_kind.items())}}


def worker(job: dict) -> None:
    """Runs inside the measured process: one set, then its result and the driver's peak RSS.
    ``job`` may carry the set, teacher stage and generator stage as JSON (the gan runs) and the
    source (the large runs)."""
    from core.config import GeneratorStageConfig, SetConfig, SourceConfig, TeacherStageConfig
    from pipeline.generate.driver import generate_set

    set_cfg = SetConfig.model_validate_json(job["set"]) if "set" in job else set_config(job["samples"],
                                                                                         job["per_shard"])
    stage = TeacherStageConfig.model_validate_json(job["stage"]) if "stage" in job else stage_config(job["batch_size"])
    generator_stage = GeneratorStageConfig.model_validate_json(job.get("generator_stage", "{}"))
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    source = SourceConfig.model_validate_json(job["source"]) if "source" in job else None
    cfg = bench_config(set_cfg, job["teachers"], stage, generator_stage, source)
    if job.get("generator_only"):
        from gan import generator_stage_run

        result = generator_stage_run(cfg, job["teachers"], job["out"])
    else:
        result = generate_set(cfg, "bench", job["out"], job["teachers"], progress)
    result["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="N (the large run makes 10·N)")
    parser.add_argument("--per-shard", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--gan", action="store_true", help="measure XCL-GAN generation (see the docstring)")
    parser.add_argument("--gen-batch", type=int, default=128, help="--gan: rows of every generator pass")
    parser.add_argument("--large", action="store_true", help="measure decode + crop of large JPEGs (bench/large.py)")
    parser.add_argument("--images", type=int, default=500, help="--large: N source images (and a 10·N source)")
    parser.add_argument("--size", type=int, default=64, help="--large: the image contract's size")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.gan:
        from gan import gan_main

        return gan_main(args, sys.modules[__name__])
    if args.large:
        from large import large_main

        return large_main(args, sys.modules[__name__])

    import shutil

    from core.sources import load_source

    shutil.rmtree(args.out, ignore_errors=True)
    source = load_source(source_config(), "train")
    height, width, channels = source.shape
    teachers = build_teachers(args.out, args.members, args.depth, args.width, channels, height)
    print(f"source {source.name}: {len(source)} images {height}x{width}x{channels}; teachers "
          f"{args.members} x resnet_cifar depth {args.depth} width {args.width}; 1 teacher thread")
    # The machine is shared: bare is measured before and after the pipeline runs, and the
    # pipeline is compared with the faster of the two (the conservative ratio).
    before, count = bare_rate(args, teachers, 10 * args.samples)
    small = pipeline_run(args, teachers, args.samples, args.out / "set-n")
    large = pipeline_run(args, teachers, 10 * args.samples, args.out / "set-10n")
    after, _ = bare_rate(args, teachers, 10 * args.samples)
    bare = max(before, after)
    figures = {
        "samples_n": args.samples,
        "bare_samples_per_s": round(bare, 1),
        "bare_samples_per_s_before": round(before, 1), "bare_samples_per_s_after": round(after, 1),
        "pipeline_samples_per_s_n": small["samples_per_s"],
        "pipeline_samples_per_s_10n": large["samples_per_s"],
        "pipeline_vs_bare": round(large["samples_per_s"] / bare, 3),
        "pipeline_steady_samples_per_s_10n": large["steady_samples_per_s"],
        "pipeline_vs_bare_steady": round(large["steady_samples_per_s"] / bare, 3),
        "first_shard_s_10n": large["first_shard_s"],
        "peak_rss_mb_n": round(small["peak_rss_session_mb"], 1),
        "peak_rss_mb_10n": round(large["peak_rss_session_mb"], 1),
        "rss_ratio_10x": round(large["peak_rss_session_mb"] / small["peak_rss_session_mb"], 3),
        "driver_peak_rss_mb_n": round(small["driver_peak_rss_mb"], 1),
        "driver_peak_rss_mb_10n": round(large["driver_peak_rss_mb"], 1),
        "teacher_members": args.members, "teacher_depth": args.depth, "teacher_width": args.width,
    }
    print(f"bare ensemble forward: {before:.0f} samples/s before, {after:.0f} after the pipeline runs "
          f"({count} images); compared with {bare:.0f}")
    print(f"pipeline: {small['samples_per_s']:.0f} samples/s at N={args.samples}, "
          f"{large['samples_per_s']:.0f} samples/s at 10N → {figures['pipeline_vs_bare']:.3f} of bare "
          f"(start-up to the first shard {large['first_shard_s']:.1f} s included; after it "
          f"{large['steady_samples_per_s']:.0f} samples/s → {figures['pipeline_vs_bare_steady']:.3f} of bare)")
    print(f"peak RSS (run + its Ray): {figures['peak_rss_mb_n']:.0f} MB at N, {figures['peak_rss_mb_10n']:.0f} MB "
          f"at 10N → ratio {figures['rss_ratio_10x']:.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
