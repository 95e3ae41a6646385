"""Classification sets: temperature-free log-probabilities of the ensemble mean, Ĥ and disagreement.

Members give logits z_m. The target is log p̄ with p̄ = mean_m softmax(z_m) (so a student can
apply any temperature later: softmax(log p̄ / τ)), stored as float16 (``<key>.logp.npy``), as a
top-k record (``<key>.topk.npy``, :mod:`core.records.target_codec`), or as classes drawn at the set's
temperature with importance weights (``<key>.sampled.npy``, :mod:`core.records.sampled_target`: the one
form that is not temperature-free); ``<key>.cls`` holds the real label
of a label-preserving view. Beside the target we keep two uncertainty statistics, both divided by
log C so they lie in [0, 1] whatever the class count: Ĥ = H(p̄) / log C, the total uncertainty,
and disagreement = (H(p̄) − mean_m H(p_m)) / log C, the ensemble's mutual information.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import ModelConfig, SetConfig, TargetConfig
from core.errors import FormatError, UserError
from core.records.format import Sample, decode_npy, decode_record_image, encode_npy, image_member
from core.records.targets import STORED_TARGETS, stored_in, stored_target
from core.tasks.base import Record, Task, per_sampler, row_start, significant

if TYPE_CHECKING:
    import torch

DENSE_TARGETS = TargetConfig()
LABEL_FIELD = "cls"
MANIFEST_COLUMNS = (
    "key", "shard", "index", "sampler", "lam", "label", "entropy", "disagreement",
    "teacher_argmax", "target_kl", "params",
)
# Ĥ and disagreement in the JSON metadata: rounded so the text does not pretend float64 precision.
STAT_DIGITS = 6
FIELDS = ("logp", "entropy", "disagreement", "argmax", "valid")


@dataclass(frozen=True)
class EnsembleOutput:
    """Per-sample targets of a batch. Rows where ``valid`` is False must never be written."""

    logp: np.ndarray  # float32 (N, C): log of the ensemble-mean probabilities
    entropy: np.ndarray  # float32 (N,): normalised entropy of p̄, in [0, 1]
    disagreement: np.ndarray  # float32 (N,): normalised mutual information, in [0, 1]
    argmax: np.ndarray  # int64 (N,)
    valid: np.ndarray  # bool (N,): False where any member output was NaN/Inf

    def __len__(self) -> int:
        return len(self.valid)

    @staticmethod
    def concat(parts: Sequence[EnsembleOutput], num_classes: int) -> EnsembleOutput:
        if not parts:
            return EnsembleOutput(
                np.zeros((0, num_classes), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                np.zeros(0, np.int64), np.zeros(0, bool),
            )
        return EnsembleOutput(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def ensemble_targets(member_logits: torch.Tensor) -> EnsembleOutput:
    """Targets from raw member logits ``[M, N, C]``, computed stably in float64.

    log p̄ = logsumexp_m(log_softmax(z_m)) − log M never forms a tiny probability and takes its
    log. Samples with a non-finite member logit are marked invalid (their other fields are
    finite placeholders, computed from zeroed logits).
    """
    if member_logits.ndim != 3:
        raise ValueError(f"member logits must be [M, N, C], got {tuple(member_logits.shape)}")
    members, _, classes = member_logits.shape
    if members < 1 or classes < 2:
        raise ValueError(f"need at least 1 member and 2 classes, got M={members}, C={classes}")
    import torch
    from torch.nn import functional as F

    z = member_logits.detach().to("cpu", torch.float64)
    valid = torch.isfinite(z).all(dim=2).all(dim=0)
    z = torch.where(valid[None, :, None], z, torch.zeros((), dtype=z.dtype))
    member_logp = F.log_softmax(z, dim=-1)  # [M, N, C]
    logp = torch.logsumexp(member_logp, dim=0) - math.log(members)  # [N, C]
    log_c = math.log(classes)
    h_mean = -(logp.exp() * logp).sum(-1)  # exp(logp)·logp → 0 as p → 0, no 0·(−inf)
    h_members = -(member_logp.exp() * member_logp).sum(-1).mean(0)
    entropy = (h_mean / log_c).clamp(0.0, 1.0)
    disagreement = ((h_mean - h_members) / log_c).clamp(0.0, 1.0)  # ≥ 0 by Jensen; clamp rounding
    return EnsembleOutput(
        logp=logp.float().numpy(),
        entropy=entropy.float().numpy(),
        disagreement=disagreement.float().numpy(),
        argmax=logp.argmax(-1).numpy().astype(np.int64),
        valid=valid.numpy(),
    )


class ClassificationTask(Task):
    name = "classify"
    headline = "accuracy"
    members = tuple(stored.member for stored in STORED_TARGETS.values())
    manifest_columns = MANIFEST_COLUMNS
    report_keys = ("accuracy", "top5", "ece")
    result_keys = ("top5", "ece")
    outputs_noun = "classes"

    def outputs(self, source: Any) -> int:
        return source.num_classes

    def index_outputs(self, classes: Sequence[str], outputs: int) -> dict[str, Any]:
        return {"task": self.name, "classes": list(classes), "num_classes": outputs}

    def outputs_of_index(self, num_classes: int | None, classes: Sequence[str] | None,
                         out_dim: int | None) -> int:
        return int(num_classes if num_classes is not None else len(classes or []))

    def missing_outputs(self) -> str:
        return "index.json gives no num_classes"

    # ------------------------------------------------------------ planning

    def resolve_targets(self, set_cfg: SetConfig) -> SetConfig:
        if set_cfg.targets.dtype is not None:
            raise UserError("targets.dtype: classification targets are always float16 log-probabilities; "
                            "dtype is for regression sets (remove it)")
        return set_cfg

    def target_spec(self, targets: TargetConfig, outputs: int) -> dict[str, Any]:
        return stored_target(targets).spec(targets, outputs)

    def statistics(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        entropy = np.asarray([r["entropy"] for r in rows], dtype=np.float64)
        disagreement = np.asarray([r["disagreement"] for r in rows], dtype=np.float64)
        return {
            "entropy_mean": float(entropy.mean()) if len(rows) else 0.0,
            "entropy_std": float(entropy.std()) if len(rows) else 0.0,
            "disagreement_mean": float(disagreement.mean()) if len(rows) else 0.0,
            "per_sampler": per_sampler(rows),
        }

    # ------------------------------------------------------------ labelling

    def combine(self, member_outputs: torch.Tensor, outputs: int) -> EnsembleOutput:
        return ensemble_targets(member_outputs)

    def uncertainty(self, output: EnsembleOutput, by: str) -> np.ndarray:
        return (output.entropy if by == "entropy" else output.disagreement).astype(np.float64)

    def real_labels(self, images: Sequence[int | None], source: Any) -> np.ndarray:
        return np.asarray([-1 if image is None else int(source.labels[image]) for image in images], dtype=np.int64)

    def labelled(self, key: str, image: np.ndarray, meta: dict[str, Any], output: EnsembleOutput, candidate: int,
                 label: Any, targets: TargetConfig, *, identity: tuple[int, int, int]) -> Sample:
        label, stored = int(label), stored_target(targets)
        meta = {**meta,
                "label": label,
                "entropy": round(float(output.entropy[candidate]), STAT_DIGITS),
                "disagreement": round(float(output.disagreement[candidate]), STAT_DIGITS),
                "teacher_argmax": int(output.argmax[candidate])}
        logp = output.logp[candidate]
        record = stored.encode(logp, targets, identity)
        kl = stored.loss(logp, record)
        if kl is not None:
            meta["target_kl"] = significant(kl)
        return self.record_sample(key, image, meta, {stored.member: encode_npy(record)}, label)

    # ------------------------------------------------------------ records

    def sample(self, key: str, image: np.ndarray, meta: dict[str, Any], logp: np.ndarray, label: int | None = None,
               targets: TargetConfig = DENSE_TARGETS, identity: tuple[int, int, int] = (0, 0, 0)) -> Sample:
        """A classification record of log p̄ stored as ``targets`` asks (a sampled-class draw from
        the stream of ``identity``: seed, shard, candidate), and the real label if any."""
        stored = stored_target(targets)
        record = stored.encode(logp, targets, identity)
        return self.record_sample(key, image, meta, {stored.member: encode_npy(record)}, label)

    @staticmethod
    def record_sample(key: str, image: np.ndarray, meta: dict[str, Any], members: dict[str, bytes],
                      label: int | None) -> Sample:
        """The record of the target ``members`` and the real label, if there is one (>= 0)."""
        if label is not None and label >= 0:
            members = {**members, LABEL_FIELD: str(int(label)).encode("ascii")}
        return Sample(key=key, image=image, meta=meta, members=members)

    def decode(self, fields: dict[str, bytes]) -> Record:
        """image, meta, logp (dense, whatever the stored target kind; also as ``target``), label
        (-1 if none); a sampled-class record also gives ``weights``, its importance weights as a
        dense row (what a KD student learns from; its ``logp`` is only an estimate)."""
        missing = {image_member(fields) or "png", "json"} - fields.keys()
        if missing:
            raise FormatError(f"sample is missing members {sorted(missing)}")
        return {"image": decode_record_image(fields), "meta": json.loads(fields["json"]), **self.decode_targets(fields)}

    def decode_targets(self, fields: dict[str, bytes]) -> Record:
        """The target part of a record (``logp``, ``target``, ``label``, maybe ``weights``) from its
        target members: a tar's, or those a replay record gives back (``core.records.replay``)."""
        stored = stored_in(fields)
        if stored.member not in fields:
            raise FormatError(f"sample is missing members {[stored.member]}")
        raw = decode_npy(fields[stored.member])
        logp, weights = stored.estimate(raw), stored.weights(raw)
        return {"logp": logp, "target": logp, "label": int(fields[LABEL_FIELD]) if LABEL_FIELD in fields else -1,
                **({} if weights is None else {"weights": weights})}

    def manifest_row(self, meta: dict[str, Any]) -> dict[str, Any]:
        kl = meta.get("target_kl")
        return {
            **row_start(meta),
            "label": int(meta.get("label", -1)),
            "entropy": float(meta["entropy"]),
            "disagreement": float(meta["disagreement"]),
            "teacher_argmax": int(meta["teacher_argmax"]),
            "target_kl": float("nan") if kl is None else float(kl),
            "params": json.dumps(meta.get("params", {}), sort_keys=True),
        }

    # ------------------------------------------------------------ models

    def checkpoint_outputs(self, num_classes: int, head: dict[str, int] | None) -> dict[str, int]:
        return {"num_classes": int(num_classes)}

    def model_width(self, payload: dict[str, Any]) -> int:
        return int(payload["num_classes"])

    def check_checkpoint(self, path: Any, payload: dict[str, Any], outputs: int | None) -> None:
        if outputs is not None and payload["num_classes"] != outputs:
            raise UserError(f"checkpoint {path}: {payload['num_classes']} classes, the data has {outputs}")

    def head(self, model_cfg: ModelConfig, source: Any) -> dict[str, int]:
        return {"num_classes": source.num_classes}


CLASSIFY = ClassificationTask()
