"""The ``webdataset`` source: tar shards listed by their headers, each image read by byte range.

Tars are written with webdataset's own ``TarWriter`` (or ``tarfile`` for the broken ones) from
JPEGs of several sizes; every image read back is compared with decoding its member directly.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import webdataset as wds
from bad_input import assert_one_error_line, tree, write_config
from cli_runner import transferset_in_process
from PIL import Image
from pydantic import ValidationError

from core.config import SourceConfig
from core.errors import UserError
from core.sources import load_source
from core.sources.readers import read_image
from core.sources.webdataset import expand_urls, list_tar

SIZES = [(16, 16), (23, 31), (40, 12), (64, 48), (9, 70)]


def jpeg(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_shard(path: Path, samples: list[tuple[str, bytes, int]]) -> Path:
    """A tar as webdataset writes it: ``<key>.jpg`` and ``<key>.cls`` per sample."""
    with wds.TarWriter(str(path)) as writer:
        for key, image, label in samples:
            writer.write({"__key__": key, "jpg": image, "cls": label})
    return path


def write_members(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of exactly these members (for the broken shards webdataset would not write)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shards(root: Path, sizes: list[tuple[int, int]] = SIZES) -> dict[str, list[tuple[str, bytes, int]]]:
    """Two train shards and one test shard; labels 0..2 in train, and class 3 only in the test split."""
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[tuple[str, bytes, int]]] = {}
    for name, count, labels in (("train-000000", 5, [0, 1, 2, 0, 1]), ("train-000001", 4, [2, 2, 0, 1]),
                                ("test-000000", 3, [3, 0, 1])):
        samples = [(f"{name}-{i:04d}", jpeg(*sizes[(i + len(written)) % len(sizes)], seed=100 * len(written) + i),
                    labels[i]) for i in range(count)]
        write_shard(root / f"{name}.tar", samples)
        written[name] = samples
    return written


def config(root: Path, **extra: object) -> SourceConfig:
    return SourceConfig(kind="webdataset", urls=str(root / "train-{000000..000001}.tar"),
                        test_urls=[str(root / "test-000000.tar")], **extra)


def test_labels_order_and_pixels_follow_the_shard_list(tmp_path: Path) -> None:
    written = shards(tmp_path / "wds")
    cfg = config(tmp_path / "wds")
    train, test = load_source(cfg, "train"), load_source(cfg, "test")
    expected = written["train-000000"] + written["train-000001"]
    assert train.classes == test.classes == ["0", "1", "2", "3"]  # K over both splits: class 3 is test-only
    assert train.labels.tolist() == [label for _, _, label in expected]
    assert test.labels.tolist() == [3, 0, 1]
    assert [m.name for m in train._files] == [f"{key}.jpg" for key, _, _ in expected]
    assert train.shape == (*decoded(expected[0][1]).shape[:2], 3)
    for member, (_, data, _) in zip(train._files, expected, strict=True):
        with open(member.url, "rb") as handle:  # the recorded range holds exactly the member's bytes
            handle.seek(member.offset)
            assert handle.read(member.size) == data
        assert np.array_equal(read_image(member, 3), decoded(data))
    assert np.array_equal(train.image(0), decoded(expected[0][1]))
    assert train.identity["urls"] == [str(tmp_path / "wds" / f"train-00000{i}.tar") for i in (0, 1)]
    assert test.identity["urls"] == [str(tmp_path / "wds" / "test-000000.tar")]
    again = load_source(config(tmp_path / "wds"), "train")
    assert again.identity == train.identity and again._files == train._files


def test_brace_patterns_expand_in_order() -> None:
    assert expand_urls("s3://b/train-{000008..000011}.tar") == [f"s3://b/train-{n:06d}.tar" for n in range(8, 12)]
    assert expand_urls(["a-{0..1}.tar", "b.tar"]) == ["a-0.tar", "a-1.tar", "b.tar"]
    assert expand_urls("x-{a,b}.tar") == ["x-a.tar", "x-b.tar"]


def test_class_subset_fraction_and_names(tmp_path: Path) -> None:
    written = shards(tmp_path / "wds")
    expected = written["train-000000"] + written["train-000001"]
    subset = load_source(config(tmp_path / "wds", classes=["2", "0"]), "train")
    kept = [sample for sample in expected if sample[2] in (2, 0)]
    assert subset.classes == ["2", "0"]
    assert subset.labels.tolist() == [0 if label == 2 else 1 for _, _, label in kept]
    for i, (_, data, _) in enumerate(kept):
        assert np.array_equal(read_image(subset._files[i], 3), decoded(data))
    assert load_source(config(tmp_path / "wds", classes=["2", "0"]), "test").labels.tolist() == [1]

    fraction = load_source(config(tmp_path / "wds", fraction=0.5), "train")
    assert np.bincount(fraction.labels).tolist() == [2, 2, 2]  # round(half the smallest class, 3), per class
    for i, label in enumerate(fraction.labels):
        data = next(d for key, d, _ in expected if f"{key}.jpg" == fraction._files[i].name)
        assert label == next(lab for key, _, lab in expected if f"{key}.jpg" == fraction._files[i].name)
        assert np.array_equal(read_image(fraction._files[i], 3), decoded(data))
    assert fraction.identity["fraction"] == 0.5

    named = load_source(config(tmp_path / "wds", class_names=["cat", "dog", "eel", "fox", "gnu"]), "train")
    assert named.classes == ["cat", "dog", "eel", "fox", "gnu"]
    with pytest.raises(UserError, match=r"test-000000.tar has label 3, but class_names lists 3 classes"):
        load_source(config(tmp_path / "wds", class_names=["cat", "dog", "eel"]), "train")


def io_bytes_read() -> int:
    """Bytes this process has read through read(2) so far (Linux's /proc/self/io ``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="needs Linux's /proc/self/io")
def test_listing_reads_headers_and_an_image_only_its_range(tmp_path: Path) -> None:
    samples = [(f"big-{i:03d}", jpeg(240, 240, seed=i), i % 2) for i in range(12)]
    path = write_shard(tmp_path / "big.tar", samples)
    cfg = SourceConfig(kind="webdataset", urls=[str(path)], test_urls=[str(path)])
    before = io_bytes_read()
    listing = list_tar(str(path), cfg)
    listed = io_bytes_read() - before
    total = path.stat().st_size
    assert min(len(data) for _, data, _ in samples) > 40_000
    # the headers and labels, in 8 KiB buffer fills: at most two per sample, never the images
    assert listed <= len(samples) * 2 * 8192 and listed < total / 4, f"listing read {listed} of {total} bytes"
    member = listing.images[7]
    before = io_bytes_read()
    image = read_image(member, 3)
    read = io_bytes_read() - before
    assert member.size <= read <= member.size + 8192, f"image {member.size} bytes, {read} read"
    assert np.array_equal(image, decoded(samples[7][1]))
    # Everything outside that range overwritten: the image still reads the same.
    data = bytearray(b"\xff" * total)
    data[member.offset:member.offset + member.size] = path.read_bytes()[member.offset:member.offset + member.size]
    path.write_bytes(bytes(data))
    assert np.array_equal(read_image(member, 3), decoded(samples[7][1]))


def test_shards_at_a_url_equal_the_local_ones(tmp_path: Path) -> None:
    shards(tmp_path / "wds")
    fs = fsspec.filesystem("memory")
    try:
        fs.put(str(tmp_path / "wds"), "/wds-test", recursive=True)
        remote = SourceConfig(kind="webdataset", urls="memory://wds-test/train-{000000..000001}.tar",
                              test_urls="memory://wds-test/test-000000.tar")
        for split in ("train", "test"):
            local, there = load_source(config(tmp_path / "wds"), split), load_source(remote, split)
            assert there.classes == local.classes and np.array_equal(there.labels, local.labels)
            assert there.identity["tars"] == local.identity["tars"]
            for a, b in zip(local._files, there._files, strict=True):
                assert (a.offset, a.size, a.name) == (b.offset, b.size, b.name)
                assert np.array_equal(read_image(a, 3), read_image(b, 3))
    finally:
        fs.rm("/wds-test", recursive=True)


def test_a_changed_tar_changes_the_identity(tmp_path: Path) -> None:
    written = shards(tmp_path / "wds")
    before = load_source(config(tmp_path / "wds"), "train")
    first = before.identity
    samples = list(written["train-000001"])
    samples[2] = (samples[2][0], jpeg(33, 21, seed=99), samples[2][2])
    write_shard(tmp_path / "wds" / "train-000001.tar", samples)
    second = load_source(config(tmp_path / "wds"), "train")
    assert second.identity["tars"][0] == first["tars"][0] and second.identity["tars"][1] != first["tars"][1]
    assert second.fingerprint() != before.fingerprint()
    assert np.array_equal(read_image(second._files[7], 3), decoded(samples[2][1]))


def test_an_undecodable_member_names_the_tar_and_member(tmp_path: Path) -> None:
    good = jpeg(16, 16, seed=1)
    path = write_members(tmp_path / "bad.tar", [("a.cls", b"0"), ("a.jpg", good), ("b.cls", b"1"),
                                                ("b.jpg", b"not a jpeg at all")])
    source = load_source(SourceConfig(kind="webdataset", urls=[str(path)], test_urls=[str(path)]), "train")
    assert np.array_equal(source.image(0), decoded(good))
    with pytest.raises(UserError, match=r"bad.tar member b.jpg: unreadable"):
        source.image(1)


# ---------------------------------------------------------------- through the installed command

TINY_JOB = {
    "name": "wds", "seed": 0,
    "teachers": {"model": {"arch": "tiny_cnn", "arch_kwargs": {"width": 4}}, "members": 1,
                 "train": {"steps": 5, "batch_size": 16}},
    "teacher_stage": {"batch_size": 64, "actors": 1, "num_cpus": 0.5, "threads": 1},
    "student_stage": {"parallel": "off"},
    "sets": {"real": {"sampler": {"kind": "views", "views": 1}, "samples_per_shard": 16}},
}


def tinted(label: int, seed: int) -> bytes:
    """A 16×16 JPEG whose brightness tells its class (a teacher learns it in a few steps)."""
    noise = np.random.default_rng(seed).integers(0, 40, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 60 * label, np.uint8) + noise).save(buffer, format="JPEG")
    return buffer.getvalue()


