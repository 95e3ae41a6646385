"""Views-only sets in format 2's order: view-major, each view in its own seeded image order.

The mapping's values (every (image, view) once, a shard of distinct images, a capped set covering
every image before a second view), two generations byte for byte, the fingerprint rule (only
views-only sets change), and format-1 sets (``tests/format1.py``): still read by the trainer,
``verify`` and ``inspect``, and never grown or replaced by format-2 shards."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from bad_input import assert_one_error_line, transferset, tree
from conftest import generate_set_in, job_config, snapshot
from format1 import write_format1_set

from core.config import SetConfig, SourceConfig, sampler_config
from core.records import format as fmt
from core.samplers import sample_rng
from core.samplers.base import draw_view, identity_view
from core.sets import index as sx
from core.sets.fingerprint import content_version, fingerprint_payload, set_fingerprint
from core.sources import Source, load_source
from core.tasks import decode_fields
from pipeline.generate.plan import plan_set
from pipeline.generate.set_gc import collect
from pipeline.inspect import inspect_set
from pipeline.inspect.verify import verify_set
from stages.samplers import draw_shard, set_size
from student.shards import decode_shard
from student.stream import transfer_loader

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"kind": "digits", "fraction": 0.1}  # 140 images: 3 views are 420 samples, 4 shards
VIEWS = SetConfig(sampler=sampler_config(kind="views", views=3), samples_per_shard=128)


def drawn_set(set_cfg: SetConfig, source: Source, seed: int = 0) -> list[tuple[int, int, dict[str, Any]]]:
    """``(shard, index, params)`` of every sample of the set, in set order."""
    spp, total = set_cfg.samples_per_shard, set_size(set_cfg, source)
    return [(shard, index, params) for shard in range(-(-total // spp))
            for index, (_, params) in enumerate(draw_shard(set_cfg, source, seed, shard, total))]


def toy_source(n: int) -> Source:
    images = np.random.default_rng(0).integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)
    return Source(name="toy", classes=[str(c) for c in range(10)], labels=np.arange(n) % 10, identity={"toy": n},
                  pad=1, flip=True, _images=images, shape=(4, 4, 1))


# ---------------------------------------------------------------- the mapping


def test_every_image_and_view_once_view_by_view_each_view_in_its_own_order() -> None:
    source = load_source(SourceConfig(kind="digits"), "train")
    n, seed = len(source), 7
    drawn = drawn_set(SetConfig(sampler=sampler_config(kind="views", views=3), samples_per_shard=500), source, seed)
    assert len(drawn) == 3 * n
    pairs = [(params["image"], params["view"]) for _, _, params in drawn]
    assert sorted(pairs) == sorted(itertools.product(range(n), range(3)))  # each (image, view) exactly once
    orders = []
    for view in range(3):  # position p: view p // n, image perm_v[p % n], perm_v from (seed, SET_STREAM, v)
        block = drawn[view * n:(view + 1) * n]
        assert {params["view"] for _, _, params in block} == {view}
        orders.append([params["image"] for _, _, params in block])
        np.testing.assert_array_equal(orders[-1], np.random.default_rng([seed, 0xFFFFFFFF, view]).permutation(n))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    for shard, index, params in drawn:  # view 0 is the image itself; the others draw from (seed, shard, index)
        rng = sample_rng(seed, shard, index)
        expected = identity_view(source, params["image"]) if params["view"] == 0 else \
            draw_view(rng, source, params["image"])
        assert params["aug"] == expected


def test_a_shard_holds_distinct_images_not_the_views_of_a_few() -> None:
    """1 000 images × 128 views, 1 024 a shard: format 1 put 8 images in a shard."""
    source = toy_source(1000)
    set_cfg = SetConfig(sampler=sampler_config(kind="views", views=128), samples_per_shard=1024)
    total = set_size(set_cfg, source)
    distinct = [len({p["image"] for _, p in draw_shard(set_cfg, source, 0, shard, total)}) for shard in range(12)]
    assert distinct[0] == 1000
    assert min(distinct) >= 512  # a shard spans at most two views, so one of them gives ≥ 512 images
    assert sum(distinct) / len(distinct) > 800


def test_a_capped_set_covers_every_image_before_any_second_view() -> None:
    source = load_source(SourceConfig(kind="digits"), "train")
    n = len(source)
    for samples, first_views in ((n + 100, {0: n, 1: 100}), (300, {0: 300})):
        set_cfg = SetConfig(sampler=sampler_config(kind="views", views=4), samples=samples, samples_per_shard=256)
        drawn = [params for _, _, params in drawn_set(set_cfg, source)]
        assert len(drawn) == samples
        views = [params["view"] for params in drawn]
        assert {v: views.count(v) for v in set(views)} == first_views and views == sorted(views)
        assert len({params["image"] for params in drawn[:n]}) == min(samples, n)  # no image twice first


# ---------------------------------------------------------------- the fingerprint rule


def format1_rule(set_cfg: SetConfig, identity: dict[str, Any]) -> str:
    """The fingerprint format 1 computed: the payload with ``format: 1``."""
    payload = {**fingerprint_payload(set_cfg, identity, ["a", "b"], 0), "format": 1}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
                          .encode()).hexdigest()


def test_only_views_only_sets_change_their_fingerprint() -> None:
    source = load_source(SourceConfig(kind="digits"), "train")
    kept = [SetConfig(sampler=sampler_config(kind=kind), samples=64) for kind in ("mix", "cutmix", "mixup", "noise")]
    kept += [SetConfig(samplers=[sampler_config(kind="views"), sampler_config(kind="mix")], samples=64),  # random views
             SetConfig(sampler=sampler_config(kind="mix"), samples=64, targets={"dtype": "float16"}),  # regression mix
             SetConfig(sampler=sampler_config(kind="mix"), samples=64, store="replay")]
    for set_cfg in kept:
        assert content_version(set_cfg) == 1
        assert set_fingerprint(set_cfg, source, ["a", "b"], 0) == format1_rule(set_cfg, source.identity)
    views = sampler_config(kind="views", views=3)
    changed = [SetConfig(sampler=views), SetConfig(sampler=views, samples=64),  # capped or not
               SetConfig(sampler=views, targets={"dtype": "float16"}), SetConfig(sampler=views, store="replay")]
    for set_cfg in changed:
        assert content_version(set_cfg) == 2
        assert set_fingerprint(set_cfg, source, ["a", "b"], 0) != format1_rule(set_cfg, source.identity)


# ---------------------------------------------------------------- generated sets, both formats


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[str, Path]:
    """A views set generated twice (format 2, through Ray) and the same set as format 1 wrote it."""
    root = tmp_path_factory.mktemp("views-order")
    for copy in ("a", "b"):
        generate_set_in(root / copy, VIEWS, teachers, name="real", source=SMALL)
    write_format1_set(root / "old", VIEWS, teachers, name="real", source=SMALL)
    return {"new": root / "a", "again": root / "b", "old": root / "old", "root": root}


def records(set_dir: Path) -> list[dict[str, Any]]:
    return [decode_fields(fields) for url in sx.shard_urls(set_dir) for _, fields in fmt.iter_tar(url)]


def test_two_generations_are_byte_identical_and_hold_every_view(made) -> None:
    assert snapshot(made["new"]) == snapshot(made["again"])
    stored = [r["meta"]["params"] for r in records(made["new"])]
    assert sorted((p["image"], p["view"]) for p in stored) == sorted(itertools.product(range(140), range(3)))
    assert [p["view"] for p in stored] == sorted(p["view"] for p in stored)  # view-major
    assert json.loads((made["new"] / "index.json").read_text())["format"] == 2


def test_the_format1_set_is_the_old_layout_with_the_same_views(made) -> None:
    old, new = records(made["old"]), records(made["new"])
    assert json.loads((made["old"] / "index.json").read_text())["format"] == 1
    first = [r["meta"]["params"] for r in old[:3]]
    assert {p["image"] for p in first} == {first[0]["image"]} and [p["view"] for p in first] == [0, 1, 2]
    # The same identity views in both orders: the same pixels labelled by the same teachers.
    by_image = {r["meta"]["params"]["image"]: r for r in new if r["meta"]["params"]["view"] == 0}
    for r in (r for r in old if r["meta"]["params"]["view"] == 0):
        twin = by_image[r["meta"]["params"]["image"]]
        np.testing.assert_array_equal(r["image"], twin["image"])
        np.testing.assert_array_equal(r["logp"], twin["logp"])


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["old", "new"])
def test_verify_and_inspect_read_both_formats(made, which) -> None:
    set_dir = made[which]
    assert verify_set(set_dir) == []
    result = transferset("verify", set_dir, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr[-2000:]
    stats = inspect_set(set_dir)
    assert stats["samples"] == 420 and stats["per_sampler"] == {"views": 420}


@pytest.mark.parametrize("which", ["old", "new"])
def test_the_trainer_reads_both_formats(made, which) -> None:
    set_dir = made[which]
    stored = records(set_dir)
    targets = {r["image"].tobytes(): r["logp"].astype(np.float32) for r in stored}
    labels = {r["image"].tobytes(): r["label"] for r in stored}
    index = sx.read_index(set_dir)
    arrays = decode_shard(sx.shard_urls(set_dir, index)[0], index.shards[0].samples, 10)
    params = [r["meta"]["params"] for r in stored[:len(arrays)]]
    np.testing.assert_array_equal(arrays.sources[:, 0], [p["image"] for p in params])
    loader = transfer_loader([(str(set_dir), 1.0)], 32, seed=0, shuffle_window=64)
    seen = 0
    for batch in itertools.islice(iter(loader), 8):
        for image, target, label in zip(batch["image"], batch["target"], batch["label"], strict=True):
            key = image.permute(1, 2, 0).numpy().tobytes()
            np.testing.assert_array_equal(target.numpy(), targets[key])  # a stored sample, its own target
            assert int(label) == labels[key]
            seen += 1
    assert seen == 8 * 32


# ---------------------------------------------------------------- old directories stay as they are


def job_file(path: Path, teachers: list[Path], out: str) -> Path:
    raw = {"name": "order", "seed": 0, "source": SMALL,
           "teachers": {"model": {"arch": "tiny_cnn"}, "members": len(teachers), "train": {"steps": 1},
                        "checkpoints": [str(p) for p in teachers]},
           "teacher_stage": {"batch_size": 128}, "ray": {"num_cpus": 2},
           "sets": {"real": {**VIEWS.model_dump(mode="json", exclude_defaults=True), "out": out}}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.e2e
def test_a_format1_directory_is_refused_not_grown_or_replaced(made, teachers, tmp_path) -> None:
    old = shutil.copytree(made["old"], tmp_path / "old")
    fingerprint = sx.read_index(old).fingerprint
    unfinished = shutil.copytree(made["old"], tmp_path / "unfinished")  # a killed format-1 run: no index yet
    (unfinished / sx.INDEX_NAME).unlink()
    (unfinished / sx.MANIFEST_NAME).unlink()
    refusals = [(old, "holds set with fingerprint {} (a format-1 views set; format 2 writes views sets in another "
                      "order), this config gives"), (unfinished, "holds an unfinished set with fingerprint {}")]
    for directory, needle in refusals:
        before = tree(directory)
        result = transferset("generate", job_file(tmp_path / "job.yaml", teachers, str(directory)),
                             "--out", tmp_path / "job", cwd=tmp_path)
        assert_one_error_line(result, [str(directory), needle.format(fingerprint), "choose another --out or delete it"])
        assert tree(directory) == before


def test_out_auto_puts_the_new_layout_beside_an_old_cache_entry(made, teachers, tmp_path) -> None:
    old_name = f"real-{sx.read_index(made['old']).fingerprint[:12]}"
    shutil.copytree(made["old"], tmp_path / "cache" / old_name)
    cfg = job_config({"real": VIEWS.model_copy(update={"out": "auto"})}, source=SMALL,
                     cache_root=str(tmp_path / "cache"))
    plan = plan_set(cfg, "real", tmp_path / "unused", teachers)
    assert Path(plan.spec.out_dir).parent == tmp_path / "cache" and Path(plan.spec.out_dir).name != old_name
    assert plan.index is None and plan.spec.fingerprint == sx.read_index(made["new"]).fingerprint


def test_a_grown_capped_views_set_keeps_its_shards(made, teachers, tmp_path) -> None:
    """Growing a capped set adds positions after the old ones (the same fingerprint): no shard
    changes, and the grown set (after gc) is the set made at the larger size in one go."""
    capped = VIEWS.model_copy(update={"samples": 200})
    generate_set_in(tmp_path / "grown", capped, teachers, name="real", source=SMALL)
    before = snapshot(tmp_path / "grown")
    generate_set_in(tmp_path / "grown", VIEWS, teachers, name="real", source=SMALL)
    after = snapshot(tmp_path / "grown")
    assert after[f"shards/{sx.shard_name(0)}"] == before[f"shards/{sx.shard_name(0)}"]
    assert {k: v for k, v in before.items() if k.startswith("shards/")}.items() <= after.items()  # none changed
    collect(str(tmp_path / "grown"))  # the short shard the growth completed, unlisted since
    assert snapshot(tmp_path / "grown") == snapshot(made["new"])


@pytest.mark.e2e
def test_unknown_format_versions_are_refused_with_one_line(made, tmp_path) -> None:
    for found in (4, "2"):  # format 3 (packed sets) is known since it was added
        set_dir = shutil.copytree(made["new"], tmp_path / f"v{found}")
        raw = json.loads((set_dir / sx.INDEX_NAME).read_text())
        (set_dir / sx.INDEX_NAME).write_text(json.dumps({**raw, "format": found}))
        result = transferset("inspect", set_dir, cwd=tmp_path)
        assert_one_error_line(result, [f"format {found!r}, this version reads formats 1, 2, 3"])
