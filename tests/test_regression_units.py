"""Regression building blocks without Ray: heads and checkpoints, records, sources, losses and
metrics against direct formulas."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from core.config import SourceConfig
from core.errors import UserError
from core.models import build_model, input_spec, load_model, save_checkpoint
from core.records import format as fmt
from core.sources import load_source
from core.sources.gaze import RENDER_VERSION
from core.tasks import REGRESS, decode_fields
from core.tasks.regression import split_gaussian
from pipeline.report.aggregate import gap_reduction
from student.losses import gaussian_kl, gaussian_nll, mse_loss
from student.regression_eval import chi2_cdf, regression_metrics, sigma_of


@pytest.mark.parametrize("arch, kwargs", [("lenet", {"conv1": 4, "conv2": 8, "hidden": 16}),
                                          ("preact_resnet", {"width": 4}), ("preact_resnet", {"width": 4,
                                                                                           "blocks": [2, 1, 1, 1]})])
def test_gaze_architectures_take_36x60_eyes_and_other_sizes(arch: str, kwargs: dict) -> None:
    model = build_model(arch, 1, 3, kwargs).eval()
    for size in ((36, 60), (32, 32)):
        out = model(torch.randn(5, 1, *size))
        assert out.shape == (5, 3) and torch.isfinite(out).all()
    mu, logvar = split_gaussian(out, 2)
    assert mu.shape == (5, 2) and logvar.shape == (5, 1) and torch.equal(logvar[:, 0], out[:, 2])


def test_lenet_is_the_published_network_at_default_widths() -> None:
    """Zhang et al.'s LeNet on 36×60 eyes: 20 and 50 5×5 filters, 6×12 map after the pools, fc 500."""
    model = build_model("lenet", 1, 2, {})
    assert model.head[0].in_features == 50 * 6 * 12 and model.head[0].out_features == 500
    preact = build_model("preact_resnet", 1, 3, {"width": 8})
    convs = [m for m in preact.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 9  # the 9-layer PreAct-ResNet of XCL's gaze teacher


def test_regression_checkpoint_round_trip_and_checks(tmp_path) -> None:
    model = build_model("lenet", 1, 3, {"conv1": 4, "conv2": 8, "hidden": 16}).eval()
    spec = input_spec(36, 60, 1, [0.5], [0.2])
    save_checkpoint(tmp_path / "r.pt", model, arch="lenet", arch_kwargs={"conv1": 4, "conv2": 8, "hidden": 16},
                    num_classes=0, input=spec, task="regress", head={"out_dim": 2, "logvar_dim": 1})
    loaded, payload = load_model(tmp_path / "r.pt", task="regress", outputs=2)
    assert (payload["out_dim"], payload["logvar_dim"]) == (2, 1) and "num_classes" not in payload
    x = torch.randn(3, 1, 36, 60)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(UserError, match="task is 'regress'"):
        load_model(tmp_path / "r.pt")
    with pytest.raises(UserError, match="predicts 2 values, the data has 3"):
        load_model(tmp_path / "r.pt", task="regress", outputs=3)
    with pytest.raises(ValueError, match="logvar_dim"):
        save_checkpoint(tmp_path / "bad.pt", model, arch="lenet", arch_kwargs={}, num_classes=0, input=spec,
                        task="regress", head={"out_dim": 2, "logvar_dim": 3})


# ---------------------------------------------------------------- records


def regression_record(index: int, dtype: str = "float32", real: bool = True) -> dict[str, Any]:
    """The arguments of ``REGRESS.sample`` for record ``index``."""
    rng = np.random.default_rng(index)
    key = fmt.sample_key(1, index)
    return {"key": key, "image": rng.integers(0, 256, (36, 60, 1), dtype=np.uint8), "meta": {"key": key, "sigma": 0.1},
            "mu": rng.normal(0, 0.3, 2), "logvar": rng.normal(-4, 1, 2),
            "real_target": rng.normal(0, 0.3, 2) if real else None, "dtype": dtype}


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_regression_records_round_trip(dtype: str, tolerance: float) -> None:
    made = [regression_record(i, dtype, real=i % 2 == 0) for i in range(4)]
    samples = [REGRESS.sample(**m) for m in made]
    data = fmt.tar_bytes(samples)
    assert data == fmt.tar_bytes(list(reversed(samples)))
    for (key, fields), sample in zip(fmt.iter_tar(data), made, strict=True):
        assert set(fields) == {"png", "json", "mu.npy", "logvar.npy"} | ({"label.npy"} if sample["real_target"]
                                                                          is not None else set())
        assert fmt.decode_npy(fields["mu.npy"]).dtype == np.dtype(dtype)
        out = decode_fields(fields)
        assert key == sample["key"] and out["dtype"] == dtype and out["label"] == -1 and "logp" not in out
        np.testing.assert_allclose(out["mu"], sample["mu"], rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(out["logvar"], sample["logvar"], rtol=tolerance, atol=tolerance)
        np.testing.assert_array_equal(out["target"], np.concatenate([out["mu"], out["logvar"]]))
        assert np.array_equal(out["image"], sample["image"])
        if sample["real_target"] is None:
            assert out["real_target"] is None
        else:
            np.testing.assert_array_equal(out["real_target"], sample["real_target"].astype(np.float32))


def test_regression_records_refuse_bad_targets() -> None:
    good = regression_record(0)
    for change, message in [({"logvar": None}, "need mu, logvar"), ({"dtype": "float64"}, "need mu, logvar"),
                            ({"mu": np.array([np.nan, 0.0])}, "finite"), ({"logvar": np.zeros(3)}, "same shape")]:
        with pytest.raises(fmt.FormatError, match=message):
            fmt.encode_sample(REGRESS.sample(**{**good, **change}))
    fields = fmt.encode_sample(REGRESS.sample(**good))
    fields["logvar.npy"] = fmt.encode_npy(np.zeros(2, np.float16))  # dtype differs from mu's
    with pytest.raises(fmt.FormatError, match="float32 or float16 vectors"):
        decode_fields(fields)


def test_regression_manifest_rows_carry_sigma_and_its_parts() -> None:
    meta = {"key": "000001-000002", "shard": 1, "index": 2, "sampler": "mix", "params": {"lam": 0.25, "i": 3},
            "sigma": 0.2, "aleatoric": 0.03, "epistemic": 0.01}
    row = REGRESS.manifest_row(meta)
    assert tuple(row) == REGRESS.manifest_columns
    assert (row["lam"], row["sigma"], row["aleatoric"], row["epistemic"]) == (0.25, 0.2, 0.03, 0.01)


# ---------------------------------------------------------------- sources


def test_gaze_source_renders_once_and_reads_its_cache(tmp_path) -> None:
    cfg = SourceConfig(kind="gaze", samples=40, test_samples=12, path=str(tmp_path))
    train, test = load_source(cfg, "train"), load_source(cfg, "test")
    assert (train.task.name, train.out_dim, train.shape, len(train), len(test)) == ("regress", 2, (36, 60, 1), 40, 12)
    assert train.metric == "angular" and train.classes == [] and (train.labels == -1).all()
    assert not np.isin(test.images().reshape(12, -1).sum(1), train.images().reshape(40, -1).sum(1)).all()
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert cached == [f"gaze-v{RENDER_VERSION}-seed0-test-12.npz", f"gaze-v{RENDER_VERSION}-seed0-train-40.npz"]
    (tmp_path / cached[1]).write_bytes(b"damaged")  # a damaged cache is rendered again
    again = load_source(cfg, "train")
    assert np.array_equal(again.images(), train.images()) and np.array_equal(again.targets, train.targets)
    assert again.identity == train.identity
    with pytest.raises(UserError, match="flip"):
        load_source(cfg.model_copy(update={"flip": True}), "train")
    with pytest.raises(UserError, match="select classes"):
        load_source(cfg.model_copy(update={"fraction": 0.5}), "train")


def test_npz_regression_source_splits_and_checks(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 36, 60), dtype=np.uint8)
    targets = rng.normal(size=(50, 2)).astype(np.float64)
    np.savez(tmp_path / "a.npz", images=images, targets=targets)
    cfg = SourceConfig(kind="npz", path=str(tmp_path / "a.npz"), test_fraction=0.2, metric="angular")
    train, test = load_source(cfg, "train"), load_source(cfg, "test")
    assert (len(train), len(test), train.out_dim, train.metric, train.shape) == (40, 10, 2, "angular", (36, 60, 1))
    together = np.concatenate([train.targets, test.targets])
    assert sorted(map(tuple, together)) == sorted(map(tuple, targets.astype(np.float32)))
    np.savez(tmp_path / "t.npz", images=images, targets=targets[:, 0], test_images=images[:5],
             test_targets=targets[:5, 0])
    one_d = load_source(SourceConfig(kind="npz", path=str(tmp_path / "t.npz")), "test")
    assert (len(one_d), one_d.out_dim, one_d.metric) == (5, 1, "euclidean")
    np.savez(tmp_path / "both.npz", images=images, targets=targets, labels=np.zeros(50, np.int64))
    with pytest.raises(UserError, match="both labels and targets"):
        load_source(SourceConfig(kind="npz", path=str(tmp_path / "both.npz")), "train")
    np.savez(tmp_path / "nan.npz", images=images, targets=np.full((50, 2), np.nan))
    with pytest.raises(UserError, match="finite float"):
        load_source(SourceConfig(kind="npz", path=str(tmp_path / "nan.npz")), "train")


# ---------------------------------------------------------------- losses and metrics


def test_gaussian_losses_with_per_dimension_variances_match_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    n, dims = 11, 2
    mu_t, mu_s, y = (torch.randn(n, dims, generator=gen, dtype=torch.float64) for _ in range(3))
    s_t = torch.randn(n, dims, generator=gen, dtype=torch.float64)  # the ensemble's diagonal targets
    s_iso = torch.randn(n, 1, generator=gen, dtype=torch.float64)  # an isotropic student

    def normal(mu, s):
        return torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * s).exp().expand_as(mu)), 1)

    want = torch.distributions.kl_divergence(normal(mu_t, s_t), normal(mu_s, s_iso)).mean()
    assert gaussian_kl(mu_t, s_t, mu_s, s_iso).item() == pytest.approx(want.item(), rel=1e-10)
    const = 0.5 * dims * math.log(2 * math.pi)
    assert gaussian_nll(mu_s, s_t, y).item() == pytest.approx((-normal(mu_s, s_t).log_prob(y).mean() - const).item(),
                                                              rel=1e-10)
    assert mse_loss(mu_s, y).item() == pytest.approx(((mu_s - y) ** 2).sum(1).mean().item(), rel=1e-12)