def job_on(source: dict[str, object], directory: Path) -> Path:
    return write_config(directory / "job.yaml", {**TINY_JOB, "source": {"kind": "webdataset", **source}})


def test_a_views_set_of_the_tar_images_holds_each_image_and_its_label(tmp_path: Path) -> None:
    """The stages on a webdataset source (no Ray: ``transferset run`` on tars is
    tests/test_jpeg_folders_and_tars_chain.py)."""
    from conftest import draw_spec

    from core.config import SetConfig, sampler_config
    from stages.writer import make_shard

    samples = {split: [(f"{split}{i:04d}", tinted(i % 3, i), i % 3) for i in range(count)]
               for split, count in (("train", 40), ("test", 12))}
    write_shard(tmp_path / "train-000000.tar", samples["train"][:24])
    write_shard(tmp_path / "train-000001.tar", samples["train"][24:])
    write_shard(tmp_path / "test-000000.tar", samples["test"])
    source_cfg = SourceConfig(kind="webdataset", urls=str(tmp_path / "train-{000000..000001}.tar"),
                              test_urls=[str(tmp_path / "test-000000.tar")])
    spec = draw_spec(SetConfig(sampler=sampler_config(kind="views", views=1), samples_per_shard=16), source_cfg)
    assert spec.total == 40 and spec.classes == ("0", "1", "2") and spec.image_shape == (16, 16, 3)
    seen = []
    for shard in range(spec.shards):
        images, drawn, labels = make_shard(spec, shard)
        for image, (_, params), label in zip(images, drawn, labels, strict=True):
            _, data, expected = samples["train"][params["image"]]
            assert np.array_equal(image, decoded(data))  # view 0: the image itself
            assert label == expected
            seen.append(params["image"])
    assert sorted(seen) == list(range(40))


