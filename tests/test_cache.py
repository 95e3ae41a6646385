"""The reusable set cache: ``out: auto`` sets are found by fingerprint from any job, grow by
shards only, refuse a foreign fingerprint, and live at fsspec URLs too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import plan_in, snapshot

from core.config import SetConfig, SourceConfig, parse_config, sampler_config
from core.errors import UserError
from core.records import format as fmt
from core.samplers import apply_params
from core.sets import index as sx
from core.sources import load_source
from core.tasks import decode_fields
from pipeline.chain import generate_sets
from pipeline.generate.plan import SetProgress, finish, plan_set, resume, start
from pipeline.inspect import inspect_set
from pipeline.inspect.verify import verify_set
from pipeline.train.runs import locate_set
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "mixed": {"samplers": [{"kind": "mixup", "alpha": 0.4}, {"kind": "cutmix", "share": 1},
                           {"kind": "autoaugment", "policy": "randaugment"}],
              "samples": 192, "samples_per_shard": 64, "targets": {"kind": "topk", "k": 3}, "out": "auto"},
    "uncertain": {"sampler": {"kind": "mix"}, "samples": 128, "samples_per_shard": 64,
                  "select": {"by": "entropy", "keep": 0.5}, "out": "auto"},
}


def job(name: str, student_width: int, teachers: list[Path], cache: Path, **set_updates) -> dict:
    sets = {k: {**v, **set_updates.get(k, {})} for k, v in SETS.items()}
    return {
        "name": name, "seed": 0, "source": {"kind": "digits"}, "cache_root": str(cache),
        "teachers": {"model": {"arch": "tiny_cnn"}, "members": len(teachers), "train": {"steps": 1},
                     "checkpoints": [str(p) for p in teachers]},
        "teacher_stage": {"batch_size": 128}, "ray": {"num_cpus": 2}, "sets": sets,
        "students": {"s": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": student_width}},
                           "objective": "kd", "sets": {"mixed": 1.0}, "train": {"steps": 5}}},
    }


@pytest.fixture(scope="module")
def cached(ray_session, teachers, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cache")
    cfg = parse_config(job("first", 4, teachers, root / "cache"))
    results = generate_sets(cfg, root / "first", teachers, lambda _: None)
    return {"root": root, "results": results, "cfg": cfg}


def test_sets_land_in_the_cache_by_fingerprint(cached) -> None:
    for name, result in cached["results"].items():
        index = sx.read_index(result["set_dir"])
        assert Path(result["set_dir"]).parent == cached["root"] / "cache"
        assert Path(result["set_dir"]).name == f"{name}-{index.fingerprint[:12]}"
        assert result["teacher_forward_samples"] == (256 if name == "uncertain" else 192)
        assert verify_set(result["set_dir"]) == []
    assert locate_set(cached["cfg"], cached["root"] / "first", "mixed") == cached["results"]["mixed"]["set_dir"]


def test_mixed_set_replays_and_is_labelled_on_stored_pixels(cached, teachers) -> None:
    set_dir = cached["results"]["mixed"]["set_dir"]
    source = load_source(SourceConfig(kind="digits"), "train")
    records = [decode_fields(f) for url in sx.shard_urls(set_dir) for _, f in fmt.iter_tar(url)]
    assert {r["meta"]["sampler"] for r in records} == {"mixup", "cutmix", "autoaugment"}
    for record in records:
        meta = record["meta"]
        np.testing.assert_array_equal(apply_params(meta["sampler"], meta["params"], source), record["image"])
    stats = inspect_set(set_dir)
    assert stats["per_sampler"] == {"autoaugment": 64, "cutmix": 64, "mixup": 64}  # 22+21+21 per shard, rotating
    assert stats["target_bytes_per_sample"] == 15 and stats["target_kl_source"] == "teachers"  # 3·2 + 3 + 2 + 4
    augmented = [r for r in records if r["meta"]["sampler"] == "autoaugment"]
    full = Ensemble(teachers, 10, device="cpu").predict(np.stack([r["image"] for r in augmented]))
    kl = fmt.kl_divergence(full.logp, np.stack([r["logp"] for r in augmented]))
    np.testing.assert_allclose(kl, [r["meta"]["target_kl"] for r in augmented], rtol=1e-2, atol=1e-6)


def test_selected_set_is_more_uncertain_than_plain_draws(cached) -> None:
    stats = inspect_set(cached["results"]["uncertain"]["set_dir"])
    first = sx.read_manifest(cached["results"]["uncertain"]["set_dir"]).column("params").to_pylist()
    assert stats["samples"] == 128 and len(first) == 128
    assert stats["entropy"]["mean"] > 0 and stats["entropy_by_lambda"][0]["lam_low"] == 0.0


@pytest.mark.e2e
def test_another_job_reuses_every_set_without_teacher_work(cached, teachers, tmp_path) -> None:
    """A config that differs in name and student only: the CLI reports 0 forward passes."""
    before = snapshot(cached["root"] / "cache")
    config = tmp_path / "second.yaml"
    config.write_text(yaml.safe_dump(job("second", 8, teachers, cached["root"] / "cache")))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", str(config), "--out",
                             str(tmp_path / "second")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["set"]: (r["shards_made"], r["teacher_forward_samples"]) for r in rows} == \
        {"mixed": (0, 0), "uncertain": (0, 0)}
    assert "0 teacher forward passes" in result.stderr
    assert snapshot(cached["root"] / "cache") == before


def test_more_samples_add_only_new_shards(cached, teachers, tmp_path) -> None:
    cache = tmp_path / "cache"
    original = Path(cached["results"]["mixed"]["set_dir"])
    import shutil

    shutil.copytree(original, cache / original.name)
    cfg = parse_config(job("bigger", 4, teachers, cache, mixed={"samples": 384}))
    result = generate_sets(cfg, tmp_path / "bigger", teachers, lambda _: None, names=["mixed"])["mixed"]
    assert result["set_dir"] == str(cache / original.name)
    assert (result["shards_made"], result["shards_total"], result["teacher_forward_samples"]) == (3, 6, 192)
    grown, old = snapshot(cache / original.name), snapshot(original)
    for shard in range(3):
        name = f"shards/{sx.shard_name(shard)}"
        assert grown[name] == old[name]
    assert verify_set(result["set_dir"]) == []


def test_mismatching_fingerprint_is_refused(cached, teachers) -> None:
    holder = cached["results"]["mixed"]["set_dir"]
    before = snapshot(Path(holder))
    cfg = parse_config(job("other", 4, teachers, cached["root"] / "cache", uncertain={"out": holder}))
    with pytest.raises(UserError, match="fingerprint .* choose another --out"):
        plan_set(cfg, "uncertain", "unused", teachers)
    assert snapshot(Path(holder)) == before


def test_file_url_output_through_ray(ray_session, teachers, tmp_path) -> None:
    cfg = parse_config(job("url", 4, teachers, tmp_path / "cache",
                           mixed={"out": f"file://{tmp_path}/by-url", "samples": 64}))
    result = generate_sets(cfg, tmp_path / "job", teachers, lambda _: None, names=["mixed"])["mixed"]
    assert result["shards_made"] == 1 and sx.read_index(tmp_path / "by-url").totals.samples == 64
    assert verify_set(f"file://{tmp_path}/by-url") == []


def test_memory_url_set_commits_verifies_and_inspects(teachers) -> None:
    """An object-store set (fsspec memory://), made by the same plan / writer / finish code."""
    url = "memory://transferset-test/sets/mem"
    set_cfg = SetConfig(sampler=sampler_config(kind="cutmix"), samples=40, samples_per_shard=16,
                        targets={"kind": "topk", "k": 4})
    plan = plan_in(url, set_cfg, teachers, name="mem")
    start(plan)
    ensemble = Ensemble(teachers, 10, device="cpu")
    state = resume(plan, lambda _: None)
    assert state.summaries == {} and isinstance(state, SetProgress)
    for shard in state.missing(plan.spec):
        images, drawn, labels = make_shard(plan.spec, shard)
        state.summaries[shard] = write_shard(plan.spec, shard, images, drawn, labels, ensemble.predict(images),
                                             count=plan.spec.planned(shard))
    assert finish(plan, state)["samples"] == 40
    assert verify_set(url) == [] and inspect_set(url)["per_sampler"] == {"cutmix": 40}
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/transferset-test/sets/mem/shards/shard-000001.tar", b"garbage")
    assert any(p.startswith("shard-000001.tar") for p in verify_set(url))
    fs.rm("/transferset-test", recursive=True)


@pytest.mark.e2e
def test_inspect_cli_prints_json_and_plots(cached, tmp_path) -> None:
    from PIL import Image

    set_dir = cached["results"]["mixed"]["set_dir"]
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", set_dir, "--json", "--plots",
                             str(tmp_path / "plots")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    table = sx.read_manifest(set_dir).to_pydict()
    assert stats["entropy"]["mean"] == pytest.approx(float(np.mean(table["entropy"])))
    assert sum(stats["teacher_argmax"].values()) == stats["samples"] == 192
    lam = np.asarray(table["lam"])
    assert sum(row["count"] for row in stats["entropy_by_lambda"]) == int(np.isfinite(lam).sum()) == 128
    assert stats["target_bytes_per_sample"] == 15 and 0 <= stats["topk_kl_mean"] < 1
    for path in stats["plots"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", set_dir], cwd=ROOT,
                          capture_output=True, text=True, timeout=300).stdout
    assert "mean Ĥ by λ" in text and "KL(full ‖ stored target)" in text
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", str(tmp_path / "none")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.startswith("error: inspect:")
