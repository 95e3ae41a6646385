"""The bad-input corpus: broken configs, sources, checkpoints, command lines and damaged sets, each
run through the ``transferset`` command as a user would: a dozen cases (``SCRIPT``: one or more of
each kind of failure, and every input that needs a memory limit or a timeout) through the installed
console script as a subprocess, the rest through the same entry point in this process
(tests/cli_runner.py: ``pipeline.cli:main`` with ``sys.argv`` set, its exit code and stderr).

Every case asserts the exit code (2 for bad input, 1 for the problems ``verify`` finds), a last
stderr line that starts with ``error:`` and names the field or file, no traceback anywhere, and
that nothing was written, changed or deleted: neither in the finished job (its teachers, sets and
students) nor among the case's own inputs (a damaged set stays exactly as damaged as it was).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bad_input import (
    Corpus,
    RunsCode,
    alias_bomb,
    bombed_folder,
    box_out_of_range,
    checkpoint_payload,
    damaged_replay,
    flip_byte,
    imagefolder,
    job_with,
    lam_out_of_range,
    last_line,
    last_shard,
    linked_folder,
    npz,
    offset_out_of_range,
    save_torch,
    shard,
    transferset,
    tree,
    truncate,
    with_overrides,
    write_config,
)
from cli_runner import transferset_in_process

Build = Callable[[Corpus, Path], list[object]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build  # (corpus, the case's own directory) -> the command's arguments
    needles: tuple[str, ...]  # each must appear in the last stderr line
    code: int = 2
    writes: str | None = None  # new files allowed under this part of the case's directory (its own output)
    timeout: float = 600  # seconds; an input that once hung the command gets less
    memory: int | None = None  # an address-space limit, for inputs that once ate the memory

    @property
    def script(self) -> bool:
        """Run through the installed script as a subprocess (else in this process)."""
        return self.id in SCRIPT or self.memory is not None or self.timeout < 600


def gen(*overrides: str) -> Build:
    """``generate`` of the finished job with ``--set`` overrides."""
    return lambda c, _: ["generate", c.config, "--out", c.job, *[a for o in overrides for a in ("--set", o)]]


def train(*overrides: str, student: str = "kd") -> Build:
    return lambda c, _: ["train", c.config, "--out", c.job, "--student", student,
                         *[a for o in overrides for a in ("--set", o)]]


def config_file(content: bytes | str | Callable[[], str] | None, directory: bool = False) -> Build:
    """``run`` of a config file with this content (None: no file; ``directory``: a directory; a
    function: the content, made when the case runs)."""
    def build(c: Corpus, tmp: Path) -> list[object]:
        path = tmp / "job.yaml"
        text = content() if callable(content) else content
        if directory:
            path.mkdir()
        elif text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", path, "--out", c.job]
    return build


def write_yaml(raw: dict) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False, width=1 << 30)


def own_config(**changes: object) -> Build:
    """``run`` into a fresh OUT of JOB with ``dotted__keys`` changed (a source, a checkpoint)."""
    def build(c: Corpus, tmp: Path) -> list[object]:
        resolved = {k: (v(c, tmp) if callable(v) else v) for k, v in changes.items()}
        return ["run", write_config(tmp / "job.yaml", job_with(**resolved)), "--out", tmp / "out"]
    return build


def with_checkpoint(make: Callable[[Corpus, Path], Path]) -> Build:
    """``generate`` into a fresh OUT with ``teachers.checkpoints`` = the file ``make`` writes."""
    return own_config(teachers__checkpoints=lambda c, tmp: [str(make(c, tmp))])


def damaged_set(damage: Callable[[Path], object], verb: str = "verify") -> Build:
    """``verify`` / ``inspect`` a copy of the job's views set after ``damage``."""
    def build(c: Corpus, tmp: Path) -> list[object]:
        copy = c.copy_set("real", tmp / "real")
        damage(copy)
        return [verb, copy]
    return build


def damaged_job(damage: Callable[[Path], object]) -> Build:
    """``train --student kd`` in a copy of the job whose views set has been damaged."""
    def build(c: Corpus, tmp: Path) -> list[object]:
        job = c.copy_job(tmp / "job")
        (job / "students").rename(tmp / "students-of-the-copy")  # no reuse: the sets are read
        damage(job / "sets" / "real")
        return ["train", c.config, "--out", job, "--student", "kd"]
    return build