def broken_tar(kind: str, directory: Path) -> Path:
    good = jpeg(16, 16, seed=0)
    path = directory / "train-000000.tar"
    if kind == "truncated":
        write_shard(path, [(f"s{i}", jpeg(16, 16, seed=i), 0) for i in range(4)])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not-a-tar":
        path.write_text("these are not the tar shards you are looking for\n" * 40)
    elif kind == "gzip":
        write_shard(directory / "plain.tar", [("s0", good, 0)])
        path.write_bytes(gzip.compress((directory / "plain.tar").read_bytes()))
    else:
        members = {"no-image": [("a.cls", b"0"), ("a.txt", b"hello")],
                   "no-label": [("a.cls", b"0"), ("a.jpg", good), ("b.jpg", good)],
                   "bad-label": [("a.cls", b"cat"), ("a.jpg", good)],
                   "bad-image": [("a.cls", b"0"), ("a.jpg", good), ("b.cls", b"1"), ("b.jpg", b"no jpeg")]}[kind]
        write_members(path, members)
    return path


BAD_TARS = [
    ("missing", ("source.urls", "nope.tar", "not found")),
    ("truncated", ("source.urls", "train-000000.tar", "truncated")),
    ("not-a-tar", ("source.urls", "train-000000.tar", "not a readable uncompressed tar")),
    ("gzip", ("train-000000.tar", "gzip-compressed")),
    ("no-image", ("train-000000.tar", "no member with an image extension jpg;jpeg;png;webp", "cls, txt")),
    ("no-label", ("train-000000.tar", "sample b has an image but no .cls label member")),
    ("bad-label", ("train-000000.tar", "a.cls", "'cat' is not a non-negative integer")),
    ("bad-image", ("train-000000.tar member b.jpg", "unreadable")),
    ("empty-list", ("source.urls", "empty")),
]


