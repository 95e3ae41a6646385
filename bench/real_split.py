"""The real split from disk: the trainer's memory at 10× the images, and its ERM steps/s against a
plain torchvision DataLoader, all figures measured in one run (the machine is shared).

    python bench/real_split.py [--images N] [--steps S] [--warmup S0] [--rounds R] [--workers W]
                               [--batch B] [--loader-batches L] [--workdir DIR] [--parts rss,speed]

Data: ImageFolders of JPEGs of 200–400 px a side (bench/large.py's ``large_folder``: cifar10-mini's
training images upscaled to a seeded random size per image, quality 90; image ``i`` is a pure
function of ``i``), one with N and one with 10·N training images (the first N shared) and the same
test split. The source has ``image: {size: 64, views: random_resized_crop}``; the student is
``resnet_cifar`` depth 8 width 8 at 64×64, ERM, the trainer's defaults otherwise (``num_workers``
W = 1, so one torch thread on 2 cores; channels-last).

1. ``rss_ratio_10x``: ``student.train.train_model`` for S steps on the N and on the 10·N folder,
   each in a fresh subprocess (its own session). Peak of the summed VmRSS of the subprocess and its
   DataLoader workers, sampled every 0.1 s from this process; also the summed PSS (pages shared
   across the fork counted once) and each process's own peak from ``getrusage`` in the subprocess
   (``RUSAGE_SELF``: the trainer; ``RUSAGE_CHILDREN``: its largest reaped worker). Goal ≤ 1.1.
2. ``trainer_vs_torchvision``: steps/s of (i) the trainer's ERM step (``student.build.build_run``,
   then ``begin_step`` + ``student.train.step_once``) ÷ steps/s of (ii) a plain loop of
   ``torchvision.datasets.ImageFolder`` + ``RandomResizedCrop`` + flip + ``PILToTensor`` in
   ``DataLoader(batch_size=B, shuffle=True, num_workers=W, drop_last=True)`` with the same model,
   optimizer, normalisation, channels-last and torch threads (bench/real_speed.py says exactly
   what is timed), on the 10·N folder (an epoch of the plain loader outlasts a round's steps, so
   neither loop restarts its workers while timed). Per round, each mode in turn (the order
   alternates by round) starts its loader afresh, trains ``--warmup`` steps, waits until its
   workers are idle (queues full), times S steps, then fetches ``--loader-batches`` batches
   without training (what the loader alone delivers). The ratio is the median of the per-round
   ratios (quartiles too). Goal ≥ 0.95.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import cifar10_mini  # noqa: F401  (also puts the repo on sys.path)
from large import SIDES, Pictures, large_folder
from real_speed import MODEL, SIZE, source_cfg, speed_part, train_cfg

TESTS, SAMPLE_S = 500, 0.1


# ---------------------------------------------------------------- data


def folders(workdir: Path, images: int, both: bool) -> dict[str, Path]:
    """The N and (if ``both``) 10·N ImageFolders, made once per work dir (a finished one is reused)."""
    pictures = Pictures.of(cifar10_mini())
    out = {"n": workdir / f"large-{images}", "10n": workdir / f"large-{10 * images}"}
    for name, count in (("n", images), ("10n", 10 * images))[:2 if both else 1]:
        done = out[name] / "done"
        if not done.is_file():
            began = time.perf_counter()
            large_folder(out[name], count, pictures, like=out["n"] if name == "10n" else None, tests=TESTS)
            done.write_text(str(count))
            print(f"made {out[name]} ({count} + {TESTS} JPEGs) in {time.perf_counter() - began:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------- 1. peak memory


def child(job: dict[str, Any]) -> None:
    """Runs in the measured subprocess: one ERM run of ``train_model``, then its figures."""
    from core.config import ModelConfig
    from core.sources import load_source
    from student.train import TrainRequest, train_model

    args = argparse.Namespace(**job["args"])
    cfg = source_cfg(Path(job["folder"]))
    began = time.perf_counter()
    request = TrainRequest(name="erm", model=ModelConfig(**MODEL), train=train_cfg(args, args.steps),
                           out_dir=Path(job["out"]), seed=0)
    result = train_model(request, load_source(cfg, "train"), load_source(cfg, "test"), resume=False)
    steps_s = args.steps * args.batch / result["samples_per_s"]
    print(json.dumps({"seconds": time.perf_counter() - began, "steps_s": steps_s, "accuracy": result.get("accuracy"),
                      "trainer_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}), flush=True)


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in bytes."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
               if line.startswith("Pss:"))
    return rss * 1024, pss * 1024


def session_memory(sid: int) -> dict[int, tuple[int, int]]:
    """``pid → (VmRSS, Pss)`` of every process in session ``sid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    found[int(entry.name)] = memory_of(int(entry.name))
            except (OSError, ValueError, IndexError, StopIteration):
                continue
    return found


