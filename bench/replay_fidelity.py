"""Do a replay set's stored targets match what the ensemble says of the pixels the student gets?

    python bench/replay_fidelity.py OUT/views_study.yaml SET [SET ...] [--out OUT] [--batches 40]

For each set, reads ``--batches`` batches of 128 through the trainer's own stream (the replay
rebuild of each sample's pixels from the source image and its stored view), runs the job's
teacher ensemble on those pixels (``student.online.ensemble_log_probs``, the targets kd_online
trains on) and compares them with the stored targets (float16 log p̄): mean and max
KL(recomputed ‖ stored) at τ = 1 and τ = 4, max |Δ log p̄| over the classes where p̄ > 1e-4,
top-1 agreement. A mismatch here (a view rebuilt differently from the one labelled) would make
offline KD train on wrong targets; float16 rounding alone gives KLs of ~1e-7.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from common import ROOT  # noqa: F401  (puts the repo on sys.path)

from core.config import parse_config  # noqa: E402


def kl(logp: torch.Tensor, logq: torch.Tensor, tau: float) -> torch.Tensor:
    p, q = torch.log_softmax(logp / tau, 1), torch.log_softmax(logq / tau, 1)
    return (p.exp() * (p - q)).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the study's config (OUT/views_study.yaml)")
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--out", type=Path, help="the job's output directory (default: the config's folder)")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    out = args.out or args.config.parent
    cfg = parse_config(yaml.safe_load(args.config.read_text()), origin=str(args.config))

    from pipeline.train.job import load_splits
    from pipeline.train.members import teacher_paths
    from pipeline.train.runs import set_dir
    from student.build import online_teachers
    from student.online import ensemble_log_probs
    from student.stream import transfer_loader

    torch.set_num_threads(1)
    train, _ = load_splits(cfg)
    teachers = online_teachers("fidelity", teacher_paths(cfg, out), train)
    for model, _ in teachers:
        model.eval()
    figures = {}
    for name in args.sets:
        loader = transfer_loader([(str(set_dir(out, name)), 1.0)], batch_size=128, seed=0, source=train)
        kls1, kls4, deltas, agree = [], [], [], []
        for b, batch in zip(range(args.batches), loader, strict=False):
            stored = batch["target"].float()
            fresh = ensemble_log_probs(teachers, batch["image"]).float()
            kls1.append(kl(fresh, stored, 1.0))
            kls4.append(kl(fresh, stored, 4.0))
            mask = fresh > -9.2  # p̄ > 1e-4
            deltas.append(((fresh - stored).abs() * mask).amax(1))
            agree.append((fresh.argmax(1) == stored.argmax(1)).float())
            del b
        k1, k4, d, a = (torch.cat(v) for v in (kls1, kls4, deltas, agree))
        figures[name] = {"samples": len(a), "kl_tau1_mean": k1.mean().item(), "kl_tau1_max": k1.max().item(),
                         "kl_tau4_mean": k4.mean().item(), "max_abs_dlogp": d.max().item(),
                         "top1_agreement": a.mean().item()}
        print(name, json.dumps(figures[name]), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