def test_calibration_of_sigma_is_measured_against_the_chi_square_law() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    mu = rng.normal(0, 0.3, (n, 2))
    logvar = np.log(rng.uniform(0.01, 0.04, (n, 1))).repeat(2, axis=1)
    y = mu + np.exp(0.5 * logvar) * rng.standard_normal((n, 2))
    calibrated = regression_metrics(mu, logvar, y, "euclidean")
    assert calibrated["calibration_error"] < 0.01 and calibrated["z2_ratio"] == pytest.approx(1.0, abs=0.03)
    want_nll = np.mean(0.5 * (2 * math.log(2 * math.pi) + logvar.sum(1) + ((y - mu) ** 2 / np.exp(logvar)).sum(1)))
    assert calibrated["nll"] == pytest.approx(want_nll, rel=1e-12)
    assert calibrated["sigma_mean"] == pytest.approx(np.sqrt(np.exp(logvar[:, 0])).mean(), rel=1e-12)
    assert calibrated["error"] == pytest.approx(np.linalg.norm(y - mu, axis=1).mean(), rel=1e-12)
    confident = regression_metrics(mu, logvar - math.log(4.0), y, "euclidean")  # σ halved
    assert confident["z2_ratio"] == pytest.approx(4.0, rel=0.03) and confident["calibration_error"] > 0.2
    assert chi2_cdf(np.array([2.0]), 2)[0] == pytest.approx(1 - math.exp(-1.0), rel=1e-12)
    assert sigma_of(np.log([[0.01, 0.03]]))[0] == pytest.approx(math.sqrt(0.02), rel=1e-12)


def test_gap_reduction_is_measured_on_errors() -> None:
    """Lower is better, so the regression report hands gap_reduction negated errors: teacher 5°,
    KD 6°, a method at 5.5° closes half the gap, at 6.5° widens it."""
    assert gap_reduction(-5.0, -6.0, -5.5) == pytest.approx(0.5)
    assert gap_reduction(-5.0, -6.0, -6.5) == pytest.approx(-0.5)
    assert gap_reduction(-5.0, -4.9, -4.0) is None  # KD already beats the teacher: nothing to reduce
