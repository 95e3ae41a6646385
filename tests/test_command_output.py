"""What the installed ``transferset`` command prints and exits with, on the bad-input corpus's
finished job: verify's exit 1 reaches the shell, a healthy run prints no Ray error line, and
``--help`` is plain text. Each failed before its fix (issue 13's boundary defects; the one-line
bad-input cases are tests/test_bad_input.py's, a smaller request for a cached set and a student of
a grown set are tests/test_set_cache.py's, a factory named in the config tests/test_bring_teachers.py's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bad_input import Corpus, last_line, last_shard, transferset, truncate

pytestmark = pytest.mark.e2e

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
