"""XCL-GAN generation figures: the ``--gan`` mode of bench/generate.py (run that script).

Generator: the 32×32 BigGAN of ENVIRONMENT.md (z_dim 32, channel width 16, 10 classes, an
attention layer; 732k parameters) with seeded random weights, saved as ``config.json`` +
``pytorch_model.bin`` and loaded from that directory as a user's would be (the cost does not
depend on the weights). Sampler: ``gan`` with mixed class vectors, truncation 0.4. Teachers and
source: those of bench/generate.py. One torch thread per actor and in-process measurement.

Figures (samples/s, all in one run):

* ``generator_bare``: ``GeneratorRunner.generate`` alone, in this process, one call per shard
  (before and after the pipeline runs; the faster is used);
* ``teacher_bare``: ``Ensemble.predict`` alone on the generated images, one call per shard;
* ``serial_ideal`` = 1 / (1/generator + 1/teacher): one thread doing both with no overhead;
* ``generator_stage``: the Ray generator stage alone (generator actor pool, no teachers, no
  writing), ``from_items → map_batches(GeneratorActor)``, in a fresh process;
* ``unfused`` / ``fused`` / ``fused_2_actors``: ``generate_set`` (generation + labelling +
  PNG encoding + commit) in a fresh process each: one generator actor feeding one shard actor;
  one shard actor holding both; two such actors. Each has a whole-run and a steady rate (after
  the first shard); Ray's own start-up is excluded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def biggan_32(directory: Path) -> Path:
    from pytorch_pretrained_biggan import BigGANConfig

    from stages.generators import fresh_biggan, save_biggan

    config = BigGANConfig(z_dim=32, channel_width=16, num_classes=10, attention_layer_position=4,
                          layers=[(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (False, 4, 2),
                                  (True, 2, 1)])
    return save_biggan(fresh_biggan(config, seed=0), directory)


def gan_set(weights: Path, samples: int, per_shard: int, gen_batch: int) -> Any:
    from core.config import SetConfig

    return SetConfig.model_validate({
        "sampler": {"kind": "gan", "generator": {"kind": "biggan", "weights": str(weights), "batch_size": gen_batch}},
        "samples": samples, "samples_per_shard": per_shard})


def generator_bare(set_cfg: Any, source_cfg: Any, samples: int, per_shard: int) -> tuple[float, Any]:
    """Samples/s of the generator alone (one call per shard, as an actor makes them) and the images."""
    import numpy as np

    from core.sources import load_source
    from stages.samplers import draw_shard
    from stages.samplers.generating import GeneratorRunner, resolve_gan_samplers

    source = load_source(source_cfg, "train")
    resolved = resolve_gan_samplers(set_cfg, source)
    runner = GeneratorRunner(resolved.sampler.generator, source, threads=1)
    shards = [[p for _, p in draw_shard(resolved, source, 0, s, samples)] for s in range(-(-samples // per_shard))]
    runner.generate(shards[0][: resolved.sampler.generator.batch_size])  # warm-up
    began = time.perf_counter()
    images = [runner.generate(params).numpy() for params in shards]
    return samples / (time.perf_counter() - began), np.concatenate(images)


def teacher_bare(images: Any, teachers: list[str], batch_size: int, per_shard: int) -> float:
    from stages.teachers import Ensemble

    ensemble = Ensemble(teachers, 10, device="cpu", threads=1, batch_size=batch_size)
    ensemble.predict(images[:batch_size])
    began = time.perf_counter()
    for start in range(0, len(images), per_shard):
        ensemble.predict(images[start:start + per_shard])
    return len(images) / (time.perf_counter() - began)


def generator_stage_run(cfg: Any, teachers: list[str], out: str) -> dict[str, Any]:
    """The Ray generator stage alone over every shard of set ``bench`` of the job ``cfg`` (runs in
    the worker process)."""
    from pipeline.generate import driver
    from pipeline.generate.plan import plan_set

    plan = plan_set(cfg, "bench", out, teachers)
    spec = plan.spec
    driver.ensure_ray(cfg.ray)
    driver._configure_data_context(cfg.ray)
    ds = driver.generator_stage(driver.shard_specs(plan, list(range(spec.shards))), spec)
    began, first_at, first_samples, samples = time.perf_counter(), 0.0, 0, 0
    for row in ds.iter_rows():
        samples += len(row["generated"])
        if not first_at:
            first_at, first_samples = time.perf_counter() - began, samples
    seconds = time.perf_counter() - began
    return {"samples": samples, "samples_per_s": round(samples / seconds, 1), "first_shard_s": round(first_at, 3),
            "steady_samples_per_s": round((samples - first_samples) / max(seconds - first_at, 1e-9), 1)}


def gan_main(args: argparse.Namespace, bench: ModuleType) -> None:
    import shutil

    from core.config import GeneratorStageConfig
    from core.sources import load_source

    shutil.rmtree(args.out, ignore_errors=True)
    source = load_source(bench.source_config(), "train")
    height, width, channels = source.shape
    teachers = bench.build_teachers(args.out, args.members, args.depth, args.width, channels, height)
    set_cfg = gan_set(biggan_32(args.out / "biggan"), args.samples, args.per_shard, args.gen_batch)
    print(f"source {source.name} {height}x{width}x{channels}; BigGAN 32x32 (732k parameters), generator batch "
          f"{args.gen_batch}; teachers {args.members} x resnet_cifar depth {args.depth} width {args.width}; "
          f"{args.samples} samples in shards of {args.per_shard}; 1 torch thread per actor")
    gen_before, images = generator_bare(set_cfg, bench.source_config(), args.samples, args.per_shard)
    teacher = teacher_bare(images, teachers, args.batch_size, args.per_shard)

    def run(name: str, *, fuse: bool = False, actors: int = 1, generator_only: bool = False) -> dict[str, Any]:
        stage = bench.stage_config(args.batch_size).model_copy(update={"actors": actors})
        return bench.pipeline_run(args, teachers, args.samples, args.out / name, set=set_cfg.model_dump_json(),
                                  stage=stage.model_dump_json(), generator_only=generator_only,
                                  generator_stage=GeneratorStageConfig(fuse=fuse).model_dump_json())

    runs = {"generator_stage": run("generator-stage", generator_only=True), "unfused": run("unfused"),
            "fused": run("fused", fuse=True), "fused_2_actors": run("fused-2", fuse=True, actors=2)}
    gen_after, _ = generator_bare(set_cfg, bench.source_config(), args.samples, args.per_shard)
    generator = max(gen_before, gen_after)
    serial = 1.0 / (1.0 / generator + 1.0 / teacher)
    figures: dict[str, Any] = {
        "samples": args.samples, "generator_batch": args.gen_batch,
        "generator_bare_samples_per_s": round(generator, 1),
        "generator_bare_before": round(gen_before, 1), "generator_bare_after": round(gen_after, 1),
        "teacher_bare_samples_per_s": round(teacher, 1), "serial_ideal_samples_per_s": round(serial, 1),
    }
    for name, result in runs.items():
        figures[f"{name}_samples_per_s"] = result["samples_per_s"]
        figures[f"{name}_steady_samples_per_s"] = result["steady_samples_per_s"]
        figures[f"{name}_first_shard_s"] = result["first_shard_s"]
        figures[f"{name}_peak_rss_mb"] = round(result["peak_rss_session_mb"], 1)
    figures["fused_vs_unfused"] = round(runs["fused"]["samples_per_s"] / runs["unfused"]["samples_per_s"], 3)
    figures["fused_2_actors_vs_unfused"] = round(runs["fused_2_actors"]["samples_per_s"]
                                                 / runs["unfused"]["samples_per_s"], 3)
    figures["generator_stage_vs_bare_steady"] = round(runs["generator_stage"]["steady_samples_per_s"] / generator, 3)
    print(f"generator alone: {gen_before:.0f} / {gen_after:.0f} samples/s (before / after); teachers alone "
          f"{teacher:.0f}; one thread doing both, no overhead: {serial:.0f}")
    for name, result in runs.items():
        print(f"{name:>16}: {result['samples_per_s']:.0f} samples/s whole run, "
              f"{result['steady_samples_per_s']:.0f} after the first shard ({result['first_shard_s']:.1f} s), "
              f"peak RSS {result['peak_rss_session_mb']:.0f} MB")
    print(json.dumps(figures))
