"""Teacher-stage knobs that run on CPU: channels-last, autocast only on CUDA, thread defaults."""

from __future__ import annotations

import numpy as np
import torch

from core.config import SourceConfig, TeacherStageConfig
from core.sources import load_source
from stages.teachers import Ensemble


def test_channels_last_and_cpu_autocast_do_not_change_targets(teachers) -> None:
    images = load_source(SourceConfig(kind="digits"), "train").images(np.arange(64))
    plain = Ensemble(teachers, 10, device="cpu", channels_last=False).member_logits(images)
    last = Ensemble(teachers, 10, device="cpu", channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for m in last.members for p in m.model.parameters() if p.ndim == 4)
    np.testing.assert_allclose(last.member_logits(images).numpy(), plain.numpy(), rtol=1e-4, atol=1e-5)
    cpu_bf16 = Ensemble(teachers, 10, device="cpu", autocast="bf16")
    assert cpu_bf16.autocast is None and not cpu_bf16.pin_memory  # CUDA-only features stay off on CPU
    np.testing.assert_allclose(cpu_bf16.member_logits(images).numpy(), last.member_logits(images).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_threads_default_to_the_actors_whole_cpus() -> None:
    assert TeacherStageConfig(num_cpus=0.5).torch_threads() == 1
    assert TeacherStageConfig(num_cpus=4).torch_threads() == 4
    assert TeacherStageConfig(num_cpus=4, threads=2).torch_threads() == 2