def checkpoint_with(edit: Callable[[dict], object]) -> Callable[[Corpus, Path], Path]:
    def make(c: Corpus, tmp: Path) -> Path:
        payload = checkpoint_payload(c)
        edit(payload)
        return save_torch(tmp / "teacher.pt", payload)
    return make


def text_file(name: str, content: bytes) -> Callable[[Corpus, Path], Path]:
    def make(_: Corpus, tmp: Path) -> Path:
        (tmp / name).write_bytes(content)
        return tmp / name
    return make


def folder(sizes: list[tuple[int, int]], garbage: int | None = None) -> Callable[[Corpus, Path], str]:
    return lambda _, tmp: str(imagefolder(tmp / "images", sizes, garbage))


def npz_file(**arrays: object) -> Callable[[Corpus, Path], str]:
    return lambda _, tmp: str(npz(tmp / "data.npz", **arrays))


def unlink(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def overwrite(relative: str, content: bytes) -> Callable[[Path], None]:
    return lambda root: (root / relative).write_bytes(content)


IMAGES = np.zeros((20, 8, 8), np.uint8)
LABELS = np.arange(20) % 2
SHARD = "shards/shard-000001.tar"

CONFIG_FILES = [
    Case("config-missing", lambda c, tmp: ["run", tmp / "nope.yaml"], ("nope.yaml", "file not found")),
    Case("config-directory", config_file(None, directory=True), ("job.yaml", "is a directory")),
    Case("config-empty", config_file(""), ("job.yaml", "expected a mapping")),
    Case("config-not-utf8", config_file(b"name: caf\xe9\n"), ("job.yaml", "not UTF-8")),
    Case("config-not-yaml", config_file("name: [unclosed\n"), ("job.yaml", "not valid YAML")),
    Case("config-a-list", config_file("- name: x\n"), ("job.yaml", "expected a mapping")),
    Case("config-a-scalar", config_file("just words\n"), ("job.yaml", "expected a mapping")),
    Case("config-tabs", config_file("name: x\n\tseed: 1\n"), ("job.yaml", "not valid YAML")),
]
UNKNOWN_KEYS = [
    Case("key-top", gen("teacher.members=2"), ("teacher", "Extra inputs")),
    Case("key-source", gen("source.padding=2"), ("source.padding", "Extra inputs")),
    Case("key-teachers", gen("teachers.membrs=3"), ("teachers.membrs", "Extra inputs")),
    Case("key-teachers-train", gen("teachers.train.stepz=3"), ("teachers.train.stepz", "Extra inputs")),
    Case("key-teacher-stage", gen("teacher_stage.gpus=1"), ("teacher_stage.gpus", "Extra inputs")),
    Case("key-ray", gen("ray.adress=auto"), ("ray.adress", "Extra inputs")),
    Case("key-set", gen("sets.mix.sample=10"), ("sets.mix.sample", "Extra inputs")),
    Case("key-sampler", gen("sets.mix.sampler.views=3"), ("sets.mix.sampler", "does not take ['views']")),
    Case("key-targets", gen("sets.mix.targets.topk=3"), ("sets.mix.targets.topk", "Extra inputs")),
    Case("key-student", train("students.kd.epochs=3"), ("students.kd.epochs", "Extra inputs")),
    Case("key-student-kd", train("students.kd.kd.temp=3"), ("students.kd.kd.temp", "Extra inputs")),
    Case("key-student-train", train("students.kd.train.lr_decay=3"), ("students.kd.train.lr_decay", "Extra")),
    Case("key-student-model", train("students.kd.model.depth=3"), ("students.kd.model.depth", "Extra inputs")),
    Case("key-report", gen("report.baselin=kd"), ("report.baselin", "Extra inputs")),
]
WRONG_VALUES = [
    Case("type-members", gen("teachers.members=many"), ("teachers.members", "integer")),
    Case("type-samples", gen("sets.mix.samples=[1]"), ("sets.mix.samples", "integer")),
    Case("type-lr", train("students.kd.train.lr=fast"), ("students.kd.train.lr", "number")),
    Case("type-seed", gen("seed=zero"), ("seed", "integer")),
    Case("type-sets", train("students.kd.sets=[real]"), ("students.kd.sets", "dictionary")),
    Case("type-source", gen("source=digits"), ("source", "SourceConfig")),
    Case("range-members", gen("teachers.members=0"), ("teachers.members", "greater than or equal to 1")),
    Case("range-samples", gen("sets.mix.samples=-5"), ("sets.mix.samples", "greater than 0")),
    Case("range-alpha", train("students.kd.kd.alpha=1.5"), ("students.kd.kd.alpha", "less than or equal to 1")),
    Case("range-temperature", train("students.kd.kd.temperature=0"), ("students.kd.kd.temperature", "greater")),
    Case("range-views", gen("sets.real.sampler.views=0"), ("sets.real.sampler.views", "greater")),
    Case("range-seeds", train("students.kd.seeds=[1, 1]"), ("students.kd", "distinct")),
    Case("range-weights", train("students.kd.sets={real: 0}"), ("students.kd", "sum to more than 0")),
    Case("name-job", gen("name=my job"), ("name", "pattern")),
    Case("name-set-reserved", gen("sets.source={sampler: {kind: mix}, samples: 10}"), ("'source' is reserved",)),
    Case("name-set-unknown", train("students.kd.sets={rael: 1}"), ("students.kd.sets names 'rael'",)),
    Case("name-sampler", gen("sets.mix.sampler.kind=blend"), ("sets.mix.sampler.kind", "blend")),
    Case("name-source-kind", gen("source.kind=folder"), ("source.kind", "folder")),
    Case("name-arch", gen("teachers.model.arch=resnet_cifarr"), ("teachers.model.arch", "resnet_cifarr")),
    Case("name-objective", train("students.kd.objective=distill"), ("students.kd.objective", "distill")),
    Case("name-report", gen("report={baseline: kd, compare: [nobody]}"), ("nobody",)),
    Case("source-needs-path", gen("source.kind=imagefolder"), ("source", "needs source.path")),
    Case("kd-only-source", train("students.kd.sets={source: 1}"), ("students.kd", "besides 'source'")),
    Case("class-balanced-no-source", train("students.kd.train.class_balanced=true"),
         ("students.kd", "class_balanced", "sets.source")),
    Case("online-with-sets", train("students.kd.objective=kd_online"), ("students.kd", "drop its sets")),
    Case("kd-label-smoothing", train("students.kd.train.label_smoothing=0.1"),
         ("students.kd", "train.label_smoothing", "objective 'kd' does not have", "objective 'erm'")),
    Case("kd-cutmix-mixup", train("students.kd.train.cutmix=0.5", "students.kd.train.mixup=0.5"),
         ("students.kd", "train.cutmix, train.mixup", "real-label loss")),
    Case("kd-randaugment-no-source", train("students.kd.train.randaugment={}"),
         ("students.kd", "train.randaugment", "sets.source")),
    Case("erm-with-kd-section", train("students.erm.kd.temperature=2", student="erm"),
         ("students.erm", "kd: an 'erm' student learns the real labels only")),
]
COMMAND_LINE = [
    Case("set-without-equals", gen("teachers.members"), ("--set 'teachers.members'", "key=value")),
    Case("set-bad-yaml", gen("teachers.members=[1"), ("--set teachers.members", "not valid YAML")),
    Case("set-through-scalar", gen("seed.value=1"), ("--set seed.value", "not a section")),
    Case("student-unknown", train(student="nobody"), ("--student 'nobody'", "not one of")),
    Case("seed-unknown", lambda c, _: ["train", c.config, "--out", c.job, "--student", "kd", "--seed", "7"],
         ("--seed 7", "seeds [0]")),
    Case("train-neither", lambda c, _: ["train", c.config, "--out", c.job], ("exactly one of --student",)),
    Case("train-ray-teachers", lambda c, _: ["train", c.config, "--out", c.job, "--teachers", "--ray"],
         ("train --ray",)),
    Case("only-unknown", lambda c, _: ["generate", c.config, "--out", c.job, "--only", "mux"], ("--only 'mux'",)),
    Case("out-is-a-file", lambda c, tmp: ["run", c.config, "--out", text_file("out", b"x")(c, tmp)],
         ("out", "not a directory")),
    Case("out-url-for-train", lambda c, _: ["train", c.config, "--out", "s3://bucket/x", "--teachers"],
         ("train --out s3://bucket/x", "local directory")),
    Case("fingerprint-clash", gen("sets.mix.sampler.augment=false"), ("sets/mix", "fingerprint")),
    Case("teachers-of-another-config", gen("teachers.train.steps=31"),
         ("member-0", "train.steps = 30, the config says 31")),
    Case("teachers-of-another-arch", gen("teachers.model.arch=lenet"),
         ("member-0", 'model.arch = "tiny_cnn", the config says "lenet"')),
    Case("command-unknown", lambda c, _: ["frobnicate"], ("No such command",)),
    Case("option-unknown", lambda c, _: ["run", c.config, "--outt", "x"], ("No such option", "--outt")),
    Case("verify-not-a-directory", lambda c, tmp: ["verify", tmp / "nothing"], ("verify", "not a directory")),
    Case("inspect-model-without-plots", lambda c, _: ["inspect", c.job / "sets" / "real", "--model", c.teacher()],
         ("--plots",)),
]
SOURCES = [
    Case("folder-missing", own_config(source={"kind": "imagefolder", "path": "/nonexistent/images"}),
         ("/nonexistent/images", "not a directory")),
    Case("folder-empty", own_config(source=lambda c, tmp: {"kind": "imagefolder", "path": str(
        (tmp / "empty" / "train").mkdir(parents=True) or tmp / "empty")}), ("no class folders",)),
    Case("folder-unreadable-image", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": folder([(8, 8), (8, 8)], garbage=0)(c, tmp)}), ("0.png", "unreadable")),
    Case("folder-unreadable-later", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": folder([(8, 8), (8, 8)], garbage=1)(c, tmp)}), ("1.png", "unreadable")),
    Case("folder-mixed-sizes", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": folder([(8, 8), (10, 12)])(c, tmp)}), ("1.png", "10×12", "one size")),
    Case("npz-missing", own_config(source={"kind": "npz", "path": "/nonexistent/data.npz"}),
         ("/nonexistent/data.npz", "not a file")),
    Case("npz-not-npz", own_config(source=lambda c, tmp: {"kind": "npz", "path": str(
        text_file("data.npz", b"text")(c, tmp))}), ("data.npz", "not a readable .npz")),
    Case("npz-no-labels", own_config(source=lambda c, tmp: {"kind": "npz", "path": npz_file(images=IMAGES)(c, tmp)}),
         ("data.npz", "no ['labels']")),
    Case("npz-float-images", own_config(source=lambda c, tmp: {"kind": "npz", "path": npz_file(
        images=IMAGES.astype(np.float32), labels=LABELS)(c, tmp)}), ("data.npz", "uint8")),
    Case("npz-length-mismatch", own_config(source=lambda c, tmp: {"kind": "npz", "path": npz_file(
        images=IMAGES, labels=LABELS[:7])(c, tmp)}), ("data.npz",)),
    Case("torchvision-not-downloaded", own_config(source=lambda c, tmp: {
        "kind": "torchvision", "name": "CIFAR10", "path": str(tmp)}), ("CIFAR10",)),
    Case("torchvision-unknown", own_config(source={"kind": "torchvision", "name": "CIFAR11", "path": "/tmp"}),
         ("CIFAR11",)),
]


def _pickle_case(c: Corpus, tmp: Path) -> Path:
    return save_torch(tmp / "teacher.pt", {"format": 1, "payload": RunsCode(tmp / "pwned")})


CHECKPOINTS = [
    Case("ckpt-missing", own_config(teachers__checkpoints=["/nonexistent/teacher.pt"]),
         ("/nonexistent/teacher.pt", "missing")),
    Case("ckpt-text", with_checkpoint(text_file("teacher.pt", b"not a checkpoint\n")),
         ("teacher.pt", "cannot be loaded safely")),
    Case("ckpt-pickle-code", with_checkpoint(_pickle_case), ("teacher.pt", "cannot be loaded safely")),
    Case("ckpt-foreign-dict", with_checkpoint(lambda c, tmp: save_torch(tmp / "teacher.pt", {"weights": [1.0]})),
         ("teacher.pt", "not a transferset checkpoint")),
    Case("ckpt-plain-state-dict", with_checkpoint(
        lambda c, tmp: save_torch(tmp / "teacher.pt", checkpoint_payload(c)["state_dict"])),
        ("teacher.pt", "not a transferset checkpoint")),
    Case("ckpt-header-damaged", with_checkpoint(checkpoint_with(lambda p: p.pop("arch"))),
         ("teacher.pt", "'arch'")),
    Case("ckpt-wrong-classes", with_checkpoint(checkpoint_with(lambda p: p.update(num_classes=5))),
         ("teacher.pt", "5 classes, the data has 10")),
    Case("ckpt-wrong-task", with_checkpoint(checkpoint_with(lambda p: p.update(task="regress"))),
         ("teacher.pt", "task is 'regress'")),
    Case("ckpt-wrong-shape", with_checkpoint(checkpoint_with(
        lambda p: p["state_dict"].update({k: v[:1] for k, v in list(p["state_dict"].items())[:1]}))),
        ("teacher.pt", "has shape")),
    Case("ckpt-truncated", with_checkpoint(lambda c, tmp: truncate(
        Path(shutil_copy(c.teacher(), tmp / "teacher.pt")))), ("teacher.pt", "cannot be loaded safely")),
    Case("ckpt-factory-not-named", with_checkpoint(checkpoint_with(lambda p: p.update(arch="os:system"))),
         ("os:system", "must also be named in the config")),
]
DAMAGED = [
    Case("verify-truncated", damaged_set(lambda s: truncate(shard(s))), ("shard-000001.tar",), code=1),
    Case("verify-flipped-byte", damaged_set(lambda s: flip_byte(shard(s))), ("shard-000001.tar",), code=1),
    Case("verify-missing-shard", damaged_set(lambda s: shard(s).unlink()), ("shard-000001.tar",), code=1),
    Case("verify-missing-index", damaged_set(unlink("index.json")), ("index.json",), code=1),
    Case("verify-broken-index", damaged_set(overwrite("index.json", b"{not json")), ("index.json",), code=1),
    Case("verify-foreign-index", damaged_set(overwrite("index.json", b'{"version": 99}')), ("index.json",), code=1),
    Case("verify-missing-manifest", damaged_set(unlink("manifest.parquet")), ("manifest.parquet",), code=1),
    Case("verify-broken-manifest", damaged_set(overwrite("manifest.parquet", b"PAR1 no")), ("manifest.parquet",),
         code=1),
    Case("inspect-truncated", damaged_set(lambda s: truncate(shard(s)), "inspect"), ("shard-000001.tar",)),
    Case("inspect-replaced-shard", damaged_set(lambda s: shard(s).write_bytes(last_shard(s).read_bytes()), "inspect"),
         ("shard-000001.tar", "the index says")),
    Case("inspect-missing-shard", damaged_set(lambda s: shard(s).unlink(), "inspect"), ("shard-000001.tar", "missing")),
    Case("inspect-missing-index", damaged_set(unlink("index.json"), "inspect"), ("index.json",)),
    Case("inspect-broken-index", damaged_set(overwrite("index.json", b"[1, 2"), "inspect"), ("index.json",)),
    Case("inspect-missing-manifest", damaged_set(unlink("manifest.parquet"), "inspect"), ("manifest.parquet",)),
    Case("train-truncated", damaged_job(lambda s: truncate(shard(s))), ("shard-000001.tar", "verify")),
    # found only while streaming: the student's own run directory has begun (never another's)
    Case("train-flipped-byte", damaged_job(lambda s: flip_byte(shard(s))), ("shard-000001.tar", "damaged"),
         writes="job/students"),
    Case("train-missing-shard", damaged_job(lambda s: shard(s).unlink()), ("shard-000001.tar", "missing")),
    Case("train-missing-index", damaged_job(unlink("index.json")), ("sets/real", "not generated yet")),
    Case("train-broken-index", damaged_job(overwrite("index.json", b"{")), ("index.json",)),
]
# Issue 24: inputs at the boundaries, sets that would share a directory, replay records out of range.
GiB = 1 << 30
LONG = " ".join(["a"] * 500_000)  # a 1 MB value (that no name pattern accepts)
BOUNDS = [
    Case("config-alias-bomb", config_file(alias_bomb()), ("job.yaml", "alias bomb"), timeout=30, memory=4 * GiB),
    Case("config-self-alias", config_file("name: x\nseed: &a [1, *a]\n"), ("job.yaml", "alias of itself")),
    Case("config-oversize", config_file(lambda: "name: " + "x" * (50 << 20) + "\n"), ("job.yaml", "50.0 MiB"),
         timeout=60, memory=4 * GiB),
    Case("config-long-value", config_file(lambda: write_yaml(job_with(name=LONG))), ("name", "more characters")),
    Case("set-long-value", gen(f"name={LONG[:90_000]}"), ("name", "more characters")),
    Case("webdataset-unbalanced-braces", own_config(source={
        "kind": "webdataset", "urls": "data/train-{000000..000009.tar", "test_urls": ["data/test.tar"]}),
        ("source.urls", "unbalanced braces")),
    Case("cache-root-a-file", own_config(teachers__checkpoints=lambda c, _: [str(c.teacher())], sets__mix__out="auto",
                                         cache_root=lambda c, tmp: str(text_file("cache", b"x")(c, tmp))),
         ("cache_root", "is a file, not a directory")),
    Case("folder-dangling-symlink", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": linked_folder("nothing.png")(c, tmp)}), ("2.png", "symlink")),
    Case("folder-symlink-loop", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": linked_folder("2.png")(c, tmp)}), ("2.png", "symlink")),
    Case("folder-bomb-first", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": bombed_folder(0)(c, tmp)}), ("0.png", "decompression-bomb")),
    Case("folder-bomb-later", own_config(source=lambda c, tmp: {
        "kind": "imagefolder", "path": bombed_folder(1)(c, tmp)}), ("1.png", "decompression-bomb")),
]
SHARED = ("is also the directory of set 'real'", "never share a directory")
LOCATIONS = [
    Case("out-shared-generate", with_overrides("generate", lambda _, tmp: f"sets.mix.out={tmp / 'x'}",
                                               lambda _, tmp: f"sets.real.out={tmp / 'x'}"), ("sets.mix.out", *SHARED)),
    Case("out-shared-plan", with_overrides("plan", lambda _, tmp: f"sets.mix.out={tmp / 'x'}",
                                           lambda _, tmp: f"sets.real.out={tmp / 'x'}"), ("sets.mix.out", *SHARED)),
    Case("out-shared-run", own_config(sets__mix__out=lambda _, tmp: str(tmp / "x"),
                                      sets__real__out=lambda _, tmp: str(tmp / "x")), ("sets.mix.out", *SHARED)),
    Case("out-is-a-default-run", own_config(sets__mix__out=lambda _, tmp: str(tmp / "out" / "sets" / "real")),
         ("sets.mix.out", "default OUT/sets/real", *SHARED)),
    Case("out-inside-a-default", with_overrides(
        "generate", lambda c, _: f"sets.mix.out={c.job / 'sets' / 'real' / 'm'}"),
         ("sets.mix.out", "lies inside", "of set 'real'")),
    Case("out-holds-the-cache", with_overrides("plan", lambda _, tmp: f"sets.mix.out={tmp / 'c'}", "sets.real.out=auto",
                                               lambda _, tmp: f"cache_root={tmp / 'c' / 'cache'}"),
         ("sets.mix.out", "holds the cache root", "'real' (out: auto)")),
]
REPLAY = [
    Case("train-replay-lam", damaged_replay(lam_out_of_range, "train"),
         ("shard-000001.npy", "sample 000001-", "lam 7.5 outside [0, 1]"), writes="job/students"),
    Case("train-replay-box", damaged_replay(box_out_of_range, "train"),
         ("shard-000001.npy", "sample 000001-", "box [0, 12, 0, 12] outside the 8×8 image"), writes="job/students"),
    Case("train-replay-offset", damaged_replay(offset_out_of_range, "train"),
         ("shard-000001.npy", "sample 000001-", "view offset (9, ", "outside [0, 2]"), writes="job/students"),
    Case("inspect-replay-lam", damaged_replay(lam_out_of_range, "inspect"),
         ("shard-000001.npy", "sample 000001-", "lam 7.5 outside [0, 1]")),
    Case("inspect-replay-box", damaged_replay(box_out_of_range, "inspect"),
         ("shard-000001.npy", "sample 000001-", "box [0, 12, 0, 12] outside the 8×8 image")),
]
CASES = [*CONFIG_FILES, *UNKNOWN_KEYS, *WRONG_VALUES, *COMMAND_LINE, *SOURCES, *CHECKPOINTS, *DAMAGED, *BOUNDS,
         *LOCATIONS, *REPLAY]
# Through the installed script as a subprocess (besides the cases with a memory limit or a timeout,
# which only a process of their own can have): a config file, an unknown key, a wrong value, click's
# own usage errors, a source, an unsafe checkpoint, verify's exit 1, a damage found only while
# streaming, a shared set directory, a replay record out of range.
SCRIPT = frozenset({"config-not-yaml", "key-teachers", "range-alpha", "command-unknown", "option-unknown",
                    "folder-unreadable-image", "ckpt-pickle-code", "verify-flipped-byte", "train-flipped-byte",
                    "out-shared-run", "inspect-replay-box"})
MAX_LINE = 500  # characters of the error line ("a few hundred")


def shutil_copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def test_the_corpus_is_large_and_every_case_is_named_once() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80
    assert SCRIPT <= set(ids), sorted(SCRIPT - set(ids))
    assert 10 <= sum(case.script for case in CASES) <= 15


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=[pytest.mark.e2e] if case.script else [])
                                  for case in CASES])
def test_bad_input_gets_one_line_and_changes_nothing(corpus: Corpus, case: Case, tmp_path: Path) -> None:
    args = case.build(corpus, tmp_path)
    before = tree(tmp_path)
    if case.script:
        result = transferset(*args, cwd=tmp_path, timeout=case.timeout, memory=case.memory)
    else:
        result = transferset_in_process(*args, cwd=tmp_path)
    job_changed, after = corpus.changed(), tree(tmp_path)  # first: a changed job is restored for the next case
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == case.code, output[-3000:]
    last = last_line(result.stderr)
    assert last.startswith("error: "), result.stderr[-3000:]
    for needle in case.needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    assert len(last) <= MAX_LINE, f"{len(last)} characters: {last[:MAX_LINE]}…"
    assert {k: after.get(k) for k in before} == before, "the case's own inputs were changed or deleted"
    assert all(case.writes and k.startswith(case.writes) for k in set(after) - set(before)), \
        f"the case wrote {sorted(set(after) - set(before))[:5]}"
    assert not job_changed, "the finished job's teachers, sets or students changed"
    assert not (tmp_path / "pwned").exists(), "a checkpoint ran code while it was loaded"


@pytest.mark.e2e
@pytest.mark.parametrize("case_id", ["config-missing", "command-unknown", "verify-truncated", "key-student"])
def test_the_in_process_command_answers_as_the_installed_script_does(corpus: Corpus, case_id: str,
                                                                     tmp_path: Path) -> None:
    """The same arguments both ways: the same exit code, stdout and last stderr line (what the
    in-process cases above are held to), for a bad config path, a usage error of click's own, one of
    verify's problems (exit 1) and a validation error."""
    case = next(c for c in CASES if c.id == case_id)
    args = case.build(corpus, tmp_path)
    script = transferset(*args, cwd=tmp_path)
    here = transferset_in_process(*args, cwd=tmp_path)
    assert not corpus.changed()
    assert script.returncode == case.code and here.returncode == script.returncode, (script.stderr, here.stderr)
    assert here.stdout == script.stdout
    assert last_line(here.stderr) == last_line(script.stderr) and last_line(here.stderr).startswith("error: ")


@pytest.mark.e2e
def test_an_intact_set_verifies_in_process_as_through_the_script(corpus: Corpus, tmp_path: Path) -> None:
    """Exit 0 and the same "OK" report both ways (the in-process runner does not answer 2 or 1 for
    everything)."""
    real = corpus.job / "sets" / "real"
    script = transferset("verify", real, cwd=tmp_path)
    here = transferset_in_process("verify", real, cwd=tmp_path)
    assert script.returncode == here.returncode == 0, (script.stderr, here.stderr)
    assert here.stdout == script.stdout and here.stdout.strip().endswith("OK")
