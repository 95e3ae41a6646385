"""Regression sets: the moment-matched Gaussian of the teacher ensemble's mixture, per dimension.

Members give (μ_m, s_m = log σ_m²). The mixture ½Σ N(μ_m, σ_m²) has mean μ = mean_m μ_m and
variance σ² = mean_m(σ_m² + μ_m²) − μ² = mean_m σ_m² + var_m μ_m: the aleatoric part (what each
member expects as noise) plus the epistemic part (how much the members disagree). We add the two
parts instead of subtracting μ², which loses every digit when the means are large. We store μ and
log σ² per output dimension (``<key>.mu.npy``, ``<key>.logvar.npy``; isotropic members give
per-dimension variances once their means disagree), the real target of a real view as
``<key>.label.npy``, and keep σ = √(mean_d σ_d²) and the two parts, averaged over dimensions, in
the metadata and the manifest.

A regression model outputs μ (D values) then s = log σ² (1 value, isotropic, or D values);
:func:`split_gaussian` cuts its output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import SOURCE_SET, KDConfig, ModelConfig, SetConfig, TargetConfig, TrainConfig
from core.errors import FormatError, UserError
from core.options.objective import TrainingObjective
from core.records.format import Sample, decode_npy, decode_record_image, encode_npy, image_member
from core.records.targets import stored_target
from core.tasks.base import Record, Task, per_sampler, row_start, significant

if TYPE_CHECKING:
    import torch

MU_FIELD = "mu.npy"
LOGVAR_FIELD = "logvar.npy"
REAL_TARGET_FIELD = "label.npy"
REGRESSION_DTYPES = ("float32", "float16")
# σ = √(mean over dims of the stored σ²), and its aleatoric / epistemic parts.
PARTS = ("sigma", "aleatoric", "epistemic")
MANIFEST_COLUMNS = ("key", "shard", "index", "sampler", "lam", *PARTS, "params")
# What result.json keeps of a regression model's last evaluation (and the report shows).
RESULT_KEYS = ("error", "error_median", "metric", "rmse", "nll", "calibration_error", "z2_ratio", "sigma_mean")


@dataclass(frozen=True)
class GaussianOutput:
    """Per-sample Gaussian targets. Rows where ``valid`` is False must never be written."""

    mu: np.ndarray  # float32 (N, D)
    logvar: np.ndarray  # float32 (N, D): log of the mixture variance
    aleatoric: np.ndarray  # float32 (N,): mean over dims of mean_m σ_m²
    epistemic: np.ndarray  # float32 (N,): mean over dims of var_m μ_m
    valid: np.ndarray  # bool (N,)

    def __len__(self) -> int:
        return len(self.valid)


def gaussian_ensemble_targets(member_mu: torch.Tensor, member_logvar: torch.Tensor) -> GaussianOutput:
    """Targets from member outputs ``μ [M, N, D]`` and ``log σ² [M, N, D or 1]``, in float64."""
    if member_mu.ndim != 3 or member_logvar.ndim != 3:
        raise ValueError(f"member outputs must be [M, N, D], got {tuple(member_mu.shape)}, "
                         f"{tuple(member_logvar.shape)}")
    if member_logvar.shape[:2] != member_mu.shape[:2] or member_logvar.shape[2] not in (1, member_mu.shape[2]):
        raise ValueError(f"log-variance {tuple(member_logvar.shape)} does not fit means {tuple(member_mu.shape)}")
    import torch

    mu = member_mu.detach().to("cpu", torch.float64)
    logvar = member_logvar.detach().to("cpu", torch.float64).expand_as(mu)
    valid = torch.isfinite(mu).all(2).all(0) & torch.isfinite(logvar).all(2).all(0)
    mu = torch.where(valid[None, :, None], mu, torch.zeros((), dtype=mu.dtype))
    logvar = torch.where(valid[None, :, None], logvar, torch.zeros((), dtype=mu.dtype))
    mean = mu.mean(0)
    aleatoric = logvar.exp().mean(0)  # [N, D]
    epistemic = mu.var(0, unbiased=False)  # [N, D], 0 for one member
    variance = aleatoric + epistemic
    finite = valid & torch.isfinite(variance.log()).all(1)  # σ² overflow or underflow to 0
    return GaussianOutput(
        mu=mean.float().numpy(),
        logvar=variance.log().float().numpy(),
        aleatoric=aleatoric.mean(1).float().numpy(),
        epistemic=epistemic.mean(1).float().numpy(),
        valid=finite.numpy(),
    )


def split_gaussian(outputs: torch.Tensor, out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A regression head's output ``[N, D + S]`` → μ ``[N, D]`` and s = log σ² ``[N, S]``."""
    return outputs[:, :out_dim], outputs[:, out_dim:]


