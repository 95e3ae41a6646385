"""bench/gpu_check.py, the prepared GPU check, runs where Ray cannot be imported (the lent GPU
machine has none) and ends with a JSON line of sane figures; here it runs ``--quick`` on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the GPU machine lacks, made unimportable; the script run as `python bench/gpu_check.py --quick`.
RUN_WITHOUT_RAY = (
    "import runpy, sys; sys.modules.update(ray=None, webdataset=None); sys.path.insert(0, 'bench'); "
    "sys.argv = ['bench/gpu_check.py', '--quick']; runpy.run_path('bench/gpu_check.py', run_name='__main__')"
)
TORCH_ALONE = (
    "import sys, numpy, PIL.Image, torch, torchvision, torchvision.models; "
    "print(' '.join(sorted({n.split('.')[0] for n, m in sys.modules.items() if m is not None})))"
)
# Beyond torch, torchvision, numpy and Pillow, the check may import only these (pure Python but
# pydantic_core; carried to a machine without them, docs/BENCHMARKS.md "GPU check").
CARRIED = {"pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions", "yaml"}


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_gpu_check_runs_without_ray_and_reports_sane_figures() -> None:
    done = run(RUN_WITHOUT_RAY)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["device_name"]
    assert 0.0 <= figures["bf16_argmax_agreement"] <= 1.0
    assert figures["bf16_max_abs_dlogp"] >= 0.0 and math.isfinite(figures["bf16_max_abs_dlogp"])
    # the CPU never autocasts the teachers (Ensemble: CUDA only), so bf16 is fp32 here, exactly
    assert figures["bf16_autocast"] is False and figures["bf16_argmax_agreement"] == 1.0
    assert figures["bf16_max_abs_dlogp"] == figures["bf16_mean_abs_dlogp"] == 0.0 < figures["fp32_mean_top2_gap"]
    assert figures["fp32_repeat_max_abs_dlogp"] == 0.0 and figures["device_input_max_abs_dlogp"] == 0.0
    assert figures["channels_last"] is True and figures["pinned_memory"] is False  # pinning is for CUDA
    assert [m["input"] for m in figures["members"]] == [[16, 16], [32, 32]] and figures["resized_members"] == 1
    assert figures["teacher_samples"] == 2 * figures["batch_size"]
    for name in ("teacher_samples_per_s_fp32", "teacher_samples_per_s_bf16", "student_steps_per_s_fp32",
                 "student_steps_per_s_bf16", "student_samples_per_s_fp32", "student_samples_per_s_bf16"):
        assert figures[name] > 0, name
    assert "student_steps_per_s_fp16" not in figures  # fp16 + GradScaler: CUDA only
    for precision in ("fp32", "bf16"):
        first, last = figures[f"student_loss_first_{precision}"], figures[f"student_loss_last_{precision}"]
        assert math.isfinite(first) and 0 <= last < first, precision  # the KD steps learn
    imported = set(figures["imported_packages"])
    assert "ray" not in imported and "webdataset" not in imported
    torch_alone = set(run(TORCH_ALONE).stdout.split())
    assert {"torch", "numpy"} <= torch_alone
    assert imported - torch_alone <= CARRIED, imported - torch_alone
