"""Sampled-class vs top-k vs dense targets on the 100-class digit pairs of ``bench/topk_kl.py``:
bytes per sample, KL(full ‖ what a reader decodes), and the error of the KD gradient a student
gets from each, split into bias (what averaging never removes) and noise (what it does).

The job is topk_kl.py's (same source, teachers, 4096 samples per set): XCL-Mix and real-image
views sets with dense, top-10 and sampled-10 targets (τ = 4, the default kd.temperature; and an
XCL-Mix set drawn at τ = 1). ``transferset inspect --json`` gives bytes and KL; the gradient is
measured here on 1024 stored samples per set against the teachers' full p̄ (re-run on the stored
images), for two students: ``uniform`` (z = 0, a student at initialisation) and ``near``
(z = log p̄ / 2: the teacher's ranking, under-confident). Per sample, at the set's temperature τ,
the dense gradient is ``τ·(s − p^τ)``; a reader's top-k or float16 target gives
``τ·(s − p̂^τ)`` (all bias); a sampled target gives ``τ·(Σw·s − w)``, whose bias and noise are
estimated from ``--redraws`` fresh draws per sample (the stored draw is one of them in law).

    RAY_AUTH_MODE=disabled .venv/bin/python bench/sampled_targets.py [--steps 1500] [--redraws 64]

The last line is JSON: per set, bytes, KL and the relative gradient bias and noise per student.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml
from common import ROOT  # also puts the repo on sys.path
from topk_kl import cli, digit_pairs, pairs_job

from core.records import format as fmt
from core.records import sampled_target as st
from core.sets import index as sx
from core.tasks import decode_fields
from stages.teachers import Ensemble

K = 10
# Set name → (sampler, targets).
SETS: dict[str, tuple[dict, dict]] = {
    "mix_dense": ({"kind": "mix"}, {}),
    "mix_topk": ({"kind": "mix"}, {"kind": "topk", "k": K}),
    "mix_sampled": ({"kind": "mix"}, {"kind": "sampled", "k": K, "temperature": 4.0}),
    "mix_sampled_t1": ({"kind": "mix"}, {"kind": "sampled", "k": K, "temperature": 1.0}),
    "views_topk": ({"kind": "views", "views": 2}, {"kind": "topk", "k": K}),
    "views_sampled": ({"kind": "views", "views": 2}, {"kind": "sampled", "k": K, "temperature": 4.0}),
}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def stored(set_dir: Path, limit: int) -> list[dict]:
    """The first ``limit`` records of the set, decoded as a reader decodes them."""
    found: list[dict] = []
    for url in sx.shard_urls(str(set_dir), sx.read_index(str(set_dir))):
        for _, fields in fmt.iter_tar(url):
            found.append(decode_fields(fields))
            if len(found) == limit:
                return found
    return found


def gradient_error(full: np.ndarray, records: list[dict], targets: dict, tau: float, student: np.ndarray,
                   redraws: int) -> dict[str, float]:
    """Relative bias and noise of the per-sample KD gradient w.r.t. the logits, RMS over samples:
    ``sqrt(mean ‖E[g] − g_dense‖²) / sqrt(mean ‖g_dense‖²)`` and the same for ``g − E[g]``."""
    s = softmax(student / tau)
    dense = tau * (s - softmax(full / tau))
    if targets.get("kind") == "sampled":
        draws = []
        for n in range(len(full)):  # fresh draws from the seeds of other (set seed, shard, index) triples
            weights = np.stack([st.dense_weights(st.sample_target(full[n], K, tau, 0.0, st.target_rng(1, n, r)))
                                for r in range(redraws)]).astype(np.float64)
            draws.append(tau * (weights.sum(1, keepdims=True) * s[n] - weights))
        grads = np.stack(draws)  # (N, redraws, C)
        mean = grads.mean(1)
        # The mean of R draws still holds noise/R; its expected square is subtracted from the bias.
        noise2 = ((grads - mean[:, None]) ** 2).sum(-1).mean() * redraws / (redraws - 1)
        bias2 = max(((mean - dense) ** 2).sum(-1).mean() - noise2 / redraws, 0.0)
    else:
        decoded = np.stack([r["logp"] for r in records]).astype(np.float64)
        bias2, noise2 = ((tau * (s - softmax(decoded / tau)) - dense) ** 2).sum(-1).mean(), 0.0
    scale = np.sqrt((dense ** 2).sum(-1).mean())
    return {"bias": float(np.sqrt(bias2) / scale), "noise": float(np.sqrt(noise2) / scale)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--measured", type=int, default=1024, help="stored samples the gradient is measured on")
    parser.add_argument("--redraws", type=int, default=64, help="fresh draws per sample for a sampled set's noise")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sampled")
    args = parser.parse_args()
    data = digit_pairs(args.out, 20000, 2000)
    config = {
        **pairs_job("sampled100", data, args.members, args.steps),
        "sets": {name: {"sampler": sampler, "samples": args.samples, "samples_per_shard": 1024,
                        **({"targets": targets} if targets else {})} for name, (sampler, targets) in SETS.items()},
    }
    path = args.out / "sampled100.yaml"
    path.write_text(yaml.safe_dump(config))
    run = args.out / "run"
    cli("train", str(path), "--teachers", "--out", str(run))
    cli("generate", str(path), "--out", str(run))
    members = [run / "teachers" / f"member-{m}" / "model.pt" for m in range(args.members)]
    ensemble = Ensemble(members, 100, device="cpu")
    results = {}
    for name, (_, targets) in SETS.items():
        stats = json.loads(cli("inspect", str(run / "sets" / name), "--json", "--kl-samples", str(args.measured)))
        records = stored(run / "sets" / name, args.measured)
        full = ensemble.predict(np.stack([r["image"] for r in records])).logp.astype(np.float64)
        tau = float(targets.get("temperature", 4.0))
        students = {"uniform": np.zeros_like(full), "near": full / 2}
        results[name] = {
            "bytes": stats["target_bytes_per_sample"], "npy_bytes": stats["target_npy_bytes_per_sample"],
            "entropy_mean": stats["entropy"]["mean"], "kl_mean": stats["target_kl_mean"], "tau": tau,
            "distinct_classes": stats.get("sampled_classes_mean"),
            **{f"grad_{who}": gradient_error(full, records, targets, tau, z, args.redraws)
               for who, z in students.items()},
        }
        r = results[name]
        print(f"{name}: {r['bytes']} B, KL(full ‖ decoded) {r['kl_mean']:.3g} nats, gradient at τ={tau:g}: "
              + "; ".join(f"{who} bias {r[f'grad_{who}']['bias']:.3g} noise {r[f'grad_{who}']['noise']:.3g}"
                          for who in students))
    print(json.dumps({"k": K, "num_classes": 100, "teacher_steps": args.steps, "members": args.members,
                      "measured": args.measured, "redraws": args.redraws, "sets": results}))


if __name__ == "__main__":
    main()
