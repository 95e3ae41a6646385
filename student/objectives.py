"""What one training step computes: ERM (+ CutMix / MixUp / label smoothing, class-balanced
draws) on the real split, or KD (+ pick) on streamed transfer sets; either one optionally with
Self-Guidance on a stochastic-depth model.

An objective hands the trainer ``(loss, extras)`` per step; ``extras`` are numbers for the
metrics (e.g. pick's KL ratio). Its batches come from the stream (:mod:`student.stream`), a pure
function of the step it starts at, and its own random draws (CutMix / MixUp, the global torch RNG
of stochastic depth and dropout) are seeded per step by :meth:`Objective.begin_step`: a run
resumed at any step repeats the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.config import KDConfig, TrainConfig
from core.errors import UserError
from core.models import full_network
from core.seeds import stream_seed
from student.losses import cutmix, kd_loss, mixed_label_loss, mixup, self_guidance_kl, smoothed_cross_entropy
from student.pick import kl_ratio, pick_hardest, pick_scores, scoring_forward
from student.shards import SetShards
from student.stream import RealPart, StreamPlan, TransferLoader
from student.stream.coverage import Coverage

# Random streams of a run, each seeded with stream_seed(seed, stream, step, rank).
DATA_STREAM, MIX_STREAM, TRANSFER_STREAM, TORCH_STREAM = 1, 2, 3, 4
BaseLoss = Callable[[torch.Tensor], torch.Tensor]


class SelfGuided(nn.Module):
    """Both passes of Self-Guidance in one forward — the full network (eq 4, the teacher) and a
    sampled sub-network (eq 3, the student) — so DDP sees one forward per backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with full_network(self.model):
            full = self.model(x)
        return full, self.model(x)


class RowCounts:
    """Rows drawn and rows trained on, by origin (the student's sets, then the real split): how
    many times each stored view was seen is ``trained / samples`` (:func:`student.train.views_seen`);
    and what the drawn rows covered (:class:`student.stream.coverage.Coverage`). Kept in the
    resumable state, so a resumed run counts like an uninterrupted one."""

    def __init__(self, origins: int, coverage: Coverage | None = None) -> None:
        self.drawn = [0] * origins
        self.trained = [0] * origins
        self.coverage = coverage

    def cover(self, batch: dict[str, torch.Tensor]) -> None:
        """Count what a delivered batch covered (its origins, sample numbers, source images)."""
        if self.coverage is not None:
            self.coverage.add(batch["origin"].numpy(), batch["sample"].numpy(), batch["sources"].numpy())

    @staticmethod
    def _add(into: list[int], origin: torch.Tensor) -> None:
        for where, count in enumerate(torch.bincount(origin.long().cpu(), minlength=len(into)).tolist()):
            into[where] += int(count)

    def add(self, drawn: torch.Tensor, trained: torch.Tensor) -> None:
        self._add(self.drawn, drawn)
        self._add(self.trained, trained)

    def state(self) -> dict[str, list[int]]:
        return {"drawn": list(self.drawn), "trained": list(self.trained)}

    def restore(self, state: dict[str, list[int]]) -> None:
        if len(state.get("trained", [])) == len(self.trained):
            self.drawn, self.trained = list(state["drawn"]), list(state["trained"])


class Objective:
    """Base: turns inputs and a per-logits base loss into the step's loss (with Self-Guidance)."""

    def __init__(self, train_cfg: TrainConfig, spec: dict[str, Any], device: torch.device, seed: int,
                 rank: int, origins: int = 1, coverage: Coverage | None = None) -> None:
        self.cfg, self.device, self.seed, self.rank = train_cfg, device, seed, rank
        self.counts = RowCounts(origins, coverage)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=device).view(shape)
        self.inv_std = 1.0 / torch.tensor(spec["std"], dtype=torch.float32, device=device).view(shape)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW → normalised float input on the device (channels-last unless turned off)."""
        x = (images.to(self.device, non_blocking=True).float().div_(255.0) - self.mean).mul_(self.inv_std)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def begin_step(self, step: int) -> None:
        """Seed the step's own draws: the global torch RNG (stochastic depth, dropout)."""
        torch.manual_seed(stream_seed(self.seed, TORCH_STREAM, step, self.rank))

    def loss(self, model: nn.Module, x: torch.Tensor, base: BaseLoss) -> torch.Tensor:
        guidance = self.cfg.self_guidance
        if guidance is None:
            return base(model(x))
        full, sub = model(x)  # model is SelfGuided (possibly inside DDP)
        return base(sub) + base(full) + guidance.weight * self_guidance_kl(full, sub, guidance.temperature)

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    def visited(self) -> list[str]:
        """The shards this rank read (for its ``rank-<r>.json``; none without transfer sets)."""
        return []

    def close(self) -> None:
        pass


