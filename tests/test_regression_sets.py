"""Regression transfer sets end to end on Ray: Gaussian targets that are the ensemble's
moment-matched prediction on the stored pixels, replayable samples, real targets on real views,
shards that pass verify and decode with plain WebDataset in secure mode, the same bytes when a
shard is made again without Ray, and students that stream them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import generate_set_in, plan_in
from regression_fixtures import build_regression_teachers, gaze_config
from set_files import local_shard

from core.config import (
    KDConfig,
    ModelConfig,
    PickConfig,
    SetConfig,
    TrainConfig,
    sampler_config,
)
from core.errors import UserError
from core.records import format as fmt
from core.samplers import apply_params
from core.sets import index as sx
from core.sources import load_source
from core.tasks import REGRESS, decode_fields
from core.tasks.regression import gaussian_ensemble_targets
from pipeline.inspect import inspect_set, write_plots
from pipeline.inspect.verify import verify_set
from stages.teachers import Ensemble
from stages.writer import make_shard, write_shard
from student.shards import open_transfer_sets
from student.stream import StreamPlan, TransferLoader
from student.train import TrainRequest, train_model

SETS = {
    "mix": SetConfig(sampler=sampler_config(kind="mix"), samples=120, samples_per_shard=50),
    "real": SetConfig(sampler=sampler_config(kind="views", views=2), samples_per_shard=80,
                      targets={"dtype": "float16"}),
}


def records(set_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    index = sx.read_index(set_dir)
    return [(key, decode_fields(fields)) for url in sx.shard_urls(set_dir, index)
            for key, fields in fmt.iter_tar(url)]


@pytest.fixture(scope="module")
def made(ray_session, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("regression")
    source_cfg = gaze_config(root / "gaze")
    teachers = build_regression_teachers(root, source_cfg)
    results = {name: generate_set_in(root / name, set_cfg, teachers, seed=3, name=name, source=source_cfg,
                                     teacher_stage={"batch_size": 64}) for name, set_cfg in SETS.items()}
    return {"root": root, "source_cfg": source_cfg, "teachers": teachers, "results": results}


def test_targets_are_the_moment_matched_ensemble_on_the_stored_pixels(made) -> None:
    set_dir = made["root"] / "mix"
    index = sx.read_index(set_dir)
    assert (index.task, index.out_dim, "num_classes" in index.to_dict()) == ("regress", 2, False)
    assert index.target.to_dict() == {"kind": "gaussian", "dtype": "float32", "members": ["mu.npy", "logvar.npy"],
                                      "logvar": "per dimension", "payload_bytes": 16}
    assert index.totals.samples == 120 and len(index.shards) == 3
    got = records(set_dir)
    images = np.stack([r["image"] for _, r in got])
    ensemble = Ensemble(made["teachers"], 2, device="cpu", task="regress")
    raw = ensemble.member_logits(images)  # [M, N, 4]: μ then a log σ² per dimension (isotropic widened)
    assert torch.equal(raw[0, :, 2], raw[0, :, 3])  # member 0 is isotropic
    want = gaussian_ensemble_targets(raw[..., :2], raw[..., 2:])
    source = load_source(made["source_cfg"], "train")
    for n, (_, record) in enumerate(got):
        np.testing.assert_allclose(record["mu"], want.mu[n], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(record["logvar"], want.logvar[n], rtol=1e-6, atol=1e-6)
        meta = record["meta"]
        assert meta["sigma"] == pytest.approx(float(np.sqrt(np.exp(want.logvar[n].astype(np.float64)).mean())),
                                              rel=1e-5)
        assert meta["aleatoric"] == pytest.approx(float(want.aleatoric[n]), rel=1e-5)
        assert meta["epistemic"] == pytest.approx(float(want.epistemic[n]), rel=1e-5, abs=1e-12)
        assert np.array_equal(apply_params(meta["sampler"], meta["params"], source), record["image"])
        assert record["real_target"] is None and "entropy" not in meta  # mixes have no real target
    table = sx.read_manifest(set_dir).to_pydict()
    assert tuple(table) == REGRESS.manifest_columns
    assert table["sigma"] == [r["meta"]["sigma"] for _, r in got]
    assert index.statistics["sigma_mean"] == pytest.approx(np.mean(table["sigma"]))


def test_real_views_carry_their_real_targets_in_float16_sets(made) -> None:
    set_dir = made["root"] / "real"
    source = load_source(made["source_cfg"], "train")
    got = records(set_dir)
    assert len(got) == 2 * len(source) and sx.read_index(set_dir).target.dtype == "float16"
    for _, record in got:
        assert record["dtype"] == "float16"
        np.testing.assert_array_equal(record["real_target"], source.targets[record["meta"]["params"]["image"]])


def test_shards_pass_verify_and_decode_with_plain_webdataset_in_secure_mode(made) -> None:
    for name in SETS:
        assert verify_set(made["root"] / name) == []
    urls = sx.shard_urls(made["root"] / "real")
    script = textwrap.dedent(f"""
        import json, webdataset as wds
        out = []
        for s in wds.WebDataset({urls!r}, shardshuffle=False).decode():
            out.append([s["__key__"], s["mu.npy"].dtype.name, s["mu.npy"].tolist(), s["logvar.npy"].tolist(),
                        s["label.npy"].tolist(), s["json"]["sigma"]])
        print(json.dumps(out))
    """)
    env = {**os.environ, "WDS_SECURE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    decoded = json.loads(done.stdout)
    ours = records(made["root"] / "real")
    assert [d[0] for d in decoded] == [key for key, _ in ours]
    for row, (_, record) in zip(decoded, ours, strict=True):
        assert row[1] == "float16" and row[2] == record["mu"].tolist() and row[3] == record["logvar"].tolist()
        assert row[4] == record["real_target"].tolist() and row[5] == record["meta"]["sigma"]


def test_a_shard_made_again_without_ray_has_the_same_bytes(made) -> None:
    set_dir = made["root"] / "mix"
    again = made["root"] / "again"
    spec = plan_in(again, SETS["mix"], made["teachers"], seed=3, name="mix", source=made["source_cfg"]).spec
    images, drawn, real = make_shard(spec, 1)
    assert np.isnan(real).all()  # mixes carry no real target
    output = Ensemble(made["teachers"], 2, device="cpu", threads=1, batch_size=64, task="regress").predict(images)
    summary = write_shard(spec, 1, images, drawn, real, output)
    assert local_shard(again, 1).read_bytes() == local_shard(set_dir, 1).read_bytes()
    assert summary.sha256 == sx.read_index(set_dir).shards[1].sha256


def test_verify_names_a_record_whose_sigma_does_not_fit_its_logvar(made, tmp_path) -> None:
    import shutil

    copy = tmp_path / "mix"
    shutil.copytree(made["root"] / "mix", copy)
    path = local_shard(copy, 0)
    samples = []
    for key, fields in fmt.iter_tar(path):
        record = decode_fields(fields)
        meta = record["meta"] if key != "000000-000003" else {**record["meta"], "sigma": 9.0}
        samples.append(REGRESS.sample(key, record["image"], meta, record["mu"], record["logvar"]))
    path.write_bytes(fmt.tar_bytes(samples))
    problems = verify_set(copy)
    assert any("000000-000003: metadata sigma 9.0" in p for p in problems)
    assert any("sha256 differs" in p for p in problems)


def test_inspect_shows_sigma_by_lambda_and_plots_model_curves(made, tmp_path) -> None:
    stats = inspect_set(made["root"] / "mix")
    assert stats["task"] == "regress" and stats["per_sampler"] == {"mix": 120}
    table = sx.read_manifest(made["root"] / "mix").to_pydict()
    assert stats["sigma"]["mean"] == pytest.approx(np.mean(table["sigma"]))
    assert sum(row["count"] for row in stats["sigma_by_lambda"]) == 120
    real = inspect_set(made["root"] / "real")
    assert real["teacher_error_on_real"] > 0 and real["real_samples_checked"] > 0
    paths = write_plots(made["root"] / "mix", tmp_path, {"member0": made["teachers"][0]})
    assert [Path(p).name for p in paths] == ["sigma_hist.png", "sigma_vs_lambda.png", "samples.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_planning_refuses_mismatched_teachers_and_topk(made) -> None:
    from conftest import build_teachers

    classify = build_teachers(made["root"], members=1, steps=1)
    with pytest.raises(UserError, match="task is 'classify', this job needs 'regress'"):
        plan_in(made["root"] / "x", SETS["mix"], classify, source=made["source_cfg"])
    topk = SetConfig(sampler=sampler_config(kind="mix"), samples=10, targets={"kind": "topk"})
    with pytest.raises(UserError, match="top-k targets are for classification"):
        plan_in(made["root"] / "x", topk, made["teachers"], source=made["source_cfg"])
    assert not (made["root"] / "x").exists()


# ---------------------------------------------------------------- students


def test_the_stream_carries_each_records_mu_and_logvar(made) -> None:
    opened = open_transfer_sets([(str(made["root"] / "mix"), 1.0)], task="regress")
    assert (opened[0].outputs, opened[0].width) == (2, 4)
    stored = {r["image"].tobytes(): np.concatenate([r["mu"], r["logvar"]]) for _, r in records(made["root"] / "mix")}
    loader = TransferLoader(opened, StreamPlan(batch_size=16, seed=0, shuffle_window=32))
    batch = next(iter(loader))
    for image, row in zip(batch["image"], batch["target"], strict=True):
        np.testing.assert_array_equal(row.numpy(), stored[image.permute(1, 2, 0).numpy().tobytes()])
    with pytest.raises(UserError, match="task 'regress', the student is trained for 'classify'"):
        open_transfer_sets([(str(made["root"] / "mix"), 1.0)])


def small_train(**kw: Any) -> TrainConfig:
    return TrainConfig(steps=12, batch_size=16, optimizer="adam", lr=1e-3, num_workers=0, **kw)


@pytest.mark.parametrize("loss", ["gaussian_kl", "mse"])
def test_students_distil_gaussians_and_report_regression_metrics(made, tmp_path, loss) -> None:
    source_cfg = made["source_cfg"]
    train, test = load_source(source_cfg, "train"), load_source(source_cfg, "test")
    request = TrainRequest(
        name="s", model=ModelConfig(arch="lenet", arch_kwargs={"conv1": 4, "conv2": 8, "hidden": 16}),
        train=small_train(), objective="kd", kd=KDConfig(alpha=1.0, regression_loss=loss),
        sets=[(str(made["root"] / "mix"), 0.5), (str(made["root"] / "real"), 0.5)], out_dir=tmp_path, seed=0)
    result = train_model(request, train, test)
    assert result["metric"] == "angular" and 0 < result["error"] < 90 and np.isfinite(result["nll"])
    assert "accuracy" not in result and 0 <= result["calibration_error"] <= 1
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (payload["task"], payload["out_dim"], payload["logvar_dim"]) == ("regress", 2, 1)
    assert payload["train"]["kd"]["regression_loss"] == loss
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "eval" and rows[-1]["error"] == result["error"]


def test_regression_refuses_classification_only_options(made, tmp_path) -> None:
    source_cfg = made["source_cfg"]
    train, test = load_source(source_cfg, "train"), load_source(source_cfg, "test")
    common = {"name": "s", "model": ModelConfig(arch="tiny_cnn"), "objective": "kd", "out_dir": tmp_path / "never",
              "seed": 0, "sets": [(str(made["root"] / "mix"), 1.0)]}
    with pytest.raises(UserError, match="kd.alpha"):
        train_model(TrainRequest(train=small_train(), kd=KDConfig(), **common), train, test)
    with pytest.raises(UserError, match="kd.pick"):
        train_model(TrainRequest(train=small_train(), kd=KDConfig(alpha=1.0, pick=PickConfig()), **common), train, test)
    with pytest.raises(UserError, match="train.label_smoothing"):
        train_model(TrainRequest(train=small_train(label_smoothing=0.1), kd=KDConfig(alpha=1.0), **common),
                    train, test)
    assert not (tmp_path / "never").exists()