@pytest.mark.parametrize(("kind", "needles"), BAD_TARS, ids=[kind for kind, _ in BAD_TARS])
def test_bad_shards_get_one_line_and_nothing_is_written(kind: str, needles: tuple[str, ...], tmp_path: Path) -> None:
    test_tar = write_shard(tmp_path / "test-000000.tar", [("t0", jpeg(16, 16, seed=5), 0)])
    if kind == "missing":
        urls: object = [str(tmp_path / "nope.tar")]
    elif kind == "empty-list":
        urls = []
    else:
        urls = [str(broken_tar(kind, tmp_path))]
    config_path = job_on({"urls": urls, "test_urls": [str(test_tar)]}, tmp_path)
    before = tree(tmp_path)
    result = transferset_in_process("run", config_path, "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_error_line(result, needles)
    assert tree(tmp_path) == before, "the command wrote or changed files"


def test_a_tar_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "cut.tar", [(f"s{i}", jpeg(16, 16, seed=i), 0) for i in range(3)])
    with tarfile.open(path) as tar:
        boundary = [m for m in tar][2].offset  # the header of the second sample: tarfile ends here quietly
    path.write_bytes(path.read_bytes()[:boundary])
    with pytest.raises(UserError, match=r"cut.tar is truncated or damaged at byte \d+"):
        load_source(SourceConfig(kind="webdataset", urls=[str(path)], test_urls=[str(path)]), "train")


def test_the_config_keys_belong_to_webdataset() -> None:
    with pytest.raises(ValidationError, match="needs source.test_urls"):
        SourceConfig(kind="webdataset", urls=["a.tar"])
    with pytest.raises(ValidationError, match=r"\['image_ext', 'urls'\] apply to kind 'webdataset' only"):
        SourceConfig(kind="digits", urls=["a.tar"], image_ext="png")
    with pytest.raises(ValidationError, match="not path"):
        SourceConfig(kind="webdataset", urls="a.tar", test_urls="b.tar", path="x")
    digits = SourceConfig(kind="digits")
    assert SourceConfig.model_validate_json(digits.model_dump_json()) == digits  # as workers receive it
    assert "urls" not in digits.model_dump(exclude=digits.unused_webdataset_keys())


def test_samples_without_an_image_and_doubled_members_are_refused(tmp_path: Path) -> None:
    good = jpeg(16, 16, seed=1)
    cases = {"no-image.tar": ([("a.cls", b"0"), ("a.jpg", good), ("b.cls", b"1"), ("b.json", b"{}")],
                              r"no-image.tar sample b has no image member jpg;jpeg;png;webp \(it has cls, json\)"),
             "twice.tar": ([("a.cls", b"0"), ("a.jpg", good), ("a.JPG", good)], r"twice.tar sample a has two .jpg"),
             "png-only.tar": ([("a.cls", b"0"), ("a.png", good)],
                              r"png-only.tar has no member with an image extension jpg \(its members' extensions: "
                              r"cls, png\)")}
    for name, (members, message) in cases.items():
        path = write_members(tmp_path / name, members)
        cfg = SourceConfig(kind="webdataset", urls=[str(path)], test_urls=[str(path)], image_ext="jpg"
                           if name == "png-only.tar" else "jpg;jpeg;png;webp")
        with pytest.raises(UserError, match=message):
            load_source(cfg, "train")