class RealStreamObjective(Objective):
    """Base of the objectives that train on the real split alone (ERM, ``kd_online``): its
    batches come from the stream's real member, decoded and augmented in the loader's workers."""

    def __init__(self, real: RealPart, plan: StreamPlan, *args: Any) -> None:
        super().__init__(*args, coverage=Coverage([len(real.source)], len(real.source)))
        self.source = real.source
        self.loader = TransferLoader([], plan, real)
        self.stream = iter(self.loader)
        self.mix_rng = torch.Generator()

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self.mix_rng.manual_seed(stream_seed(self.seed, MIX_STREAM, step, self.rank))

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uint8 NCHW images, labels)`` of the next batch — a regression source's float
        targets (N, D) in place of the labels — counted as drawn and trained on."""
        batch = next(self.stream)
        self.counts.cover(batch)
        self.counts.drawn[0] += len(batch["label"])
        self.counts.trained[0] += len(batch["label"])
        return batch["image"], batch["target"] if batch["target"].shape[1] else batch["label"]

    def close(self) -> None:
        self.stream.close()  # type: ignore[attr-defined]  # a generator: close() stops the workers


class ERMObjective(RealStreamObjective):
    """Cross-entropy on augmented real images, with CutMix / MixUp (linear labels) by probability."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None]:
        """``(input, labels, partner labels, λ)`` of the next batch: CutMix or MixUp by their
        probabilities (λ None and the partner labels equal to the labels when neither is drawn)."""
        cfg = self.cfg
        images, labels = self.real_batch()
        x, labels = self.to_input(images), labels.to(self.device, non_blocking=True)
        mixing = cfg.cutmix + cfg.mixup
        draw = float(torch.rand((), generator=self.mix_rng)) if mixing > 0 else 1.0
        if draw < mixing:
            mix = cutmix if draw < cfg.cutmix else mixup
            return mix(x, labels, self.mix_rng, cfg.mix_alpha)
        return x, labels, labels, None

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x, labels, labels_b, lam = self.next_batch()
        if lam is not None:
            return self.loss(model, x, lambda z: mixed_label_loss(z, labels, labels_b, lam, cfg.label_smoothing)), {}
        return self.loss(model, x, lambda z: smoothed_cross_entropy(z, labels, cfg.label_smoothing).mean()), {}


class KDObjective(Objective):
    """Hinton KD from streamed transfer sets; with ``pick``, the B hardest of ratio×B candidates."""

    def __init__(self, sets: list[SetShards], real: RealPart | None, kd_cfg: KDConfig, plan: StreamPlan,
                 expected_shape: tuple[int, int, int], coverage: Coverage | None, *args: Any) -> None:
        super().__init__(*args, origins=len(sets) + 1, coverage=coverage)
        self.kd, self.expected_shape, self.has_real = kd_cfg, expected_shape, real is not None
        self.loader = TransferLoader(sets, plan, real)
        self.stream = iter(self.loader)
        # pick's x′ by origin (the sets' positions, then the real part): the samples of non-views
        # sets; a student with views sets only lets all their samples compete. The real split
        # (no teacher target) never does.
        stored = [not s.originals for s in sets] if not all(s.originals for s in sets) else [True] * len(sets)
        self.rivals = torch.tensor([*stored, False])
        # Rows whose KD term comes from sampled-class weights, by origin (None: no such set).
        self.sampled = torch.tensor([s.sampled for s in sets] + [False]) if any(s.sampled for s in sets) else None

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = next(self.stream)
        self.counts.cover(batch)
        if tuple(batch["image"].shape[1:]) != self.expected_shape:
            raise UserError(f"transfer set images are {tuple(batch['image'].shape[1:])} (C, H, W), "
                            f"the source's are {self.expected_shape}; make the sets from the same source")
        return batch

    def step(self, model: nn.Module, plain: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.next_batch()
        x = self.to_input(batch["image"])
        logp = batch["target"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        has_target = batch["has_target"].to(self.device, non_blocking=True) if self.has_real else None
        extras: dict[str, float] = {}
        origin = batch["origin"]
        weights = sampled = None
        if self.sampled is not None:
            weights = batch["weights"].to(self.device, non_blocking=True)
            sampled = self.sampled[origin.long()].to(self.device)
        pick = self.kd.pick
        if pick is not None:
            with full_network(plain):
                scores, d = pick_scores(scoring_forward(plain, x), logp, self.kd.temperature, pick.criterion)
            competes = self.rivals[origin.long()].to(self.device)
            if has_target is not None:
                competes &= has_target
            chosen = pick_hardest(scores, self.cfg.batch_size, competes, pick.ratio)
            extras["pick_kl_ratio"] = kl_ratio(d, chosen, competes)
            x, logp, labels = x[chosen], logp[chosen], labels[chosen]
            has_target = None if has_target is None else has_target[chosen]
            if weights is not None and sampled is not None:
                weights, sampled = weights[chosen], sampled[chosen]
            self.counts.add(origin, origin[chosen.cpu()])
        else:
            self.counts.add(origin, origin)
        kd = self.kd
        return self.loss(model, x, lambda z: kd_loss(z, logp, labels, kd.temperature, kd.alpha, has_target,
                                                     weights, sampled)), extras

    def stats(self) -> dict[str, Any]:
        return {"shards_visited": len(self.loader.visited), "shards_skipped": len(set(self.loader.skipped)),
                "skipped": sorted(set(self.loader.skipped))}

    def visited(self) -> list[str]:
        return sorted(set(self.loader.visited))

    def close(self) -> None:
        self.stream.close()  # type: ignore[attr-defined]  # a generator: close() stops the workers