class RegressionTask(Task):
    name = "regress"
    headline = "error"
    members = (MU_FIELD,)
    manifest_columns = MANIFEST_COLUMNS
    report_keys = ("error", "error_median", "rmse", "nll", "calibration_error", "z2_ratio", "sigma_mean")
    result_keys = RESULT_KEYS
    outputs_noun = "target values"

    def outputs(self, source: Any) -> int:
        return source.out_dim

    def width(self, outputs: int) -> int:
        return 2 * outputs  # μ, then log σ² per dimension

    def index_outputs(self, classes: Sequence[str], outputs: int) -> dict[str, Any]:
        return {"task": self.name, "out_dim": outputs}

    def outputs_of_index(self, num_classes: int | None, classes: Sequence[str] | None,
                         out_dim: int | None) -> int:
        return int(out_dim or 0)

    def missing_outputs(self) -> str:
        return "a regression index.json gives no out_dim"

    def check_source(self, source: Any, cfg: Any) -> None:
        """Class subsets and flips have no meaning for (or change) a regression target: refuse them."""
        used = [name for name in ("classes", "imbalance") if getattr(cfg, name) is not None]
        used += ["fraction"] if cfg.fraction < 1 else []
        if used:
            raise UserError(f"source {source.name}: {used} select classes; a regression source has none (remove them)")
        if source.flip:
            raise UserError(f"source {source.name}: flip: true mirrors the image but not its regression target "
                            f"(e.g. the gaze yaw); set source.flip: false")

    # ------------------------------------------------------------ planning

    def resolve_targets(self, set_cfg: SetConfig) -> SetConfig:
        """Dense μ and log σ², float32 unless asked otherwise."""
        targets = set_cfg.targets
        stored = stored_target(targets)
        if stored.compact:
            raise UserError(f"targets.kind: {stored.noun} targets are for classification; a regression set stores "
                            f"dense mu and logvar (remove targets.kind)")
        return set_cfg.model_copy(update={"targets": targets.model_copy(update={"dtype": targets.dtype or "float32"})})

    def target_spec(self, targets: TargetConfig, outputs: int) -> dict[str, Any]:
        dtype = targets.dtype or "float32"
        size = np.dtype(dtype).itemsize * outputs
        return {"kind": "gaussian", "dtype": dtype, "members": [MU_FIELD, LOGVAR_FIELD],
                "logvar": "per dimension", "payload_bytes": 2 * size}

    def statistics(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Predicted σ and its two parts."""
        sigma, aleatoric, epistemic = (np.asarray([r[k] for r in rows], dtype=np.float64) for k in PARTS)
        return {"sigma_mean": float(sigma.mean()), "sigma_std": float(sigma.std()),
                "aleatoric_mean": float(aleatoric.mean()), "epistemic_mean": float(epistemic.mean()),
                "per_sampler": per_sampler(rows)}

    # ------------------------------------------------------------ labelling

    def member_row(self, output: torch.Tensor, outputs: int) -> torch.Tensor:
        """``[μ, s]`` with one s per dimension, so isotropic and diagonal members stack."""
        mu, logvar = split_gaussian(output, outputs)
        import torch

        return torch.cat([mu, logvar.expand_as(mu)], dim=1)

    def combine(self, member_outputs: torch.Tensor, outputs: int) -> GaussianOutput:
        return gaussian_ensemble_targets(member_outputs[..., :outputs], member_outputs[..., outputs:])

    def uncertainty(self, output: GaussianOutput, by: str) -> np.ndarray:
        """``entropy``: the Gaussian's differential entropy ½·Σ_d log σ_d² (+ a constant);
        ``disagreement``: the epistemic variance (the members' disagreement)."""
        return output.logvar.astype(np.float64).sum(1) if by == "entropy" else output.epistemic.astype(np.float64)

    def real_labels(self, images: Sequence[int | None], source: Any) -> np.ndarray:
        """Real targets of label-preserving samples of real images, float32 (N, D); NaN rows otherwise."""
        rows = np.full((len(images), source.out_dim), np.nan, dtype=np.float32)
        for n, image in enumerate(images):
            if image is not None:
                rows[n] = source.targets[image]
        return rows

    def labelled(self, key: str, image: np.ndarray, meta: dict[str, Any], output: GaussianOutput, candidate: int,
                 label: Any, targets: TargetConfig, *, identity: tuple[int, int, int]) -> Sample:
        """σ = √(mean_d σ_d²) and its aleatoric / epistemic parts go into the metadata."""
        variance = float(np.exp(output.logvar[candidate].astype(np.float64)).mean())
        meta = {**meta, "sigma": significant(np.sqrt(variance)), "aleatoric": significant(output.aleatoric[candidate]),
                "epistemic": significant(output.epistemic[candidate])}
        return self.sample(key, image, meta, output.mu[candidate], output.logvar[candidate],
                           None if np.isnan(label).any() else label, targets.dtype or "float32")

    # ------------------------------------------------------------ records

    def sample(self, key: str, image: np.ndarray, meta: dict[str, Any], mu: np.ndarray, logvar: np.ndarray,
               real_target: np.ndarray | None = None, dtype: str = "float32") -> Sample:
        """A regression record: μ and log σ² stored as ``dtype``, the real target (float32) if any."""
        if dtype not in REGRESSION_DTYPES or logvar is None:
            raise FormatError(f"sample {key}: regression targets need mu, logvar and a dtype in "
                              f"{REGRESSION_DTYPES}, got dtype {dtype!r}")
        mu = np.asarray(mu, dtype=np.float64).reshape(-1)
        logvar = np.asarray(logvar, dtype=np.float64).reshape(-1)
        if mu.shape != logvar.shape or not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
            raise FormatError(f"sample {key}: mu {mu.shape} and logvar {logvar.shape} must be finite, same shape")
        members = {MU_FIELD: encode_npy(mu.astype(dtype)), LOGVAR_FIELD: encode_npy(logvar.astype(dtype))}
        if real_target is not None:
            members[REAL_TARGET_FIELD] = encode_npy(np.asarray(real_target, dtype=np.float32).reshape(-1))
        return Sample(key=key, image=image, meta=meta, members=members)

    def decode(self, fields: dict[str, bytes]) -> Record:
        """image, meta, mu and logvar (float32; ``target`` is the row [μ, log σ²]), real target
        (None if none), label −1, the stored dtype."""
        missing = {image_member(fields) or "png", "json", LOGVAR_FIELD} - fields.keys()
        if missing:
            raise FormatError(f"regression sample is missing members {sorted(missing)}")
        mu, logvar = decode_npy(fields[MU_FIELD]), decode_npy(fields[LOGVAR_FIELD])
        if mu.ndim != 1 or mu.shape != logvar.shape or mu.dtype.name not in REGRESSION_DTYPES \
                or logvar.dtype != mu.dtype:
            raise FormatError(f"mu {mu.dtype} {mu.shape} and logvar {logvar.dtype} {logvar.shape} must be float32 "
                              f"or float16 vectors of one shape")
        real = decode_npy(fields[REAL_TARGET_FIELD]) if REAL_TARGET_FIELD in fields else None
        if real is not None and real.shape != mu.shape:
            raise FormatError(f"{REAL_TARGET_FIELD} has shape {real.shape}, mu has {mu.shape}")
        dtype, mu, logvar = mu.dtype.name, mu.astype(np.float32), logvar.astype(np.float32)
        return {"image": decode_record_image(fields), "meta": json.loads(fields["json"]), "mu": mu, "logvar": logvar,
                "target": np.concatenate([mu, logvar]), "real_target": real, "label": -1, "dtype": dtype}

    def manifest_row(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {**row_start(meta), **{name: float(meta[name]) for name in PARTS},
                "params": json.dumps(meta.get("params", {}), sort_keys=True)}

    # ------------------------------------------------------------ models

    def checkpoint_outputs(self, num_classes: int, head: dict[str, int] | None) -> dict[str, int]:
        if head is None or head.get("logvar_dim") not in (1, head.get("out_dim")):
            raise ValueError(f"a regression checkpoint needs head {{out_dim: D, logvar_dim: 1 or D}}, got {head}")
        return {"out_dim": int(head["out_dim"]), "logvar_dim": int(head["logvar_dim"])}

    def model_width(self, payload: dict[str, Any]) -> int:
        return int(payload["out_dim"]) + int(payload["logvar_dim"])

    def check_checkpoint(self, path: Any, payload: dict[str, Any], outputs: int | None) -> None:
        if "out_dim" not in payload or payload.get("logvar_dim") not in (1, payload["out_dim"]):
            raise UserError(f"checkpoint {path}: a regression checkpoint without a valid out_dim/logvar_dim head")
        if outputs is not None and payload["out_dim"] != outputs:
            raise UserError(f"checkpoint {path}: predicts {payload['out_dim']} values, the data has {outputs}")

    def head(self, model_cfg: ModelConfig, source: Any) -> dict[str, int]:
        """μ of the target's D values, then 1 or D log-variances."""
        return {"out_dim": source.out_dim, "logvar_dim": 1 if model_cfg.logvar == "isotropic" else source.out_dim}

    # ------------------------------------------------------------ students

    def check_student(self, name: str, objective: TrainingObjective, train_cfg: TrainConfig, kd_cfg: KDConfig | None,
                      real_weight: float) -> None:
        """Refuse the options that are defined for classification only."""
        if objective.teachers_in_loop:
            raise UserError(f"{name}: objective {objective.name!r} is for classification; distil a regression "
                            f"ensemble from a transfer set (objective 'kd')")
        used = []
        if train_cfg.self_guidance is not None:
            used.append("train.self_guidance")
        if train_cfg.class_balanced:
            used.append("train.class_balanced")
        if train_cfg.label_smoothing:
            used.append("train.label_smoothing")
        if objective.distils and kd_cfg is not None:
            if kd_cfg.pick is not None:
                used.append("kd.pick")
            if kd_cfg.alpha != 1.0:
                used.append("kd.alpha (regression distillation has no real-label term: set kd.alpha: 1)")
            if real_weight > 0:
                used.append(f"the real split as set {SOURCE_SET!r} (it carries no teacher Gaussian)")
        if used:
            raise UserError(f"{name}: a regression model does not take {', '.join(used)}")

    def score(self, result: dict[str, Any]) -> str:
        return f"{result.get('metric', '')} error {result['error']:.4f}".strip()


REGRESS = RegressionTask()
