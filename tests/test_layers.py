"""The house's floors and wings hold: the import contracts in pyproject.toml pass (layers core <
stages, student < pipeline; stages and student independent; the wings inside core and pipeline
layered; no circles; Ray only in the pipeline's driver modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> list[str]:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert found, "lint-imports is not installed (pip install -e '.[dev]')"
    return [found, "--no-cache"]


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(lint_imports(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


FLOORS = ("core", "stages", "student", "pipeline")
# A project module imported inside a function, allowed only where it keeps a heavy dependency out
# of an importer that does not need it. The command line imports the pipeline (torch, Ray: ~2 s)
# inside its commands, after the config is read: `--help` and a bad config answer in 0.4 s.
FUNCTION_LEVEL = frozenset(("pipeline/cli.py", module) for module in (
    "pipeline.chain", "pipeline.cost", "pipeline.cost.report", "pipeline.generate.driver",
    "pipeline.generate.set_gc", "pipeline.generate.teacher_import", "pipeline.inspect", "pipeline.inspect.verify",
    "pipeline.report", "pipeline.train.job", "pipeline.train.members", "pipeline.train.ray_train",
    "pipeline.train.runs", "pipeline.train.teachers")) | {
    # inspect runs models (torch: ~1.3 s) only where it has teachers or checkpoints to ask; verify
    # and gc, which import its package, never do: they answer in 0.5-0.9 s instead of 2-3 s
    ("pipeline/inspect/classification.py", "stages.teachers"),
    ("pipeline/inspect/regression.py", "core.models"),
    ("pipeline/inspect/regression.py", "student.regression_eval"),
}


def project_files() -> list[Path]:
    return sorted(p for floor in FLOORS for p in (ROOT / floor).rglob("*.py"))


def test_project_modules_are_imported_at_module_level() -> None:
    import ast

    found = set()
    for path in project_files():
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for inner in (inner for function in functions for inner in ast.walk(function)):
            if isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = [inner.module or ""]
            else:
                continue
            found |= {(str(path.relative_to(ROOT)), name) for name in names if name.split(".")[0] in FLOORS}
    assert found == FUNCTION_LEVEL


def test_no_function_is_over_60_lines() -> None:
    import ast

    long = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in project_files() for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60]
    assert not long


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in project_files() if (n := len(p.read_text().splitlines())) > 400}
    assert not long