def rss_run(args: argparse.Namespace, folder: Path, out: Path) -> dict[str, Any]:
    """``child`` in a fresh session; its figures plus the sampled peaks of the session's sums."""
    job = {"args": vars(args) | {"workdir": str(args.workdir)}, "folder": str(folder), "out": str(out)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    peak = {"rss": 0, "pss": 0, "processes": 0}

    def sample() -> None:
        while proc.poll() is None:
            memory = session_memory(proc.pid)
            peak["rss"] = max(peak["rss"], sum(rss for rss, _ in memory.values()))
            peak["pss"] = max(peak["pss"], sum(pss for _, pss in memory.values()))
            peak["processes"] = max(peak["processes"], len(memory))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"the training subprocess on {folder} failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_rss_mb": peak["rss"] / 2**20, "peak_pss_mb": peak["pss"] / 2**20,
            "processes": peak["processes"]}


def memory_part(args: argparse.Namespace, found: dict[str, Path]) -> dict[str, Any]:
    runs = {name: rss_run(args, found[name], args.workdir / f"run-{name}") for name in ("n", "10n")}
    figures: dict[str, Any] = {}
    for name, run in runs.items():
        print(f"train_model, {name:>3} images: peak RSS {run['peak_rss_mb']:.0f} MB (PSS {run['peak_pss_mb']:.0f} MB; "
              f"trainer {run['trainer_peak_mb']:.0f} MB, largest worker {run['worker_peak_mb']:.0f} MB; "
              f"{run['processes']} processes); {run['seconds']:.1f} s in all, {run['steps_s']:.1f} s in steps",
              flush=True)
        for key in ("peak_rss_mb", "peak_pss_mb", "trainer_peak_mb", "worker_peak_mb", "seconds", "steps_s"):
            figures[f"{key}_{name}"] = round(run[key], 1)
    for key, name in (("peak_rss_mb", "rss"), ("peak_pss_mb", "pss"), ("trainer_peak_mb", "trainer"),
                      ("worker_peak_mb", "worker")):
        figures[f"{name}_ratio_10x"] = round(runs["10n"][key] / runs["n"][key], 3)
    print(f"peak RSS 10·N / N: {figures['rss_ratio_10x']:.3f} (PSS {figures['pss_ratio_10x']:.3f}, trainer "
          f"{figures['trainer_ratio_10x']:.3f}, worker {figures['worker_ratio_10x']:.3f}); goal ≤ 1.1", flush=True)
    return figures


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="N (the memory part also trains on 10·N)")
    parser.add_argument("--steps", type=int, default=30, help="steps of each memory run and of each timed window")
    parser.add_argument("--warmup", type=int, default=10, help="steps before each timed window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loader-batches", type=int, default=20,
                        help="batches of each loader alone per round (0: none)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers W (the trainer's default: 1)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workdir", type=Path, help="keep the folders here (a rerun reuses them)")
    parser.add_argument("--parts", default="rss,speed", help="rss, speed or both")
    parser.add_argument("--speed-on", choices=("n", "10n"), default="10n",
                        help="the folder of the speed part: 10n (default) gives the plain loop one epoch longer "
                             "than warm-up + window, so neither loop restarts its workers inside a round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-real-split-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    found = folders(args.workdir, args.images, "rss" in parts or args.speed_on == "10n")
    print(f"folders: {args.images} and {10 * args.images} training JPEGs (sides {SIDES[0]}-{SIDES[1]} px), {TESTS} "
          f"test ones; contract {SIZE}x{SIZE} random_resized_crop; {MODEL}; batch {args.batch}, W = {args.workers}; "
          f"load {os.getloadavg()}", flush=True)
    figures: dict[str, Any] = {"images_n": args.images, "images_10n": 10 * args.images, "steps": args.steps,
                               "warmup": args.warmup, "rounds": args.rounds, "workers": args.workers,
                               "batch_size": args.batch, "size": SIZE, "load_average_start": list(os.getloadavg())}
    if "rss" in parts:
        figures.update(memory_part(args, found))
    if "speed" in parts:
        figures.update(speed_part(args, found[args.speed_on]))
        figures["speed_images"] = args.images * (10 if args.speed_on == "10n" else 1)
    figures["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
