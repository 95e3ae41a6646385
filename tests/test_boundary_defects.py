"""Regression tests for the boundary defects of issue 13 that are not a plain bad-input case: each
failed before its fix. (The one-line cases — a config that is not UTF-8, a checkpoint tensor of
the wrong shape, teachers of another config, class_balanced without the real split, images of
mixed sizes, a factory the config does not name — are named cases of tests/test_bad_input.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from bad_input import JOB, Corpus, job_with, last_line, last_shard, transferset, tree, truncate, write_config

RAY_ERROR_LINE = re.compile(r"^\[[^\]]* E \d+ \d+\]", re.MULTILINE)  # glog's error level, as Ray prints it


def test_verify_exit_code_reaches_the_shell(corpus: Corpus, tmp_path: Path) -> None:
    """typer.Exit(1) was swallowed by app(standalone_mode=False): a damaged set exited 0."""
    healthy = transferset("verify", corpus.job / "sets" / "real", cwd=tmp_path)
    assert healthy.returncode == 0 and healthy.stdout.strip().endswith("OK"), healthy.stderr
    damaged = corpus.copy_set("real", tmp_path / "real")
    name = truncate(last_shard(damaged)).name  # the short last shard, shard-000002-CCCCCC.tar
    result = transferset("verify", damaged, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"problem: {name}" in result.stdout
    assert last_line(result.stderr).startswith(f"error: verify {damaged}: ")
    assert name in last_line(result.stderr) and "Traceback" not in result.stderr


def test_a_smaller_request_for_a_cached_set_keeps_every_shard(corpus: Corpus, tmp_path: Path) -> None:
    """``out: auto`` ignores the sample count; a smaller request deleted the shards another job
    made (and asking for the larger count again ran the teachers again)."""
    cache = tmp_path / "cache"

    def generate(samples: int):
        raw = job_with(cache_root=str(cache), teachers__checkpoints=[str(corpus.teacher())], students={},
                       sets={"mix": {"sampler": {"kind": "mix"}, "samples": samples, "samples_per_shard": 512,
                                     "out": "auto"}})
        return transferset("generate", write_config(tmp_path / f"job-{samples}.yaml", raw), "--out", tmp_path / "out",
                           cwd=tmp_path)

    assert generate(1024).returncode == 0
    made = tree(cache)
    (set_dir,) = cache.iterdir()
    assert len(list((set_dir / "shards").iterdir())) == 2
    smaller = generate(512)
    assert smaller.returncode == 2 and "Traceback" not in smaller.stderr
    assert "already holds 1024 samples" in last_line(smaller.stderr) and "a set only grows" in last_line(smaller.stderr)
    assert tree(cache) == made, "the cached set lost or changed a shard"
    larger = generate(1536)
    assert larger.returncode == 0, larger.stderr[-2000:]
    assert '"teacher_forward_samples": 512' in larger.stdout  # only the new shard was labelled
    grown = tree(cache)
    for name in ("shards/shard-000000.tar", "shards/shard-000001.tar"):
        key = f"{set_dir.name}/{name}"
        assert grown[key] == made[key], f"{name} changed while the set grew"
    assert f"{set_dir.name}/shards/shard-000002.tar" in grown


def test_a_student_of_a_grown_set_is_trained_again(corpus: Corpus, tmp_path: Path) -> None:
    """The reuse spec recorded set fingerprints, which a grown set keeps: the student was reused."""
    job = corpus.copy_job(tmp_path / "job")
    config = write_config(tmp_path / "grown.yaml", job_with(sets__mix__samples=1536))
    result = transferset("run", config, "--out", job, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student kd/seed-0: training" in result.stderr  # reads mix, which grew
    assert "student erm/seed-0: reused" in result.stderr  # reads the real split only
    assert "teacher 0: reused" in result.stderr


def test_a_factory_named_in_the_config_trains_labels_and_reports(tmp_path: Path) -> None:
    """``arch: module:factory`` was always refused: no caller passed allowed_factories."""
    (tmp_path / "user_nets.py").write_text(
        "from core.models import TinyCNN\n\n\n"
        "def small_cnn(in_channels, num_classes, width=4):\n"
        "    return TinyCNN(in_channels, num_classes, width=width)\n")
    model = {"arch": "user_nets:small_cnn", "arch_kwargs": {"width": 4}}
    raw = job_with(teachers__model=model, sets={"real": JOB["sets"]["real"]},
                   students={"kd": {**JOB["students"]["kd"], "model": model, "sets": {"real": 1.0}}})
    result = transferset("run", write_config(tmp_path / "job.yaml", raw), "--out", tmp_path / "out", cwd=tmp_path,
                         extra_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "sets" / "real" / "index.json").is_file()
    assert (tmp_path / "out" / "students" / "kd" / "seed-0" / "model.pt").is_file()
    assert "kd" in result.stdout and "teacher" in result.stdout


def test_a_healthy_run_prints_no_ray_error_line(corpus: Corpus) -> None:
    """Ray Data's restartable actors made Ray's core worker print ray-project/ray#53727 at error
    level (``core_worker.cc:2465``) on every run."""
    assert "core_worker.cc" not in corpus.run_stderr
    assert not RAY_ERROR_LINE.search(corpus.run_stderr), RAY_ERROR_LINE.findall(corpus.run_stderr)


def test_help_is_plain_text(tmp_path: Path) -> None:
    """The docstrings' reStructuredText backticks were shown raw in --help."""
    for args in ([], ["run"], ["generate"], ["train"], ["verify"], ["inspect"]):
        result = transferset(*args, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout and "`" not in result.stdout, result.stdout
    top = transferset("--help", cwd=tmp_path).stdout
    assert "exit code 2; verify exits 1 when a set has problems" in " ".join(top.split())
