"""Generation from large images: the ``--large`` mode of bench/generate.py (run that script).

Source: an ImageFolder of JPEGs of a few hundred pixels, each side drawn in [200, 400]
(``large_folder``): cifar10-mini upscaled (bicubic, quality 90), or, where it is absent,
generated class-tinted smooth pictures. It is made twice under the bench's out dir, with N and
with 10·N images; image ``i`` is a pure function of ``i`` (the first N of both agree). The job has
``image: {size: 64, views: random_resized_crop}`` and one XCL-Mix set with augmentation of a fixed
number of samples, made once from each source: every sample opens two JPEGs, decodes them whole,
cuts a random-resized-crop box out of each, resizes it to 64×64 and mixes. Teachers: those of
bench/generate.py (seeded ``resnet_cifar``) at the contract's 64×64.

Figures (samples/s, all in one run):

* ``bare``: in this process, one shard at a time: ``make_shard`` (open, decode, crop, resize,
  mix; the source opened once first) then ``Ensemble.predict`` on its images, with the teacher
  stage's threads and batch size; the two parts are timed apart (where the time goes). Measured
  before and after the pipeline runs; the ratio uses the faster (the conservative ratio);
* ``pipeline``: ``generate_set`` in a fresh process on the N and on the 10·N source (Ray's own
  start-up excluded, the actor's included), with the peak resident memory of that process and
  every Ray process it started: ``rss_ratio_10x`` is the 10·N run's over the N run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

SIDES = (200, 400)  # every side of a source image, in pixels
QUALITY = 90


@dataclass(frozen=True)
class Pictures:
    """Where the large pictures come from: cifar10-mini's training files in a seeded order (any
    prefix mixes the classes), or nothing (generated pictures)."""

    files: list[Path]
    classes: list[str]
    labels: np.ndarray

    @classmethod
    def of(cls, root: Path | None) -> Pictures:
        if root is None:
            return cls([], [f"class{c}" for c in range(10)], np.zeros(0, np.int64))
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        files, labels = [], []
        for label, name in enumerate(classes):
            members = sorted((root / "train" / name).glob("*.jpg"))
            files += members
            labels += [label] * len(members)
        order = np.random.default_rng(0x1A26E).permutation(len(files))
        return cls([files[i] for i in order], classes, np.asarray(labels, np.int64)[order])

    @staticmethod
    def sides(index: int) -> tuple[int, int]:
        """(height, width) of picture ``index``."""
        height, width = np.random.default_rng([0x1A26E, index]).integers(SIDES[0], SIDES[1] + 1, 2)
        return int(height), int(width)

    def label(self, index: int) -> int:
        return int(self.labels[index % len(self.files)]) if self.files else index % len(self.classes)

    def picture(self, index: int) -> Any:
        """Picture ``index``, a PIL image of a few hundred pixels: a pure function of ``index``."""
        from PIL import Image

        height, width = self.sides(index)
        if self.files:
            with Image.open(self.files[index % len(self.files)]) as small:
                return small.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        coarse = np.random.default_rng([0xC0A25E, index]).integers(0, 160, (6, 6, 3)).astype(np.uint8)
        coarse[..., self.label(index) % 3] += 90
        return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


TEST_PICTURES = 10**9  # test pictures are numbered from here: never among the training ones


def large_folder(root: Path, count: int, pictures: Pictures, like: Path | None = None, tests: int = 20) -> Path:
    """``root/{train,test}/<class>/<index>.jpg``: ``count`` training pictures and ``tests`` test
    ones; files of ``like`` (an earlier folder of the same pictures) are linked, not made again,
    and files already there are kept."""
    for split, indices in (("train", range(count)), ("test", range(TEST_PICTURES, TEST_PICTURES + tests))):
        for index in indices:
            name = Path(split) / pictures.classes[pictures.label(index)] / f"{index:010d}.jpg"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            if (root / name).exists():
                continue  # a folder left half-made by an interrupted run
            if like is not None and (like / name).exists():
                os.link(like / name, root / name)
            else:
                pictures.picture(index).save(root / name, quality=QUALITY)
    return root


# ---------------------------------------------------------------- the job


def large_source(folder: Path, size: int) -> Any:
    from core.config import ImageConfig, SourceConfig

    return SourceConfig(kind="imagefolder", path=str(folder), image=ImageConfig(size=size, views="random_resized_crop"))


def mix_set(samples: int, per_shard: int) -> Any:
    from core.config import SetConfig, sampler_config

    return SetConfig(sampler=sampler_config(kind="mix", augment=True), samples=samples, samples_per_shard=per_shard)


def bare_rate(args: argparse.Namespace, bench: ModuleType, teachers: list[str], source: Any,
              out: Path) -> dict[str, float]:
    """Samples/s of decode + crop + the teachers in this process, one shard at a time; the wall
    seconds of each part and the CPU seconds of both; and, apart (not in the rate), the seconds
    of ``write_shard`` (PNG encoding + tar commit), which the pipeline does as well."""
    from core.sources import load_source_cached
    from pipeline.generate.plan import plan_set
    from stages.teachers import Ensemble
    from stages.writer import make_shard, write_shard

    stage = bench.stage_config(args.batch_size)
    cfg = bench.bench_config(mix_set(args.samples, args.per_shard), teachers, stage, source=source)
    spec = plan_set(cfg, "bench", out, teachers).spec
    load_source_cached(spec.source_cfg, "train")  # opened once, as the actor does before its calls
    ensemble = Ensemble(teachers, 10, device="cpu", threads=stage.torch_threads(), batch_size=stage.batch_size,
                        channels_last=stage.channels_last)
    ensemble.predict(make_shard(spec, 0)[0][: stage.batch_size])  # warm-up, as the actor's first shard would be
    making = labelling = cpu = writing = 0.0
    for shard in range(spec.shards):
        began, cpu_began = time.perf_counter(), time.process_time()
        images, drawn, labels = make_shard(spec, shard)
        made = time.perf_counter()
        output = ensemble.predict(images)
        labelled = time.perf_counter()
        cpu += time.process_time() - cpu_began
        write_shard(spec, shard, images, drawn, labels, output)
        making, labelling = making + made - began, labelling + labelled - made
        writing += time.perf_counter() - labelled
    return {"samples_per_s": spec.total / (making + labelling), "decode_crop_s": making, "teachers_s": labelling,
            "decode_crop_samples_per_s": spec.total / making, "teachers_samples_per_s": spec.total / labelling,
            "cpu_s": cpu, "write_s": writing, "samples": spec.total}


def actor_in_process(args: argparse.Namespace, bench: ModuleType, teachers: list[str], source: Any,
                     out: Path) -> dict[str, float]:
    """The pipeline's ``ShardActor`` without Ray: built in this process and called with as many
    shard calls at once as Ray gives it (``CALLS_PER_ACTOR`` threads): make, label, write. It
    separates what the actor's work costs from what Ray adds."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.generate.driver import CALLS_PER_ACTOR, ShardActor
    from pipeline.generate.plan import plan_set

    stage = bench.stage_config(args.batch_size)
    cfg = bench.bench_config(mix_set(args.samples, args.per_shard), teachers, stage, source=source)
    spec = plan_set(cfg, "bench", out, teachers).spec
    actor = ShardActor(spec)
    began, cpu_began = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(CALLS_PER_ACTOR) as pool:
        list(pool.map(lambda shard: actor({"shard": [shard], "count": [spec.planned(shard)]}), range(spec.shards)))
    seconds = time.perf_counter() - began
    return {"samples_per_s": spec.total / seconds, "cpu_s": time.process_time() - cpu_began}


