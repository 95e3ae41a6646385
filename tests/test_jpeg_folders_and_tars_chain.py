"""Issue 14's acceptance, end to end through the installed ``transferset`` command: JPEGs of six
sizes (tens to hundreds of pixels) as an ImageFolder and as WebDataset tars, an image contract
(random-resized-crop views at 48 px), a **timm** teacher brought as a plain ``state_dict`` file, a
views and a mix set, and a timm student trained from them. Checked by direct computation: image
sizes, views replayed from (source image, stored box, flip), the teacher's ``pretrained_cfg``
(mean, std, interpolation) applied, the test split evaluated through resize + centre crop — and
the two sources giving the same stored pixels."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bad_input import last_line, transferset, tree, write_config
from cli_runner import transferset_in_process
from PIL import Image

from core.config import ImageConfig
from core.models import load_model
from core.options.image_contract import eval_image, resized_box
from core.records import format as fmt
from core.sets import index as sx
from core.tasks import decode_fields

pytestmark = pytest.mark.e2e

timm = pytest.importorskip("timm")

SIZES = [(24, 40), (60, 45), (96, 96), (150, 110), (240, 200), (70, 300)]
CLASSES = ["cat", "dog", "eel"]
CONTRACT = {"size": 48, "views": "random_resized_crop", "scale": [0.3, 1.0]}
TEACHER_ARCH = "test_resnet"


def make_images(root: Path) -> dict[str, list[tuple[str, bytes, int]]]:
    """JPEG bytes per split: ``(key, bytes, label)`` in ImageFolder order (class, then file name)."""
    rng = np.random.default_rng(14)
    made: dict[str, list[tuple[str, bytes, int]]] = {}
    for split, count in (("train", 8), ("test", 3)):
        made[split] = []
        for label, name in enumerate(CLASSES):
            for n in range(count):
                height, width = SIZES[(n + 2 * label) % len(SIZES)]
                image = rng.integers(0, 100, (height, width, 3)).astype(np.uint8)
                image[..., label] += 120
                out = io.BytesIO()
                Image.fromarray(image).save(out, format="JPEG", quality=90)
                made[split].append((f"{name}_{n:02d}", out.getvalue(), label))
    return made


def write_imagefolder(root: Path, made: dict) -> Path:
    for split, items in made.items():
        for key, data, label in items:
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.jpg").write_bytes(data)
    return root


def write_tars(root: Path, made: dict) -> dict[str, list[str]]:
    """The same images as WebDataset tars (``<key>.jpg`` + ``<key>.cls``), in the same order."""
    root.mkdir(parents=True, exist_ok=True)
    urls: dict[str, list[str]] = {}
    for split, items in made.items():
        chunks = [items[: len(items) // 2], items[len(items) // 2:]] if split == "train" else [items]
        urls[split] = []
        for number, chunk in enumerate(chunks):
            path = root / f"{split}-{number:06d}.tar"
            with tarfile.open(path, "w") as tar:
                for key, data, label in chunk:
                    for suffix, payload in (("jpg", data), ("cls", str(label).encode())):
                        info = tarfile.TarInfo(f"{key}.{suffix}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
            urls[split].append(str(path))
    return urls


def teacher_weights(path: Path) -> Path:
    """A timm model saved the way most training scripts save one: a plain state dict."""
    torch.manual_seed(3)
    model = timm.create_model(TEACHER_ARCH, num_classes=len(CLASSES), pretrained=False)
    torch.save(model.state_dict(), path)
    return path


def job(source: dict, weights: Path) -> dict:
    student = {"model": {"arch": f"timm:{TEACHER_ARCH}"}, "train": {"steps": 4, "batch_size": 16, "num_workers": 0}}
    return {
        "name": "yourdata", "seed": 0, "source": source, "image": CONTRACT,
        # the member's own size is overridden (160 → 64: a quicker test); its mean, std and
        # interpolation stay timm's pretrained_cfg, which the tests check were applied
        "teachers": {"models": [{"arch": f"timm:{TEACHER_ARCH}", "weights": str(weights), "input": {"size": 64}}]},
        "teacher_stage": {"batch_size": 32, "actors": 1, "num_cpus": 0.5, "threads": 1},
        "student_stage": {"parallel": "off"},
        "sets": {"views": {"sampler": {"kind": "views", "views": 3}, "samples_per_shard": 40},
                 "mix": {"sampler": {"kind": "mix"}, "samples": 40, "samples_per_shard": 20}},
        "students": {"kd": {**student, "objective": "kd", "sets": {"views": 0.5, "mix": 0.5}, "kd": {"alpha": 1.0}}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("yourdata")
    made = make_images(root)
    folder = write_imagefolder(root / "folder", made)
    urls = write_tars(root / "tars", made)
    weights = teacher_weights(root / "teacher_state_dict.pt")
    sources = {"imagefolder": {"kind": "imagefolder", "path": str(folder)},
               "webdataset": {"kind": "webdataset", "urls": urls["train"], "test_urls": urls["test"]}}
    done = {}
    for kind, source in sources.items():
        config = write_config(root / f"{kind}.yaml", job(source, weights))
        result = transferset("run", str(config), "--out", str(root / kind), cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
        done[kind] = root / kind
        done[f"{kind}-stderr"] = result.stderr
    return {"root": root, "made": made, "weights": weights, "out": done, "sources": sources}


def test_plan_counts_the_forward_passes_run_reported_and_writes_nothing(runs, tmp_path) -> None:
    config = runs["root"] / "webdataset.yaml"
    lines = runs["out"]["webdataset-stderr"].splitlines()
    reported = [line for line in lines if "teacher forward passes in all" in line]
    assert len(reported) == 1 and " 112 teacher forward passes in all" in reported[0]  # 24 × 3 views + 40 mixes
    fresh = transferset("plan", str(config), "--out", str(tmp_path / "fresh"), "--json", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    cost = json.loads(fresh.stdout)
    assert cost["totals"]["teacher_forward_samples"] == 112 == cost["totals"]["to_make"]["teacher_forward_samples"]
    assert cost["teachers"]["weights"] == "imported" and not (tmp_path / "fresh").exists()
    before = tree(runs["out"]["webdataset"])
    again = transferset("plan", str(config), "--out", str(runs["out"]["webdataset"]), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["totals"]["to_make"]["teacher_forward_samples"] == 0  # all made: reused
    assert tree(runs["out"]["webdataset"]) == before


def records(set_dir: Path) -> list[dict]:
    return [decode_fields(fields) for url in sx.shard_urls(set_dir) for _, fields in fmt.iter_tar(url)]


def raw_train_image(made: dict, index: int) -> np.ndarray:
    with Image.open(io.BytesIO(made["train"][index][1])) as pil:
        return np.asarray(pil.convert("RGB"))


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset"])
def test_every_stored_image_has_the_contracts_size_and_views_replay(runs, kind) -> None:
    contract = ImageConfig(**CONTRACT)
    views = records(runs["out"][kind] / "sets" / "views")
    assert len(views) == 24 * 3
    for name in ("views", "mix"):
        assert {r["image"].shape for r in records(runs["out"][kind] / "sets" / name)} == {(48, 48, 3)}
    boxed = 0
    for record in views:
        params = record["meta"]["params"]
        aug, raw = params["aug"], raw_train_image(runs["made"], params["image"])
        if "box" in aug:
            boxed += 1
            expected = resized_box(raw, aug["box"], (48, 48), "bilinear")
        else:
            expected = eval_image(raw, contract)
        np.testing.assert_array_equal(record["image"], expected[:, ::-1] if aug["flip"] else expected)
    labels = [label for _, _, label in runs["made"]["train"]]
    assert all(r["label"] == labels[r["meta"]["params"]["image"]] for r in views)  # views keep the real label
    assert boxed == 48 and {tuple(np.shape(r["meta"]["params"]["aug"].get("box", ()))) for r in views} == {(4,), (0,)}


def test_imagefolder_and_webdataset_give_the_same_stored_pixels(runs) -> None:
    for name in ("views", "mix"):
        a = records(runs["out"]["imagefolder"] / "sets" / name)
        b = records(runs["out"]["webdataset"] / "sets" / name)
        assert [r["meta"]["params"] for r in a] == [r["meta"]["params"] for r in b]
        np.testing.assert_array_equal(np.stack([r["image"] for r in a]), np.stack([r["image"] for r in b]))


def test_the_teachers_pretrained_cfg_was_applied(runs) -> None:
    """Direct computation on stored images: resize to the timm model's input size with its
    interpolation (antialiased), normalise with its mean/std, forward the original weights."""
    cfg = timm.create_model(TEACHER_ARCH, pretrained=False).pretrained_cfg
    model = timm.create_model(TEACHER_ARCH, num_classes=len(CLASSES), pretrained=False)
    model.load_state_dict(torch.load(runs["weights"], weights_only=True))
    model.eval()
    chosen = records(runs["out"]["imagefolder"] / "sets" / "mix")[:6]
    x = torch.from_numpy(np.stack([r["image"] for r in chosen])).permute(0, 3, 1, 2).float() / 255
    assert cfg["input_size"][1:] != (64, 64)  # the override took the place of timm's size only
    x = F.interpolate(x, size=(64, 64), mode=cfg["interpolation"], antialias=True, align_corners=False)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.log_softmax(model(x).double(), dim=1).numpy()
    stored = np.stack([r["logp"] for r in chosen]).astype(np.float64)
    np.testing.assert_allclose(stored, expected, atol=2e-3)
    # the check has teeth: without the member's normalisation the targets would be far off
    with torch.no_grad():
        unnormalised = torch.log_softmax(model(x * torch.tensor(cfg["std"]).view(1, 3, 1, 1)).double(), 1).numpy()
    assert np.abs(unnormalised - stored).max() > 1e-2


def test_the_test_split_is_evaluated_through_resize_and_centre_crop(runs) -> None:
    contract = ImageConfig(**CONTRACT)
    out = runs["out"]["imagefolder"]
    run_dir = next((out / "students" / "kd").glob("seed-*"))
    result = json.loads((run_dir / "result.json").read_text())
    model, payload = load_model(run_dir / "model.pt", outputs=len(CLASSES), allowed_factories=())
    raw = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data, _ in runs["made"]["test"]]
    labels = np.array([label for _, _, label in runs["made"]["test"]])
    images = np.stack([eval_image(image, contract) for image in raw])
    resized = np.stack([np.asarray(Image.fromarray(im).resize((48, 48), Image.Resampling.BILINEAR)) for im in raw])
    assert np.abs(images.astype(int) - resized.astype(int)).mean() > 1  # a centre crop, not a plain resize
    spec = payload["input"]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(spec["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(spec["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1).numpy() == labels).mean())
    assert accuracy == pytest.approx(result["accuracy"], abs=1e-9)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def bad_run(runs, tmp_path: Path, raw: dict) -> tuple[str, dict]:
    before = tree(runs["root"])
    done = transferset_in_process("run", str(write_config(tmp_path / "bad.yaml", raw)), "--out", str(tmp_path / "out"),
                                  cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()
    assert tree(runs["root"]) == before
    return last_line(done.stderr), before


def test_an_unreadable_image_is_one_error_line(runs, tmp_path) -> None:
    folder = tmp_path / "folder"
    write_imagefolder(folder, runs["made"])
    (folder / "train" / "dog" / "dog_03.jpg").write_bytes(b"not a jpeg at all")
    line, _ = bad_run(runs, tmp_path, job({"kind": "imagefolder", "path": str(folder)}, runs["weights"]))
    assert line.startswith("error:") and "dog_03.jpg" in line


def test_a_tar_without_the_named_extensions_is_one_error_line(runs, tmp_path) -> None:
    urls = write_tars(tmp_path / "tars", runs["made"])
    source = {"kind": "webdataset", "urls": urls["train"], "test_urls": urls["test"], "image_ext": "webp"}
    line, _ = bad_run(runs, tmp_path, job(source, runs["weights"]))
    assert line.startswith("error:") and "webp" in line and "train-000000.tar" in line


def test_weights_that_do_not_fit_the_arch_are_one_error_line(runs, tmp_path) -> None:
    raw = job(runs["sources"]["imagefolder"], runs["weights"])
    raw["teachers"]["models"][0]["arch"] = "timm:test_efficientnet"
    line, _ = bad_run(runs, tmp_path, raw)
    assert line.startswith("error:") and "teacher_state_dict.pt" in line


def test_a_member_with_another_class_count_is_one_error_line(runs, tmp_path) -> None:
    torch.manual_seed(0)
    other = tmp_path / "five_classes.pt"
    torch.save(timm.create_model(TEACHER_ARCH, num_classes=5, pretrained=False).state_dict(), other)
    raw = job(runs["sources"]["imagefolder"], runs["weights"])
    raw["teachers"]["models"].append({"arch": f"timm:{TEACHER_ARCH}", "weights": str(other), "input": {"size": 64}})
    line, _ = bad_run(runs, tmp_path, raw)
    assert line.startswith("error:") and "five_classes.pt" in line and "5" in line and "3" in line
