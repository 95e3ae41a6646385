"""Teachers and students from the ecosystem, in process: timm and torchvision models, their
published input contracts, weights files of every common shape, and the import into the
project's checkpoint (values, not mocks: real tiny models, real files). No downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.config import TeacherModelConfig, parse_config
from core.errors import UserError
from core.models import build_model, load_model
from core.models.weights import read_state_dict
from core.models.zoo import published_contract
from pipeline.generate.teacher_import import prepare_teacher
from stages.teachers import Ensemble
from student.evaluate import prepare
from student.online import ensemble_log_probs

timm = pytest.importorskip("timm")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def timm_model(name: str, seed: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=classes).eval()


def imported(tmp_path: Path, arch: str, weights: Path, classes: int = 10, name: str = "teacher.pt",
             **entry: object) -> Path:
    teacher = prepare_teacher(TeacherModelConfig(arch=arch, weights=str(weights), **entry), classes,
                              default_channels=3, where="test")
    teacher.save(tmp_path / name)
    return tmp_path / name


def uint8_images(count: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, channels), dtype=np.uint8)


def test_a_plain_timm_state_dict_imports_to_identical_outputs(tmp_path: Path) -> None:
    model = timm_model("test_resnet", seed=0)
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # what most training scripts save
    path = imported(tmp_path, "timm:test_resnet", tmp_path / "plain.pt", input={"size": 32})
    loaded, payload = load_model(path, outputs=10)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert payload["arch"] == "timm:test_resnet" and payload["num_classes"] == 10
    assert payload["input"] == {"size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bilinear", "crop_pct": 0.95}  # pretrained_cfg, size overridden


def test_checkpoints_safetensors_and_prefixes_hold_the_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, other = timm_model("test_resnet", seed=0), timm_model("test_resnet", seed=1)
    state = model.state_dict()
    files = {
        "timm-train.pth.tar": {"epoch": 3, "arch": "test_resnet", "args": argparse.Namespace(lr=0.1),
                               "state_dict": other.state_dict(), "state_dict_ema": state},  # EMA preferred
        "ddp.pt": {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}, "epoch": 1},
        "torchvision-ema.pth": {"model": other.state_dict(), "args": argparse.Namespace(model="x"), "model_ema": {
            "n_averaged": torch.tensor(5), **{f"module.{k}": v for k, v in state.items()}}},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in state.items()},
    }
    for name, payload in files.items():
        torch.save(payload, tmp_path / name)
    save_file(state, tmp_path / "model.safetensors")
    for name in [*files, "model.safetensors"]:
        read = read_state_dict(str(tmp_path / name))
        assert read.keys() == state.keys(), name
        assert all(torch.equal(read[k], state[k]) for k in state), name


def test_weights_that_run_code_or_hold_no_tensors_are_refused(tmp_path: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"state_dict": {"w": RunsCode()}}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        read_state_dict(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="neither a state dict"):
        read_state_dict(str(tmp_path / "empty.pt"))


def test_fit_errors_name_the_keys_and_the_heads_classes(tmp_path: Path) -> None:
    torch.save(timm_model("test_efficientnet", seed=0).state_dict(), tmp_path / "eff.pt")
    with pytest.raises(UserError, match=r"do not fit arch 'timm:test_resnet' \(\d+ missing, e.g. \['conv1"):
        imported(tmp_path, "timm:test_resnet", tmp_path / "eff.pt")
    torch.save(timm_model("test_resnet", seed=0, classes=7).state_dict(), tmp_path / "seven.pt")
    with pytest.raises(UserError, match="head 'fc.weight' has 7 classes, the data has 10"):
        imported(tmp_path, "timm:test_resnet", tmp_path / "seven.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eff.pt", "seven.pt"]  # nothing written


def test_each_member_is_fed_by_its_own_published_contract(tmp_path: Path) -> None:
    """Two members at the same size but different interpolation and mean/std: each gets its own
    input (resize with its interpolation + antialias, then its normalisation), not a shared one."""
    resnet, effnet = timm_model("test_resnet", seed=0), timm_model("test_efficientnet", seed=1)
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")
    torch.save(effnet.state_dict(), tmp_path / "effnet.pt")
    paths = [imported(tmp_path, "timm:test_resnet", tmp_path / "resnet.pt", name="a.pt", input={"size": 40}),
             imported(tmp_path, "timm:test_efficientnet", tmp_path / "effnet.pt", name="b.pt", input={"size": 40})]
    ensemble = Ensemble(paths, 10, device="cpu", threads=1, batch_size=4)
    contract = ensemble.payloads[1]["input"]
    assert (contract["interpolation"], contract["mean"], contract["std"]) == ("bicubic", IMAGENET_MEAN, IMAGENET_STD)
    images = uint8_images(3, 57, 71)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0

    def direct(model: torch.nn.Module, mode: str, mean: list[float], std: list[float]) -> torch.Tensor:
        resized = F.interpolate(x, size=(40, 40), mode=mode, align_corners=False, antialias=True)
        resized = resized.clamp(0, 1) if mode == "bicubic" else resized
        with torch.no_grad():
            return model((resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))

    logits = ensemble.member_logits(images)
    torch.testing.assert_close(logits[0], direct(resnet, "bilinear", [0.5] * 3, [0.5] * 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], direct(effnet, "bicubic", IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=1e-5)
    shared = direct(effnet, "bilinear", [0.5] * 3, [0.5] * 3)  # what sharing the first member's input would give
    assert (logits[1] - shared).abs().max() > 1e-3
    # the evaluation and kd_online prepare the inputs the same way
    teachers = [load_model(p, outputs=10) for p in paths]
    online = ensemble_log_probs([(m, s["input"]) for m, s in teachers], torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(online.numpy(), ensemble.predict(images).logp, atol=1e-5)
    assert torch.equal(prepare(torch.from_numpy(images).permute(0, 3, 1, 2), teachers[1][1]["input"])[:, :, 0, 0],
                       ((F.interpolate(x, size=(40, 40), mode="bicubic", antialias=True).clamp(0, 1)
                         - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))[:, :, 0, 0])


def test_a_torchvision_model_round_trips_with_its_weights_meta(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision:squeezenet1_1", 3, 10).eval()
    torch.save(model.state_dict(), tmp_path / "squeeze.pt")
    path = imported(tmp_path, "torchvision:squeezenet1_1", tmp_path / "squeeze.pt", input={"size": 64})
    loaded, payload = load_model(path, outputs=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert payload["input"] == {"size": [64, 64], "channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                "interpolation": "bilinear", "crop_pct": 0.875}  # 224 of 256, from the weights enum


def test_published_contracts_and_what_students_can_be_built_from() -> None:
    assert published_contract("timm:test_efficientnet")["size"] == [160, 160]
    assert published_contract("torchvision:mobilenet_v3_small")["size"] == [224, 224]
    assert published_contract("tiny_cnn") is None
    grey = build_model("timm:test_resnet", 1, 10)  # timm takes any in_chans: a student of grey digits
    assert grey(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="3-channel images, the data has 1; use a timm"):
        build_model("torchvision:squeezenet1_1", 1, 10)
    for arch, needle in (("timm:test_resnett", "did you mean test_resnet"),
                         ("torchvision:squeezenet1_2", "no classifier 'squeezenet1_2'"),
                         ("timm:test_resnet.nope", "no pretrained tag 'nope'")):
        with pytest.raises(UserError, match=needle):
            build_model(arch, 3, 10)


def test_imports_are_deterministic_and_need_a_contract_for_archs_without_one(tmp_path: Path) -> None:
    torch.save(timm_model("test_resnet", seed=0).state_dict(), tmp_path / "w.pt")
    entry = TeacherModelConfig(arch="timm:test_resnet", weights=str(tmp_path / "w.pt"), input={"size": 32})
    first = prepare_teacher(entry, 10, default_channels=3, where="t").save(tmp_path / "1.pt")
    assert prepare_teacher(entry, 10, default_channels=3, where="t").save(tmp_path / "2.pt") == first
    torch.save(build_model("tiny_cnn", 1, 10, {"width": 4}).state_dict(), tmp_path / "tiny.pt")
    bare = TeacherModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4}, weights=str(tmp_path / "tiny.pt"))
    with pytest.raises(UserError, match=r"no published input contract for this arch; give input: \{size, mean, std"):
        prepare_teacher(bare, 10, default_channels=1, where="t")
    tiny = prepare_teacher(TeacherModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4}, weights=str(
        tmp_path / "tiny.pt"), input={"size": 8, "mean": [0.5], "std": [0.25]}), 10, default_channels=1, where="t")
    assert tiny.contract["channels"] == 1 and tiny.contract["interpolation"] == "bilinear"


def test_teachers_take_one_of_training_checkpoints_or_models() -> None:
    base = {"name": "x", "source": {"kind": "digits"}}
    member = {"arch": "timm:test_resnet", "weights": "w.pt"}
    for teachers, needle in (({"models": [member], "checkpoints": ["a.pt"]}, "not both"),
                             ({"models": [member], "members": 2}, r"drop \['members'\]"),
                             ({"models": []}, "empty"),
                             ({"members": 2}, "needs model and train"),
                             ({"models": [{**member, "arch": "tiny_cnn", "weights": "pretrained"}]},
                              "pretrained weights come from timm or torchvision")):
        with pytest.raises(UserError, match=needle):
            parse_config({**base, "teachers": teachers})
    cfg = parse_config({**base, "teachers": {"models": [member, {"arch": "my.nets:wide", "weights": "w.pt"}]}})
    assert cfg.factories == ("my.nets:wide",)  # the factories cover the imported members too
    assert cfg.teachers.models[0].pretrained_tag is None
    assert TeacherModelConfig(arch="timm:test_resnet", weights="pretrained:r160_in1k").pretrained_tag == "r160_in1k"


def test_a_library_student_that_cannot_take_the_source_images_is_one_line() -> None:
    from core.config import ModelConfig, SourceConfig, TrainConfig
    from core.sources import load_source
    from student.build import new_model

    digits = load_source(SourceConfig(kind="digits"), "train")
    train = TrainConfig(steps=1)
    assert new_model("s", ModelConfig(arch="timm:test_resnet"), train, 10, digits).training  # mode kept
    with pytest.raises(UserError, match=r"s: model arch 'timm:test_vit': the model fails on a 8×8 input with 1 "
                                        r"channel\(s\).*dynamic_img_size"):
        new_model("s", ModelConfig(arch="timm:test_vit"), train, 10, digits)