# ---------------------------------------------------------------- the run


def large_main(args: argparse.Namespace, bench: ModuleType) -> None:
    # Ray lowers its workers' priority by 15 (worker_niceness): on a machine shared with other
    # jobs, an actor at a lower priority than the bare loop gets a smaller share of the cores.
    # At the lowest priority (19) Ray can lower it no further: everything here runs at one.
    os.nice(19 - os.nice(0))
    shutil.rmtree(args.out, ignore_errors=True)
    pictures = Pictures.of(bench.CIFAR_MINI)
    began = time.perf_counter()
    small_folder = large_folder(args.out / "large-n", args.images, pictures)
    big_folder = large_folder(args.out / "large-10n", 10 * args.images, pictures, like=small_folder)
    made_in = time.perf_counter() - began
    decoded_mb = sum(3 * np.prod(pictures.sides(i)) for i in range(10 * args.images)) / 2**20
    sources = {"n": large_source(small_folder, args.size), "10n": large_source(big_folder, args.size)}
    teachers = bench.build_teachers(args.out, args.members, args.depth, args.width, 3, args.size)
    origin = "cifar10-mini upscaled" if pictures.files else "generated"
    print(f"sources: {args.images} and {10 * args.images} JPEGs ({origin}, sides {SIDES[0]}-{SIDES[1]} px, "
          f"quality {QUALITY}; made in {made_in:.0f} s; the 10·N one decoded whole would be {decoded_mb:.0f} MB); "
          f"image contract {args.size}x{args.size} random_resized_crop; "
          f"mix set of {args.samples} samples in shards of {args.per_shard}; teachers {args.members} x resnet_cifar "
          f"depth {args.depth} width {args.width} at {args.size}x{args.size}; 1 teacher thread")
    set_json = mix_set(args.samples, args.per_shard).model_dump_json()

    def pipeline(name: str) -> dict[str, Any]:
        return bench.pipeline_run(args, teachers, args.samples, args.out / f"set-{name}", set=set_json,
                                  source=sources[name].model_dump_json())

    # The machine is shared: bare before and after the pipeline runs, the faster one compared.
    before = bare_rate(args, bench, teachers, sources["10n"], args.out / "bare-before")
    runs = {name: pipeline(name) for name in ("n", "10n")}
    in_process = actor_in_process(args, bench, teachers, sources["10n"], args.out / "actor-in-process")
    after = bare_rate(args, bench, teachers, sources["10n"], args.out / "bare-after")
    bare = max(before, after, key=lambda b: b["samples_per_s"])
    figures: dict[str, Any] = {
        "images_n": args.images, "images_10n": 10 * args.images, "samples": args.samples, "size": args.size,
        "decoded_mb_10n": round(float(decoded_mb), 1),
        "bare_samples_per_s": round(bare["samples_per_s"], 1),
        "bare_samples_per_s_before": round(before["samples_per_s"], 1),
        "bare_samples_per_s_after": round(after["samples_per_s"], 1),
        "bare_decode_crop_samples_per_s": round(bare["decode_crop_samples_per_s"], 1),
        "bare_teachers_samples_per_s": round(bare["teachers_samples_per_s"], 1),
        "bare_cpu_ms_per_sample": round(1000 * min(before["cpu_s"], after["cpu_s"]) / args.samples, 3),
        "write_ms_per_sample": round(1000 * min(before["write_s"], after["write_s"]) / args.samples, 3),
        "bare_with_write_samples_per_s": round(args.samples / (bare["decode_crop_s"] + bare["teachers_s"]
                                                               + bare["write_s"]), 1),
    }
    for name, run in runs.items():
        figures[f"pipeline_samples_per_s_{name}"] = run["samples_per_s"]
        figures[f"pipeline_steady_samples_per_s_{name}"] = run["steady_samples_per_s"]
        figures[f"first_shard_s_{name}"] = run["first_shard_s"]
        figures[f"peak_rss_mb_{name}"] = round(run["peak_rss_session_mb"], 1)
        figures[f"session_cpu_ms_per_sample_{name}"] = round(1000 * run["cpu_s_session"] / args.samples, 3)
        figures[f"cpu_s_by_process_{name}"] = run["cpu_s_by_kind"]
    figures["actor_cpu_ms_per_sample_10n"] = round(1000 * runs["10n"]["cpu_s_by_kind"].get("shard_actor", 0.0)
                                                   / args.samples, 3)
    figures["in_process_actor_samples_per_s"] = round(in_process["samples_per_s"], 1)
    figures["in_process_actor_vs_bare"] = round(in_process["samples_per_s"] / bare["samples_per_s"], 3)
    figures["in_process_actor_cpu_ms_per_sample"] = round(1000 * in_process["cpu_s"] / args.samples, 3)
    figures["pipeline_vs_bare"] = round(runs["10n"]["samples_per_s"] / bare["samples_per_s"], 3)
    figures["pipeline_vs_bare_with_write"] = round(runs["10n"]["samples_per_s"]
                                                   / figures["bare_with_write_samples_per_s"], 3)
    figures["pipeline_vs_bare_n"] = round(runs["n"]["samples_per_s"] / bare["samples_per_s"], 3)
    figures["pipeline_vs_bare_steady"] = round(runs["10n"]["steady_samples_per_s"] / bare["samples_per_s"], 3)
    figures["rss_ratio_10x"] = round(runs["10n"]["peak_rss_session_mb"] / runs["n"]["peak_rss_session_mb"], 3)
    figures["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(f"bare (decode + crop + teachers, one shard at a time): {before['samples_per_s']:.0f} / "
          f"{after['samples_per_s']:.0f} samples/s (before / after); of its time decode + crop "
          f"{bare['decode_crop_s']:.1f} s ({bare['decode_crop_samples_per_s']:.0f} samples/s), teachers "
          f"{bare['teachers_s']:.1f} s ({bare['teachers_samples_per_s']:.0f} samples/s); with the writing too "
          f"{figures['bare_with_write_samples_per_s']:.0f} samples/s")
    print(f"CPU per sample: bare {figures['bare_cpu_ms_per_sample']:.2f} ms (+ {figures['write_ms_per_sample']:.2f} ms "
          f"of PNG + tar writing, not in bare); the shard actor in this process, no Ray "
          f"{figures['in_process_actor_cpu_ms_per_sample']:.2f} ms ({in_process['samples_per_s']:.0f} samples/s, "
          f"{figures['in_process_actor_vs_bare']:.3f} of bare); on Ray: the actor "
          f"{figures['actor_cpu_ms_per_sample_10n']:.2f} ms, run + Ray "
          f"{figures['session_cpu_ms_per_sample_10n']:.2f} ms "
          f"(10·N source, start-up included; by process {runs['10n']['cpu_s_by_kind']} s)")
    for name, run in runs.items():
        print(f"pipeline, {name:>3} source: {run['samples_per_s']:.0f} samples/s whole run "
              f"({run['samples_per_s'] / bare['samples_per_s']:.3f} of bare), {run['steady_samples_per_s']:.0f} "
              f"after the first shard ({run['first_shard_s']:.1f} s); peak RSS {run['peak_rss_session_mb']:.0f} MB")
    print(f"peak RSS 10·N / N source images: {figures['rss_ratio_10x']:.3f}; load average now "
          f"{figures['load_average']}")
    print(json.dumps(figures))
